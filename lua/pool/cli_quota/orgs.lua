--! static const char lua_orgs[]
-- No KEYS, no ARGV. Every organization with a quota or with use counted:
-- SCANs wp:quota:*, wp:quotause:envs:*, wp:quotause:sbx:* (keys outside KEYS:
-- single-instance Redis only), returns the names sorted.
local seen, out = {}, {}
for _, p in ipairs({'wp:quota:*', 'wp:quotause:envs:*', 'wp:quotause:sbx:*'}) do
  local cur = '0'
  repeat
    local r = redis.call('SCAN', cur, 'MATCH', p, 'COUNT', 1000)
    cur = r[1]
    for _, key in ipairs(r[2]) do
      local o = string.match(key, '([^:]+)$')
      if not seen[o] then seen[o] = true; table.insert(out, o) end
    end
  until cur == '0'
end
table.sort(out)
return out
