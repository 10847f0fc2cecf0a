--! static const char lua_enqueue[]
-- KEYS: obj, queued, idx all, idx active, seq, session obj. ARGV: id, org, scope, json,
-- live, created_ms.
redis.call('HSET', KEYS[6], 'work_id', ARGV[1])
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], 'org', ARGV[2], 'scope', ARGV[3], 'json', ARGV[4], 'rev', 1,
  'archived', 0, 'seq', seq, 'live', ARGV[5], 'state', 'queued', 'created_ms', ARGV[6])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
return seq
