--! static const char lua_create[]
-- KEYS: obj, all index, active index, seq[, quota]. With a quota key
-- (sessions only), its "sessions" field caps the active index: the count
-- and the add are one step, so racing creates cannot pass it together.
-- ARGV: id, org, scope, json, live, then extra (field, value) pairs.
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('EXISTS') end
if KEYS[5] then
  local lim = tonumber(redis.call('HGET', KEYS[5], 'sessions') or '')
  local n = redis.call('ZCARD', KEYS[3])
  if lim and n >= lim then
    return redis.error_reply('QUOTA sessions ' .. lim .. ' ' .. n .. ' live')
  end
end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'org', ARGV[2], 'scope', ARGV[3], 'json', ARGV[4],
  'rev', 1, 'archived', 0, 'seq', seq, 'live', ARGV[5])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
return seq
