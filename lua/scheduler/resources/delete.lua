--! static const char lua_delete[]
-- KEYS: obj, all index, active index. ARGV: id, org. Deletes the object
-- if the org owns it; 1 deleted, 0 not found.
if redis.call('HGET', KEYS[1], 'org') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
