--! const char pool__lua_release[]
-- KEYS: sandbox hash. ARGV: token, inbox key prefix, id.
-- Release: only the holder of the current token may; the node is told to
-- destroy the sandbox.
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return redis.error_reply('GONE sandbox does not exist') end
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return redis.error_reply('STALE token is not the lease holder') end
redis.call('HSET', KEYS[1], 'state', 'released')
local node = redis.call('HGET', KEYS[1], 'node')
redis.call('XADD', ARGV[2] .. node, 'MAXLEN', '~', 10000, '*', 'type', 'release',
           'sandbox', ARGV[3], 'token', ARGV[1])
return st
