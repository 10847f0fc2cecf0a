--! static const char lua_unpublish[]
-- KEYS: tpl, tpls, policy, obj, quota use. ARGV: name, org, env id. Only the owner's
-- environment (the object is checked in the same script).
if redis.call('HGET', KEYS[4], 'org') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[5], ARGV[3]) -- its hot clones leave the org's quota use
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], 'api_min_hot', 'api_max_hot')
return 1
