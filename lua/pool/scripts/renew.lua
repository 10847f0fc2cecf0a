--! const char pool__lua_renew[]
-- KEYS: sandbox hash. ARGV: token, now_ms, lease_ms.
-- Renew a lease held with token. Returns the new expiry, or an error
-- naming why not (stale token, lost, released).
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return redis.error_reply('GONE sandbox does not exist') end
if st ~= 'leased' then return redis.error_reply('LOST sandbox is ' .. st) end
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return redis.error_reply('STALE token is not the lease holder') end
local u = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease_until', u)
return u
