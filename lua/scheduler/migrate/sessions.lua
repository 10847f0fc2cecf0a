--! static const char lua_migrate_sessions[]
-- No KEYS: single Redis only (the layout it moves from never ran on a
-- cluster). ARGV: the old global fence's value, then (session id, its
-- active-set shard key) pairs. Moves each session of the layout before
-- Redis Cluster support to this one: wp:obj:<sid> -> wp:obj:{<sid>} (TTL
-- kept), its membership of wp:brain:active -> its 'active' field and its
-- shard, and its fence wp:brain:fence:{<sid>} no lower than the old global
-- one (no token handed out before can come again). Idempotent. Returns the
-- number of objects moved.
local n = 0
for i = 2, #ARGV, 2 do
  local sid, shard = ARGV[i], ARGV[i + 1]
  local old, new = 'wp:obj:' .. sid, 'wp:obj:{' .. sid .. '}'
  if redis.call('EXISTS', old) == 1 and redis.call('EXISTS', new) == 0 then
    redis.call('RENAME', old, new)
    n = n + 1
  end
  if redis.call('ZSCORE', 'wp:brain:active', sid) then
    if redis.call('EXISTS', new) == 1 then
      redis.call('HSET', new, 'active', '1')
      redis.call('ZADD', shard, 0, sid)
    end
    redis.call('ZREM', 'wp:brain:active', sid)
  end
  local fk = 'wp:brain:fence:{' .. sid .. '}'
  if tonumber(ARGV[1]) > tonumber(redis.call('GET', fk) or '0') then redis.call('SET', fk, ARGV[1]) end
end
return n
