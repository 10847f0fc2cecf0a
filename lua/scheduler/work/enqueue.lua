--! static const char lua_enqueue[]
-- KEYS (all in the environment's slot): item, queued, idx all, idx active,
-- seq, latest. ARGV: id, org, scope, json, live, created_ms, session id.
-- Queues a new work item for the session unless the session's latest one
-- (latest: session id -> work id, dropped when that item stops) is still
-- there and not stopped: so at creation, and for input to a dormant
-- session (events.c sends it after every append of input to a self_hosted
-- session), and running it twice queues one item. Returns the new item's
-- seq, or 0 when the session had a live one.
local cur = redis.call('HGET', KEYS[6], ARGV[7])
if cur then
  -- the latest item's key: the new one's with the other id (same slot)
  local st = redis.call('HGET', string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1]) .. cur, 'state')
  if st and st ~= 'stopped' then return 0 end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], 'org', ARGV[2], 'scope', ARGV[3], 'json', ARGV[4], 'rev', 1,
  'archived', 0, 'seq', seq, 'live', ARGV[5], 'state', 'queued', 'created_ms', ARGV[6],
  'session', ARGV[7])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
redis.call('HSET', KEYS[6], ARGV[7], ARGV[1])
return seq
