--! const char sched__lua_ratelimit[]
-- KEYS[1] wp:rl:{org}:<class>:<minute>. ARGV[1] its TTL in ms.
-- Counts one request; returns the count this minute.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
