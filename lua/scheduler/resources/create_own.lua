--! static const char lua_create_own[]
-- A session's first create step, in its own slot: KEYS[1] wp:obj:{sid}.
-- ARGV: id, org, scope, json, live, pending ms, then extra (field, value)
-- pairs. Written with a TTL of pending ms: the object lives only once the
-- organization's script (index.lua) counted and indexed it and the
-- create made it persistent, so a scheduler dying in between leaves
-- nothing that lasts (the id was never answered).
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('EXISTS') end
redis.call('HSET', KEYS[1], 'org', ARGV[2], 'scope', ARGV[3], 'json', ARGV[4],
  'rev', 1, 'archived', 0, 'live', ARGV[5])
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
