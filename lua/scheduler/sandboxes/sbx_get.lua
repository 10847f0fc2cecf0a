--! static const char lua_sbx_get[]
-- The record, and the node's own state of the sandbox ("node_state":
-- leased, idle, lost, released, or "gone" when the node destroyed it),
-- in one round trip. Single Redis: the keys are in different slots.
-- KEYS[1] wp:sbx:<id>. No ARGV. Outside KEYS: wp:env:{E}:sb:<sandbox>.
local h = redis.call('HGETALL', KEYS[1])
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
if f.environment and f.sandbox and f.sandbox ~= '' then
  local st = redis.call('HGET', 'wp:env:{' .. f.environment .. '}:sb:' .. f.sandbox, 'state')
  h[#h + 1] = 'node_state'
  h[#h + 1] = st or 'gone'
end
return h
