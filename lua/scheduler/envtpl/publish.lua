--! static const char lua_publish[]
-- KEYS: tpl, policy (both the environment's slot). ARGV: template, digest,
-- org, min, max, now_ms, env id. One script: a node never sees a template
-- without its policy. Its entry in wp:tpls (the nodes' list, another slot)
-- is written after this (envtpl.c).
redis.call('HSET', KEYS[1], 'template', ARGV[1], 'digest', ARGV[2], 'org', ARGV[3],
  'updated_ms', ARGV[6], 'env', ARGV[7])
redis.call('HSET', KEYS[2], 'api_min_hot', ARGV[4], 'api_max_hot', ARGV[5])
return 1
