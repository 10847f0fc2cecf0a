--! static const char lua_open_pools[]
-- No KEYS, no ARGV. Operator pools (wp:env:{*}:policy, names not env_*) and
-- the organizations each is open to ("*": every one), as "<name> <orgs>",
-- sorted. SCANs keys outside KEYS: single-instance Redis only.
local out = {}
local cur = '0'
repeat
  local r = redis.call('SCAN', cur, 'MATCH', 'wp:env:{*}:policy', 'COUNT', 1000)
  cur = r[1]
  for _, key in ipairs(r[2]) do
    local name = string.match(key, '^wp:env:{(.*)}:policy$')
    if name and string.sub(name, 1, 4) ~= 'env_' then
      table.insert(out, name .. ' ' .. (redis.call('HGET', key, 'orgs') or '*'))
    end
  end
until cur == '0'
table.sort(out)
return out
