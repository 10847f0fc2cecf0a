--! static const char lua_drop_creds[]
-- KEYS: vault obj, credential index (all), credential index (active).
-- ARGV: org, the credential key prefix (wp:obj:{<org>}:). All in the
-- org's slot. Deletes the vault's credentials (their sealed secrets too).
if redis.call('HGET', KEYS[1], 'org') ~= ARGV[1] then return 0 end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('DEL', ARGV[2] .. id)
end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
