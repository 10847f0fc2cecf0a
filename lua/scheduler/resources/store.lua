--! static const char lua_store[]
-- KEYS: obj[, aux][, active index]. ARGV: rev, json, archive, id, live,
-- auxmode ('' | 'rpush' | 'xadd'), auxval, auxtype, then field pairs.
-- aux is there when auxmode is set. Without the active index (a session:
-- the index is its organization's, another slot) an archive leaves the
-- index entry to the caller, who removes it after this succeeded.
local cur = redis.call('HGET', KEYS[1], 'rev')
if not cur then return redis.error_reply('NOTFOUND') end
if cur ~= ARGV[1] then return redis.error_reply('CONFLICT') end
local aux, idx = nil, KEYS[2]
if ARGV[6] ~= '' then aux, idx = KEYS[2], KEYS[3] end
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'rev', tonumber(cur) + 1)
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'archived', 1)
  if idx then redis.call('ZREM', idx, ARGV[4]) end
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'live', ARGV[5]) end
if ARGV[6] == 'rpush' then redis.call('RPUSH', aux, ARGV[7]) end
if ARGV[6] == 'xadd' then redis.call('XADD', aux, '*', 't', ARGV[8], 'e', ARGV[7]) end
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
return tonumber(cur) + 1
