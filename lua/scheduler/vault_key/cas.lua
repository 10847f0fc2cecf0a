--! static const char lua_cas[]
-- KEYS: object. ARGV: the sealed value read, the new one. Compare and set:
-- a credential written meanwhile keeps its newer value.
if redis.call('HGET', KEYS[1], 'sealed') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sealed', ARGV[2])
return 1
