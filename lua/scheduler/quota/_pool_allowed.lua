-- Shared Lua: may ARGV[1] (org) use the pool whose policy is KEYS[3]?
local function pool_ok(pol, org)
  local orgs = redis.call('HGET', pol, 'orgs')
  if not orgs or orgs == '*' then return true end
  return string.find(',' .. orgs .. ',', ',' .. org .. ',', 1, true) ~= nil
end
