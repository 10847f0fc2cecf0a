--! static const char lua_prep[]
-- KEYS: agent obj, environment obj, wp:agentver:<agent>. ARGV: org,
-- agent version ("" latest). Checks both belong to the org and are
-- live; returns what a new session needs of them.
local a = redis.call('HMGET', KEYS[1], 'org', 'json', 'archived')
if a[1] ~= ARGV[1] then return redis.error_reply('AGENT_NOTFOUND') end
if a[3] == '1' then return redis.error_reply('AGENT_ARCHIVED') end
local js = a[2]
if ARGV[2] ~= '' then
  js = redis.call('LINDEX', KEYS[3], tonumber(ARGV[2]) - 1)
  if not js then return redis.error_reply('VERSION_NOTFOUND') end
end
local e = redis.call('HMGET', KEYS[2], 'org', 'archived', 'config_type')
if e[1] ~= ARGV[1] then return redis.error_reply('ENV_NOTFOUND') end
if e[2] == '1' then return redis.error_reply('ENV_ARCHIVED') end
return {js, e[3] or 'cloud'}
