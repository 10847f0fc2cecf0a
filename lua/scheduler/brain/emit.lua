--! static const char lua_emit[]
-- KEYS: session obj, stream, lease (one slot). ARGV: token, status
-- ('' = unchanged), sid, then (type, explicit id, delta-of type, json)
-- quads. The fenced append: nothing is written unless the lease is still
-- this token's. A status idle also clears the session's 'active' field
-- (the sweep then drops it from its active-set shard); another status sets
-- it (brain.c adds the shard entry after).
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('STALE') end
local h = redis.call('HMGET', KEYS[1], 'org', 'archived')
if not h[1] or h[2] == '1' then return redis.error_reply('GONE') end
local ids = {}
for i = 4, #ARGV, 4 do
  local f = {'t', ARGV[i], 'e', ARGV[i + 3]}
  if ARGV[i + 1] ~= '' then f[5] = 'i'; f[6] = ARGV[i + 1] end
  if ARGV[i + 2] ~= '' then f[#f + 1] = 'd'; f[#f + 1] = ARGV[i + 2] end
  table.insert(ids, redis.call('XADD', KEYS[2], '*', unpack(f)))
end
local st = ARGV[2]
if st ~= '' then
  redis.call('HSET', KEYS[1], 'status', st, 'live', '"status":"' .. st .. '"')
  if st == 'idle' then redis.call('HDEL', KEYS[1], 'active')
  else redis.call('HSET', KEYS[1], 'active', '1') end
end
return ids
