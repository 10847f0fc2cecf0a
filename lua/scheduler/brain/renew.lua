--! static const char lua_renew[]
-- KEYS: lease. ARGV: token, ttl ms (0 = release). 1 if still ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
