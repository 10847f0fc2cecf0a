--! static const char lua_live[]
-- This node's liveness for one environment it serves, so the claim's node
-- pick reads only E's keys (lua/pool/client/pick_node.lua; one hash slot):
-- field <node> = "<until ms>" or "<until ms> drain", the time Redis's own
-- (TIME: no node's clock matters). Written with every heartbeat; fields
-- a minute past their time (nodes gone without a reaper yet) are dropped.
-- KEYS[1] wp:env:{E}:live. ARGV[1] node, ARGV[2] ttl ms, ARGV[3] "drain"
-- or "".
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local u = tonumber(string.match(all[i + 1], '^(%d+)'))
  if not u or u + 60000 < now then redis.call('HDEL', KEYS[1], all[i]) end
end
local v = tostring(now + tonumber(ARGV[2]))
if ARGV[3] ~= '' then v = v .. ' ' .. ARGV[3] end
redis.call('HSET', KEYS[1], ARGV[1], v)
return 1
