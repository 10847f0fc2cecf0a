--! static const char lua_poll[]
-- KEYS: queued, pending, leased, workers. ARGV: now_ms, reclaim_ms, worker,
-- the item key's prefix (wp:wq:{E}:item:): every key is the environment's.
--#include _live.lua
local now, ipre = tonumber(ARGV[1]), ARGV[4]
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[4], now, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 60000)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], redis.call('HGET', ipre .. id, 'seq') or now, id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  local k = ipre .. id
  redis.call('ZREM', KEYS[3], id)
  if redis.call('EXISTS', k) == 1 then
    redis.call('HSET', k, 'state', 'queued', 'hb', '', 'acked_at', '', 'started_at', '', 'hb_at', '')
    live(k)
    redis.call('ZADD', KEYS[1], redis.call('HGET', k, 'seq') or now, id)
  end
end
while true do
  local p = redis.call('ZPOPMIN', KEYS[1])
  if #p == 0 then return false end
  local k = ipre .. p[1]
  if redis.call('EXISTS', k) == 1 then
    redis.call('ZADD', KEYS[2], now, p[1])
    local h = redis.call('HMGET', k, 'json', 'live')
    return {h[1], h[2]}
  end
end
