--! static const char lua_create[]
-- KEYS: obj, all index, active index, seq. ARGV: id, org, scope, json,
-- live, then extra (field, value) pairs. Not for sessions (their object
-- is another slot than their indexes: create_own.lua, then index.lua).
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('EXISTS') end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'org', ARGV[2], 'scope', ARGV[3], 'json', ARGV[4],
  'rev', 1, 'archived', 0, 'seq', seq, 'live', ARGV[5])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
return seq
