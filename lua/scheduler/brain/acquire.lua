--! static const char lua_acquire[]
-- KEYS: lease, session obj, log. ARGV: ttl ms. 0 when the lease is held;
-- else {fresh token, the session's fields (load_session), its
-- environment's json, the log's first 1000 entries}: one round trip on a
-- turn's critical path.
--
-- The token is the fence counter plus one, but never below Redis's clock
-- in microseconds: with `appendfsync everysec` a restart can lose the last
-- second of writes, counter included, and a plain INCR would then hand a
-- token again that a brain still holds. Tokens handed out before the loss
-- are below the clock at the restart, so the next one is above them all.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = redis.call('TIME')
local n = tonumber(redis.call('GET', 'wp:brain:fence') or '0') + 1
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
if n < floor then n = floor end
local t = string.format('%d', n)
redis.call('SET', 'wp:brain:fence', t)
redis.call('SET', KEYS[1], t, 'PX', ARGV[1])
local h = redis.call('HMGET', KEYS[2], 'org', 'json', 'environment_id', 'self_hosted', 'status',
  'archived', 'sbx_sandbox', 'sbx_token', 'sbx_relay', 'sbx_node', 'sbx_tier', 'sbx_rkey')
local env = false
if h[3] then env = redis.call('HGET', 'wp:obj:' .. h[3], 'json') end
local out = {n}
for i = 1, 12 do out[i + 1] = h[i] end
out[14] = env
out[15] = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1000)
return out
