--! static const char lua_sbx_gate[]
-- KEYS: wp:quota:{org}, wp:quotause:{org}:sbx. ARGV: org, sandbox id, now
-- ms, '1' for an operator pool, that pool's orgs ('*': every organization),
-- the records' key prefix wp:sbx:{org}: (their slot: read outside KEYS),
-- then the new sandbox's record as field, value pairs: written with the
-- count, so the create answers after this one round trip (issue 20). A
-- member is dead once its record says failed or expired, or has been
-- missing for a minute (deleted; a record written by an older scheduler
-- after this script).
--#include _pool_allowed.lua
if ARGV[4] == '1' and not pool_ok(ARGV[5], ARGV[1]) then
  return redis.error_reply('POOL not allowed') -- a code of its own (a bare word is ERR)
end
local now, live = tonumber(ARGV[3]), 0
local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local st = redis.call('HGET', ARGV[6] .. all[i], 'status')
  if st == 'failed' or st == 'expired' or (not st and now - tonumber(all[i + 1]) > 60000) then
    redis.call('ZREM', KEYS[2], all[i])
  else live = live + 1 end
end
local lim = tonumber(redis.call('HGET', KEYS[1], 'sandboxes') or '')
if lim and live >= lim then
  return redis.error_reply('QUOTA sandboxes ' .. lim .. ' ' .. live .. ' live')
end
redis.call('ZADD', KEYS[2], now, ARGV[2])
if #ARGV > 6 then
  redis.call('HSET', ARGV[6] .. ARGV[2], unpack(ARGV, 7))
end
return 1
