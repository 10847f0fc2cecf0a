--! static const char lua_acquire[]
-- KEYS: lease, session obj, log, the session's fence (one slot). ARGV: ttl
-- ms. 0 when the lease is held; else {fresh token, the session's fields
-- (load_session), the log's first 1000 entries}: one round trip on a
-- turn's critical path (the environment, another slot, is read beside it).
--
-- The token is the session's fence counter plus one, but never below
-- Redis's clock in microseconds: with `appendfsync everysec` a restart can
-- lose the last second of writes, counter included, and a plain INCR would
-- then hand a token again that a brain still holds. Tokens handed out
-- before the loss are below the clock at the restart, so the next one is
-- above them all. Per session, so a cluster needs no global counter.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = redis.call('TIME')
local n = tonumber(redis.call('GET', KEYS[4]) or '0') + 1
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
if n < floor then n = floor end
local t = string.format('%d', n)
redis.call('SET', KEYS[4], t)
redis.call('SET', KEYS[1], t, 'PX', ARGV[1])
local h = redis.call('HMGET', KEYS[2], 'org', 'json', 'environment_id', 'self_hosted', 'status',
  'archived', 'sbx_sandbox', 'sbx_token', 'sbx_relay', 'sbx_node', 'sbx_tier', 'sbx_rkey')
local out = {n}
for i = 1, 12 do out[i + 1] = h[i] end
out[14] = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1000)
return out
