--! static const char lua_usage[]
-- One organization's use, computed by Redis as the schedulers count it:
-- {sessions, sandboxes, hot, memory_mb, cpu, disk_mb}.
-- KEYS[1] wp:idx:{<org>}:session:active, KEYS[2] wp:quotause:{<org>}:sbx,
-- KEYS[3] wp:quotause:{<org>}:envs (one slot). ARGV[1] now ms, ARGV[2] the
-- records' prefix wp:sbx:{<org>}: (read outside KEYS, in the same slot).
local now = tonumber(ARGV[1])
local sbx = 0
local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local st = redis.call('HGET', ARGV[2] .. all[i], 'status')
  if not (st == 'failed' or st == 'expired' or (not st and now - tonumber(all[i + 1]) > 60000)) then
    sbx = sbx + 1 end
end
local h, m, c, d = 0, 0, 0, 0
local envs = redis.call('HGETALL', KEYS[3])
for i = 2, #envs, 2 do
  local a, b, x, y = string.match(envs[i], '^(%S+) (%S+) (%S+) (%S+)$')
  a = tonumber(a) or 0
  h = h + a; m = m + a * (tonumber(b) or 0); c = c + a * (tonumber(x) or 0)
  d = d + a * (tonumber(y) or 0)
end
return {tostring(redis.call('ZCARD', KEYS[1])), tostring(sbx), tostring(h), tostring(m),
        tostring(c), tostring(d)}
