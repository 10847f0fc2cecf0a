--! static const char lua_publish[]
-- KEYS: tpl, tpls, policy. ARGV: name, template, digest, org, min, max,
-- now_ms, env id. One script: a node never sees a template without its
-- policy. Spans hash slots (wp:tpls): single Redis, like the reaper.
redis.call('HSET', KEYS[1], 'template', ARGV[2], 'digest', ARGV[3], 'org', ARGV[4],
  'updated_ms', ARGV[7], 'env', ARGV[8])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], 'api_min_hot', ARGV[5], 'api_max_hot', ARGV[6])
return 1
