--! static const char lua_pick_node[]
-- Pick a random live node among those serving the environment that is
-- not draining. None: {published in wp:tpls (0/1), nodes that served it
-- (live, draining or not)}: a claim waits for a draining node's successor.
-- Single Redis only: node keys live outside the environment's slot.
-- KEYS[1] wp:env:{E}:nodes, KEYS[2] wp:tpls. ARGV[1] environment.
-- Reads wp:node:<N>:alive and :drain (outside KEYS).
local live, all = {}, redis.call('SMEMBERS', KEYS[1])
for _, n in ipairs(all) do
  if redis.call('EXISTS', 'wp:node:' .. n .. ':alive') == 1 and
     redis.call('EXISTS', 'wp:node:' .. n .. ':drain') == 0 then live[#live + 1] = n end
end
if #live == 0 then return {redis.call('HEXISTS', KEYS[2], ARGV[1]), #all} end
return live[math.random(#live)]
