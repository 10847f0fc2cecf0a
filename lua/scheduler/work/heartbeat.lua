--! static const char lua_heartbeat[]
-- KEYS (the environment's slot): item, leased. ARGV: scope, now_ms, now_str, ttl_s, id, expected.
-- Returns {ok(1|0), last_heartbeat, lease_extended, state, ttl}.
--#include _live.lua
local h = redis.call('HMGET', KEYS[1], 'scope', 'state', 'hb')
if h[1] ~= ARGV[1] then return redis.error_reply('NOTFOUND') end
local state, last, ttl = h[2], h[3] or '', tonumber(ARGV[4])
if state == 'stopping' or state == 'stopped' then
  return {1, last, state == 'stopping' and 1 or 0, state, ttl}
end
local exp = ARGV[6]
if state == 'queued' or (exp == 'NO_HEARTBEAT' and last ~= '') or (exp ~= 'NO_HEARTBEAT' and exp ~= last) then
  return {0, last, 0, state, ttl}
end
local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now + 1000 * ttl, ARGV[5])
if state == 'starting' then redis.call('HSET', KEYS[1], 'state', 'active', 'started_at', ARGV[3]) end
-- The heartbeat token must change on every beat: time plus a counter.
local n = redis.call('HINCRBY', KEYS[1], 'hbn', 1)
local token = ARGV[3] .. '#' .. n
redis.call('HSET', KEYS[1], 'hb', token, 'hb_at', ARGV[3])
live(KEYS[1])
return {1, token, 1, redis.call('HGET', KEYS[1], 'state'), ttl}
