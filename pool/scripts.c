/* scripts.c - the Lua scripts that make claims and releases atomic.
 *
 * Every key one script touches carries the environment's hash tag {E}, so
 * the pool works on Redis Cluster too. Sandbox hashes are named from the
 * prefix passed in ARGV (same tag), which Cluster accepts in one slot. */
#include "pool/pool_int.h"

/* KEYS: hot list, fence counter, stats hash, policy hash.
 * ARGV: sandbox key prefix, session, now_ms, lease_ms, inbox key prefix, relay key.
 * Pops idle sandboxes until one is still idle (entries whose sandbox was
 * lost or released meanwhile are dropped), leases it with a new fencing
 * token and tells its node. Returns {id, node, addr, token, relay}, or
 * on a miss {tiers}: the policy's `tiers` ("" = every tier), which the
 * warm/cold claim carries to the node. A policy without "hot" misses at
 * once, leaving the hot clones where they are. */
const char pool__lua_claim_hot[] =
    "local tiers = redis.call('HGET', KEYS[4], 'tiers') or ''\n"
    "if tiers ~= '' and not string.find(',' .. tiers .. ',', ',hot,', 1, true) then\n"
    "  return {tiers}\n"
    "end\n"
    "while true do\n"
    "  local id = redis.call('LPOP', KEYS[1])\n"
    "  if not id then return {tiers} end\n"
    "  local k = ARGV[1] .. id\n"
    "  if redis.call('HGET', k, 'state') == 'idle' then\n"
    "    local tok = redis.call('INCR', KEYS[2])\n"
    "    local node = redis.call('HGET', k, 'node')\n"
    "    redis.call('HSET', k, 'state', 'leased', 'session', ARGV[2], 'token', tok,\n"
    "               'tier', 'hot', 'leased_ms', ARGV[3],\n"
    "               'lease_until', tonumber(ARGV[3]) + tonumber(ARGV[4]))\n"
    "    redis.call('XADD', ARGV[5] .. node, 'MAXLEN', '~', 10000, '*', 'type', 'claimed',\n"
    "               'sandbox', id, 'token', tok, 'session', ARGV[2], 'rkey', ARGV[6])\n"
    "    redis.call('HINCRBY', KEYS[3], 'claims_hot', 1)\n"
    "    return {id, node, redis.call('HGET', k, 'addr'), tostring(tok),\n"
    "            redis.call('HGET', k, 'relay') or ''}\n"
    "  end\n"
    "end\n";

/* KEYS: sandbox hash, hot list. ARGV: id, node, addr, now_ms, relay.
 * A node offers an idle clone. */
const char pool__lua_offer[] =
    "redis.call('HSET', KEYS[1], 'node', ARGV[2], 'addr', ARGV[3], 'state', 'idle',\n"
    "           'created_ms', ARGV[4], 'relay', ARGV[5])\n"
    "redis.call('RPUSH', KEYS[2], ARGV[1])\n"
    "return 1\n";

/* KEYS: sandbox hash. ARGV: token, now_ms, lease_ms.
 * Renew a lease held with token. Returns the new expiry, or an error
 * naming why not (stale token, lost, released). */
const char pool__lua_renew[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return redis.error_reply('GONE sandbox does not exist') end\n"
    "if st ~= 'leased' then return redis.error_reply('LOST sandbox is ' .. st) end\n"
    "if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then\n"
    "  return redis.error_reply('STALE token is not the lease holder') end\n"
    "local u = tonumber(ARGV[2]) + tonumber(ARGV[3])\n"
    "redis.call('HSET', KEYS[1], 'lease_until', u)\n"
    "return u\n";

/* KEYS: sandbox hash. ARGV: token, inbox key prefix, id.
 * Release: only the holder of the current token may; the node is told to
 * destroy the sandbox. */
const char pool__lua_release[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return redis.error_reply('GONE sandbox does not exist') end\n"
    "if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then\n"
    "  return redis.error_reply('STALE token is not the lease holder') end\n"
    "redis.call('HSET', KEYS[1], 'state', 'released')\n"
    "local node = redis.call('HGET', KEYS[1], 'node')\n"
    "redis.call('XADD', ARGV[2] .. node, 'MAXLEN', '~', 10000, '*', 'type', 'release',\n"
    "           'sandbox', ARGV[3], 'token', ARGV[1])\n"
    "return st\n";
