--! static const char lua_env_gate[]
-- KEYS: wp:quota:{org}, wp:quotause:{org}:envs (one slot). ARGV: org, env
-- id, mode ('pool' | 'hot' | 'none'), min_hot, memory_mb, cpu, disk_mb, the
-- operator pool's orgs ('*': every organization).
--#include _pool_allowed.lua
if ARGV[3] == 'pool' and not pool_ok(ARGV[8], ARGV[1]) then
  return redis.error_reply('POOL not allowed') -- a code of its own (a bare word is ERR)
end
if ARGV[3] ~= 'hot' then redis.call('HDEL', KEYS[2], ARGV[2]) return 1 end
local h, m, c, d = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local use = {hot = h, memory_mb = h * m, cpu = h * c, disk_mb = h * d}
local one = {memory_mb = m, cpu = c, disk_mb = d}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[2] then
    local a, b, x, y = string.match(all[i + 1], '^(%S+) (%S+) (%S+) (%S+)$')
    a, b, x, y = tonumber(a) or 0, tonumber(b) or 0, tonumber(x) or 0, tonumber(y) or 0
    use.hot = use.hot + a; use.memory_mb = use.memory_mb + a * b
    use.cpu = use.cpu + a * x; use.disk_mb = use.disk_mb + a * y
  end
end
for _, q in ipairs({'hot', 'memory_mb', 'cpu', 'disk_mb'}) do
  local lim = tonumber(redis.call('HGET', KEYS[1], q) or '')
  if lim then
    if one[q] and one[q] > lim then
      return redis.error_reply('QUOTA ' .. q .. ' ' .. lim .. ' ' .. one[q] .. ' one sandbox')
    end
    if use[q] > lim then
      return redis.error_reply('QUOTA ' .. q .. ' ' .. lim .. ' ' .. use[q] .. ' hot clones')
    end
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. ARGV[7])
return 1
