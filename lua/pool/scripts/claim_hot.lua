--! const char pool__lua_claim_hot[]
-- KEYS: hot list, fence counter, stats hash, policy hash.
-- ARGV: sandbox key prefix, session, now_ms, lease_ms, inbox key prefix, relay key.
-- Pops idle sandboxes until one is still idle (entries whose sandbox was
-- lost or released meanwhile are dropped), leases it with a new fencing
-- token and tells its node. Returns {id, node, addr, token, relay}, or
-- on a miss {tiers}: the policy's `tiers` ("" = every tier), which the
-- warm/cold claim carries to the node. A policy without "hot" misses at
-- once, leaving the hot clones where they are.
local tiers = redis.call('HGET', KEYS[4], 'tiers') or ''
if tiers ~= '' and not string.find(',' .. tiers .. ',', ',hot,', 1, true) then
  return {tiers}
end
while true do
  local id = redis.call('LPOP', KEYS[1])
  if not id then return {tiers} end
  local k = ARGV[1] .. id
  if redis.call('HGET', k, 'state') == 'idle' then
    local tok = redis.call('INCR', KEYS[2])
    local node = redis.call('HGET', k, 'node')
    redis.call('HSET', k, 'state', 'leased', 'session', ARGV[2], 'token', tok,
               'tier', 'hot', 'leased_ms', ARGV[3],
               'lease_until', tonumber(ARGV[3]) + tonumber(ARGV[4]))
    redis.call('XADD', ARGV[5] .. node, 'MAXLEN', '~', 10000, '*', 'type', 'claimed',
               'sandbox', id, 'token', tok, 'session', ARGV[2], 'rkey', ARGV[6])
    redis.call('HINCRBY', KEYS[3], 'claims_hot', 1)
    return {id, node, redis.call('HGET', k, 'addr'), tostring(tok),
            redis.call('HGET', k, 'relay') or ''}
  end
end
