--! static const char lua_delete[]
-- KEYS: session obj, its event log, its brain fence (one slot). ARGV: org,
-- the log's TTL in ms (open streams see session.deleted). The
-- organization's index entries (another slot) go after (sessions.c).
if redis.call('HGET', KEYS[1], 'org') ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 't', 'session.deleted', 'e', '{"type":"session.deleted"}')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1], KEYS[3])
return 1
