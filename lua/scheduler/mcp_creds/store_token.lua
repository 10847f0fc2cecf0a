--! static const char lua_store_token[]
-- KEYS: credential obj. ARGV: org, rev read, new json, new sealed. Not
-- stored when the credential changed meanwhile: an update through the
-- API wins over a refresh.
local h = redis.call('HMGET', KEYS[1], 'org', 'rev')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[3], 'sealed', ARGV[4], 'rev', tonumber(h[2]) + 1)
return 1
