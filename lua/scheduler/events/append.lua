--! const char sched__lua_append[]
-- KEYS: session obj, stream, brain lease (all in the session's slot). ARGV:
-- org, a fresh work id, now (ms), now (RFC 3339), then (type, json) pairs.
-- Appends each event and the status events its arrival causes, updates
-- the session's live status; returns the stream ids of the client events
-- followed by the final status. Errors: NOTFOUND, TERMINATED, LOGFULL.
-- ARGV: org, work id, now ms, now, log cap (0: none), then (type, json)
-- pairs.
-- A session of a self_hosted environment whose last work item has stopped
-- (a dormant session) gets a new work item when input arrives, with the
-- fresh id, so a worker picks it up again (work.c has the layout).
local h = redis.call('HMGET', KEYS[1], 'org', 'status', 'archived', 'self_hosted', 'work_id', 'environment_id')
if h[1] ~= ARGV[1] then return redis.error_reply('NOTFOUND') end
local status = h[2] or 'idle'
if status == 'terminated' or h[3] == '1' then return redis.error_reply('TERMINATED') end
-- The log's cap: input that would take it past ARGV[5] entries is
-- refused whole (the turn it would start could not be logged).
local cap, len = tonumber(ARGV[5]), redis.call('XLEN', KEYS[2])
if cap > 0 and len + (#ARGV - 5) / 2 + 1 > cap then
  return redis.error_reply('LOGFULL ' .. len .. ' ' .. cap)
end
local ids = {}
local input = false
for i = 6, #ARGV, 2 do
  local t = ARGV[i]
  table.insert(ids, redis.call('XADD', KEYS[2], '*', 't', t, 'e', ARGV[i + 1]))
  if t ~= 'user.interrupt' then input = true end
-- The status machine of events.md 15. The brain (brain.c) emits the
-- running -> idle transitions of a finished turn; an interrupt is
-- answered here only when no brain holds the session (none runs, or
-- none is configured), so a session without a brain returns to idle.
  if (t == 'user.message' or t == 'user.define_outcome') and status == 'idle' then
    status = 'running'
    redis.call('XADD', KEYS[2], '*', 't', 'session.status_running', 'e', '{"type":"session.status_running"}')
  elseif t == 'user.interrupt' and (status == 'running' or status == 'rescheduling') and
         redis.call('EXISTS', KEYS[3]) == 0 then
    status = 'idle'
    redis.call('XADD', KEYS[2], '*', 't', 'session.status_idle', 'e', '{"type":"session.status_idle","stop_reason":{"type":"end_turn"},"stop_details":null}')
  end
end
redis.call('HSET', KEYS[1], 'status', status, 'live', '"status":"' .. status .. '"')
-- The brain's sweep looks for sessions with input and no brain: 'active'
-- says so here, in the session's slot; events.c adds the session to its
-- shard of the active set (another slot) before and after this script.
if input then redis.call('HSET', KEYS[1], 'active', '1') end
-- Not yet one slot: the dormant re-enqueue below touches the work queue
-- and the organization's index (Redis Cluster: ARCHITECTURE.md).
if input and h[4] == '1' and h[6] then
  local state = h[5] and redis.call('HGET', 'wp:obj:' .. h[5], 'state')
  if not state or state == 'stopped' then
    local env, wid, sid = h[6], ARGV[2], string.match(KEYS[1], '^wp:obj:{(.*)}$')
    local scope = ARGV[1] .. ':' .. env
    local k = 'wp:obj:' .. wid
    local seq = redis.call('INCR', 'wp:seq')
    local js = '{"id":"' .. wid .. '","type":"work","environment_id":"' .. env ..
      '","data":{"type":"session","id":"' .. sid .. '"},"metadata":{},"secret":null,"created_at":"' .. ARGV[4] .. '"}'
    redis.call('HSET', k, 'org', ARGV[1], 'scope', scope, 'json', js, 'rev', 1, 'archived', 0,
      'seq', seq, 'state', 'queued', 'created_ms', ARGV[3], 'live',
      '"state":"queued","acknowledged_at":null,"started_at":null,"latest_heartbeat_at":null,"stop_requested_at":null,"stopped_at":null')
    redis.call('ZADD', 'wp:wq:{' .. env .. '}:queued', seq, wid)
    redis.call('ZADD', 'wp:idx:' .. scope .. ':work', seq, wid)
    redis.call('ZADD', 'wp:idx:' .. scope .. ':work:active', seq, wid)
    redis.call('HSET', KEYS[1], 'work_id', wid)
  end
end
table.insert(ids, status)
return ids
