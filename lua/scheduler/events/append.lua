--! const char sched__lua_append[]
-- KEYS: session obj, stream, brain lease (all in the session's slot).
-- Appends each event and the status events its arrival causes, updates
-- the session's live status; returns the stream ids of the client events
-- followed by the final status and the environment whose work queue must
-- see the input ('' for none: events.c strips it). Errors: NOTFOUND,
-- TERMINATED, LOGFULL.
-- ARGV: org, (unused), now ms, now, log cap (0: none), then (type, json)
-- pairs.
local h = redis.call('HMGET', KEYS[1], 'org', 'status', 'archived', 'self_hosted', 'environment_id')
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
-- A self_hosted session's input wakes its worker: the work item is queued
-- in the environment's slot by a second script (events.c, enqueue.lua:
-- nothing when the session's latest item is live), so the environment goes
-- last in the reply, '' for no enqueue.
local wake = ''
if input and h[4] == '1' and h[5] then wake = h[5] end
table.insert(ids, status)
table.insert(ids, wake)
return ids
