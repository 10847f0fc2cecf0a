--! static const char lua_startup[]
-- This node's start-up values, written once when it registers and
-- only where the operator has set nothing for every node: an
-- operator's `pool set` (which drops per-node fields) must not be
-- undone by the next heartbeat or by a restart. Without a field the
-- node uses its start-up value anyway (policy_cb). API environments
-- have none: their policy comes with them.
-- KEYS[1] wp:env:{E}:policy. ARGV: "min_hot", "max_hot", the start-up
-- min_hot, max_hot, this node.
for i = 1, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    redis.call('HSETNX', KEYS[1], ARGV[i] .. ':' .. ARGV[5], ARGV[i + 2])
  end
end
return 1
