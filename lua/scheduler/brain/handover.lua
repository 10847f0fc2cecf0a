--! static const char lua_handover[]
-- KEYS: lease. ARGV: token, "handover <sid>". A draining scheduler gives
-- the lease back (if still its) and says so, so that another scheduler
-- continues at once instead of after the lease's TTL.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', '@BRAIN_WAKE_CHANNEL@', ARGV[2])
return 1
