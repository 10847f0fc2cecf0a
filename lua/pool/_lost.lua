-- Shared Lua: lost(k, env, id) marks sandbox record k lost (its node died,
-- or no longer has it) and tells the holder on wp:lost:<env>. The record
-- is kept while its holder may still renew (a renewal is how it learns),
-- until a minute past its lease, not forever: no node lists it any more,
-- so nothing else would ever delete it.
local function lost(k, env, id)
  redis.call('HSET', k, 'state', 'lost')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local u = tonumber(redis.call('HGET', k, 'lease_until') or '') or 0
  redis.call('PEXPIREAT', k, math.max(u, now) + 60000)
  redis.call('PUBLISH', 'wp:lost:' .. env, id)
end
