-- Shared Lua: may org use a pool whose policy's orgs field is orgs ('*':
-- every organization; read by the caller just before, another slot)?
local function pool_ok(orgs, org)
  if orgs == '*' then return true end
  return string.find(',' .. orgs .. ',', ',' .. org .. ',', 1, true) ~= nil
end
