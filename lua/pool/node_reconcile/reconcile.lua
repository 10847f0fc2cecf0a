--! static const char lua_reconcile[]
-- The node's view of what exists wins (after a Redis restart, a lost
-- write, a crash between two commands): every local sandbox is written
-- back as the node knows it, unless Redis records a claim the node has not
-- read from its inbox yet; entries naming this node that it does not have
-- are dropped (idle) or marked lost (leased); the fencing counter never
-- goes below a token the node has seen. Leases whose holder stopped
-- renewing are returned so the node destroys them.
-- KEYS[1] node's sandbox set. ARGV[1] node, ARGV[2] now_ms, ARGV[3]
-- lease_ms, ARGV[4] relay address, then one record per local sandbox:
-- "env<TAB>id<TAB>state<TAB>token<TAB>session<TAB>root".
--#include _lost.lua
local have, expired = {}, {}
for i = 5, #ARGV do
  local env, id, st, tok, sess, root =
    string.match(ARGV[i], '^([^	]+)	([^	]+)	([^	]+)	([^	]*)	([^	]*)	(.*)$')
  if env then
    local m = env .. ' ' .. id
    have[m] = true
    local k = 'wp:env:{' .. env .. '}:sb:' .. id
    local hot = 'wp:env:{' .. env .. '}:hot'
    local cur = redis.call('HGET', k, 'state')
    if st == 'idle' and cur ~= 'leased' then
      redis.call('HSET', k, 'node', ARGV[1], 'addr', root, 'state', 'idle', 'relay', ARGV[4])
      if not redis.call('LPOS', hot, id) then redis.call('RPUSH', hot, id) end
    elseif st == 'leased' then
      local until_ = tonumber(redis.call('HGET', k, 'lease_until') or '0')
      if cur == 'leased' and until_ > 0 and until_ < tonumber(ARGV[2]) then
        expired[#expired + 1] = m
      else
        if until_ == 0 then until_ = tonumber(ARGV[2]) + tonumber(ARGV[3]) end
        redis.call('HSET', k, 'node', ARGV[1], 'addr', root, 'state', 'leased',
                   'token', tok, 'session', sess, 'lease_until', until_, 'relay', ARGV[4])
      end
      local f = 'wp:env:{' .. env .. '}:fence'
      if tonumber(redis.call('GET', f) or '0') < tonumber(tok) then redis.call('SET', f, tok) end
    end
    redis.call('SADD', KEYS[1], m)
  end
end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not have[m] then
    local env, id = string.match(m, '^(%S+) (%S+)$')
    if env then
      local k = 'wp:env:{' .. env .. '}:sb:' .. id
      local st = redis.call('HGET', k, 'state')
      if st == 'idle' or st == 'released' then
        redis.call('LREM', 'wp:env:{' .. env .. '}:hot', 0, id)
        redis.call('DEL', k)
      elseif st == 'leased' then
        lost(k, env, id)
      end
    end
    redis.call('SREM', KEYS[1], m)
  end
end
return expired
