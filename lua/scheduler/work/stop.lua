--! static const char lua_stop[]
-- KEYS: item, queued, pending, leased, latest. ARGV: scope, now_str, force, id.
-- A stopped item leaves latest (its session is dormant: input queues a new
-- one, enqueue.lua).
--#include _live.lua
local h = redis.call('HMGET', KEYS[1], 'scope', 'state', 'session')
if h[1] ~= ARGV[1] then return redis.error_reply('NOTFOUND') end
if h[2] == 'stopped' or (h[2] == 'stopping' and ARGV[3] ~= '1') then return redis.error_reply('STOPPED') end
for i = 2, 4 do redis.call('ZREM', KEYS[i], ARGV[4]) end
if ARGV[3] == '1' or h[2] == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'stopped', 'stopped_at', ARGV[2])
  if h[2] ~= 'stopping' then redis.call('HSET', KEYS[1], 'stop_req_at', ARGV[2]) end
  if h[3] and redis.call('HGET', KEYS[5], h[3]) == ARGV[4] then redis.call('HDEL', KEYS[5], h[3]) end
else
  redis.call('HSET', KEYS[1], 'state', 'stopping', 'stop_req_at', ARGV[2])
end
live(KEYS[1])
local r = redis.call('HMGET', KEYS[1], 'json', 'live')
return {r[1], r[2]}
