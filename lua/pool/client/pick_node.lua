--! static const char lua_pick_node[]
-- Pick a random live node among those serving the environment that is
-- not draining. None: {published (0/1), nodes that served it (live,
-- draining or not)}: a claim waits for a draining node's successor.
-- Reads only E's keys (one hash slot: Redis Cluster): liveness and
-- draining are what each node writes into wp:env:{E}:live with its
-- heartbeat (lua/pool/node_reconcile/live.lua), against Redis's TIME.
-- Nodes that answered this claim "overloaded" (ARGV) are skipped; when
-- they are every live one: {"overloaded"}.
-- KEYS[1] wp:env:{E}:nodes, KEYS[2] wp:tpl:{E} (exists while the
-- environment is published), KEYS[3] wp:env:{E}:live. ARGV[1..] nodes to
-- skip.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local skip = {}
for i = 1, #ARGV do skip[ARGV[i]] = true end
local live, nlive, all = {}, 0, redis.call('SMEMBERS', KEYS[1])
for _, n in ipairs(all) do
  local v = redis.call('HGET', KEYS[3], n)
  local u, rest = nil, nil
  if v then u, rest = string.match(v, '^(%d+)(.*)$') end
  if u and tonumber(u) > now and rest == '' then
    nlive = nlive + 1
    if not skip[n] then live[#live + 1] = n end
  end
end
if nlive > 0 and #live == 0 then return {'overloaded'} end
if #live == 0 then return {redis.call('EXISTS', KEYS[2]), #all} end
return live[math.random(#live)]
