--! static const char lua_unpublish[]
-- KEYS: tpl, policy (both the environment's slot). Run once its entry in
-- wp:tpls is gone and its owner checked (envtpl.c): the template and the
-- API's policy fields go (the operator's stay).
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], 'api_min_hot', 'api_max_hot')
return 1
