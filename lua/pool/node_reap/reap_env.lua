--! static const char lua_reap_env[]
-- One environment's part of reaping a dead node N (node_reconcile.c, which
-- then forgets N): N's sandboxes of E are marked lost (leased or released;
-- their holders hear it on wp:lost:<E>) or dropped with their hot entries
-- (idle), and N leaves E's nodes and live hash. Only entries still naming
-- N are touched and a lost one is not announced twice: idempotent, several
-- reapers may race. Every key is E's (one hash slot). A lost record
-- expires a minute past its lease (../_lost.lua).
-- KEYS[1] wp:env:{E}:hot, KEYS[2] wp:env:{E}:nodes, KEYS[3] wp:env:{E}:live,
-- KEYS[4..] wp:env:{E}:sb:<id>. ARGV[1] node N, ARGV[2] E, ARGV[3..] the
-- ids (ARGV[i - 1] is the id of KEYS[i]).
--#include ../_lost.lua
local n = 0
for i = 4, #KEYS do
  local k, id = KEYS[i], ARGV[i - 1]
  if redis.call('HGET', k, 'node') == ARGV[1] then
    local st = redis.call('HGET', k, 'state')
    if st == 'idle' then
      redis.call('LREM', KEYS[1], 0, id)
      redis.call('DEL', k)
    elseif st ~= 'lost' then
      lost(k, ARGV[2], id)
    end
    n = n + 1
  end
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return n
