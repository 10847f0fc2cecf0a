--! const char pool__lua_offer[]
-- KEYS: sandbox hash, hot list. ARGV: id, node, addr, now_ms, relay.
-- A node offers an idle clone.
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'addr', ARGV[3], 'state', 'idle',
           'created_ms', ARGV[4], 'relay', ARGV[5])
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
