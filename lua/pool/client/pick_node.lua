--! static const char lua_pick_node[]
-- Pick a random live node among those serving the environment that is
-- not draining. None: {published in wp:tpls (0/1), nodes that served it
-- (live, draining or not)}: a claim waits for a draining node's successor.
-- Single Redis only: node keys live outside the environment's slot.
-- Nodes that answered this claim "overloaded" (ARGV[2..]) are skipped;
-- when they are every live one: {"overloaded"}.
-- KEYS[1] wp:env:{E}:nodes, KEYS[2] wp:tpls. ARGV[1] environment,
-- ARGV[2..] nodes to skip. Reads wp:node:<N>:alive and :drain (outside KEYS).
local skip = {}
for i = 2, #ARGV do skip[ARGV[i]] = true end
local live, nlive, all = {}, 0, redis.call('SMEMBERS', KEYS[1])
for _, n in ipairs(all) do
  if redis.call('EXISTS', 'wp:node:' .. n .. ':alive') == 1 and
     redis.call('EXISTS', 'wp:node:' .. n .. ':drain') == 0 then
    nlive = nlive + 1
    if not skip[n] then live[#live + 1] = n end
  end
end
if nlive > 0 and #live == 0 then return {'overloaded'} end
if #live == 0 then return {redis.call('HEXISTS', KEYS[2], ARGV[1]), #all} end
return live[math.random(#live)]
