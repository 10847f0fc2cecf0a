--! static const char lua_active_drop[]
-- KEYS: an active-set shard. ARGV: session id, the score the sweep read.
-- Removes the member only if no append bumped its score since: an append
-- that raced the sweep's lua_orphan keeps its entry.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
