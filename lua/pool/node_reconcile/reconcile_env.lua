--! static const char lua_reconcile_env[]
-- One environment's part of the node's reconcile (node_reconcile.c): the
-- node's view of what exists wins (after a Redis restart, a lost write, a
-- crash between two commands). Each of its sandboxes of E is written back
-- as the node knows it, unless Redis records a claim the node has not read
-- from its inbox yet; entries of E its set names that it does not have are
-- dropped (idle) or marked lost (leased); E's fencing counter never goes
-- below a token the node has seen. Leases whose holder stopped renewing
-- are returned so the node destroys them, and so are leases the pool
-- declared lost (another node reaped this one: it was dead or cut off, and
-- the holder was told): those are never written back (fencing: the holder
-- may hold another sandbox by now); their hash goes, so a renewal with the
-- old token is refused as GONE. The node's set is written by
-- the node after this script (another slot). Every key is E's.
-- KEYS[1] wp:env:{E}:hot, KEYS[2] wp:env:{E}:fence, KEYS[3..] wp:env:{E}:sb:<id>:
-- first the node's own sandboxes, then the entries it does not have.
-- ARGV[1] node, ARGV[2] now_ms, ARGV[3] lease_ms, ARGV[4] relay address,
-- ARGV[5] E, ARGV[6] how many of KEYS[3..] are the node's own; then one
-- record per own sandbox "id<TAB>state<TAB>token<TAB>session<TAB>root",
-- then the id of each entry it does not have. Returns "E id" per expired
-- lease, "E id lost" per lease declared lost.
--#include ../_lost.lua
local nown = tonumber(ARGV[6])
local expired = {}
for i = 1, nown do
  local k = KEYS[2 + i]
  local id, st, tok, sess, root =
    string.match(ARGV[6 + i], '^([^\t]+)\t([^\t]+)\t([^\t]*)\t([^\t]*)\t(.*)$')
  if id then
    local cur = redis.call('HGET', k, 'state')
    if st == 'idle' and cur ~= 'leased' then
      redis.call('HSET', k, 'node', ARGV[1], 'addr', root, 'state', 'idle', 'relay', ARGV[4])
      if not redis.call('LPOS', KEYS[1], id) then redis.call('RPUSH', KEYS[1], id) end
    elseif st == 'leased' and cur == 'lost' then
      redis.call('DEL', k)
      expired[#expired + 1] = ARGV[5] .. ' ' .. id .. ' lost'
    elseif st == 'leased' then
      local until_ = tonumber(redis.call('HGET', k, 'lease_until') or '0')
      if cur == 'leased' and until_ > 0 and until_ < tonumber(ARGV[2]) then
        expired[#expired + 1] = ARGV[5] .. ' ' .. id
      else
        if until_ == 0 then until_ = tonumber(ARGV[2]) + tonumber(ARGV[3]) end
        redis.call('HSET', k, 'node', ARGV[1], 'addr', root, 'state', 'leased',
                   'token', tok, 'session', sess, 'lease_until', until_, 'relay', ARGV[4])
      end
      if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(tok) then
        redis.call('SET', KEYS[2], tok)
      end
    end
  end
end
for i = nown + 1, #KEYS - 2 do
  local k, id = KEYS[2 + i], ARGV[6 + i]
  local st = redis.call('HGET', k, 'state')
  if st == 'idle' or st == 'released' then
    redis.call('LREM', KEYS[1], 0, id)
    redis.call('DEL', k)
  elseif st == 'leased' then
    lost(k, ARGV[5], id)
  end
end
return expired
