--! static const char lua_delete[]
-- KEYS: session obj, its event log, all index, active index. ARGV: org,
-- session id, the log's TTL in ms (open streams see session.deleted).
if redis.call('HGET', KEYS[1], 'org') ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 't', 'session.deleted', 'e', '{"type":"session.deleted"}')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
