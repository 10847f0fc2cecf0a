--! static const char lua_store[]
-- KEYS: obj, active index[, aux]. ARGV: rev, json, archive, id, live,
-- auxmode ('' | 'rpush' | 'xadd'), auxval, auxtype, then field pairs.
local cur = redis.call('HGET', KEYS[1], 'rev')
if not cur then return redis.error_reply('NOTFOUND') end
if cur ~= ARGV[1] then return redis.error_reply('CONFLICT') end
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'rev', tonumber(cur) + 1)
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'archived', 1)
  redis.call('ZREM', KEYS[2], ARGV[4])
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'live', ARGV[5]) end
if ARGV[6] == 'rpush' then redis.call('RPUSH', KEYS[3], ARGV[7]) end
if ARGV[6] == 'xadd' then redis.call('XADD', KEYS[3], '*', 't', ARGV[8], 'e', ARGV[7]) end
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
return tonumber(cur) + 1
