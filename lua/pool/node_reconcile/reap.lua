--! const char node__lua_reap[]
-- Mark every sandbox of a node whose heartbeat expired as lost, drop its
-- hot entries, forget the node. Idempotent: several reapers may race.
-- Single-instance Redis only (it spans environments' hash slots).
-- KEYS[1] wp:node:<N>:sbs, KEYS[2] wp:node:<N>:alive. ARGV[1] node N.
-- Outside KEYS: wp:env:{E}:sb:<id>, :hot, :nodes, wp:node:<N>, wp:nodes,
-- channel wp:lost:<E>. A lost record expires a minute past its lease.
--#include _lost.lua
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local env, id = string.match(m, '^(%S+) (%S+)$')
  if env then
    local k = 'wp:env:{' .. env .. '}:sb:' .. id
    if redis.call('HGET', k, 'state') == 'idle' then
      redis.call('LREM', 'wp:env:{' .. env .. '}:hot', 0, id)
      redis.call('DEL', k)
    elseif redis.call('EXISTS', k) == 1 then
      lost(k, env, id)
    end
    redis.call('SREM', 'wp:env:{' .. env .. '}:nodes', ARGV[1])
    n = n + 1
  end
end
redis.call('DEL', KEYS[1], 'wp:node:' .. ARGV[1])
redis.call('SREM', 'wp:nodes', ARGV[1])
return n
