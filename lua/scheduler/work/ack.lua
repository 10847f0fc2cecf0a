--! static const char lua_ack[]
-- KEYS (the environment's slot): item, pending, leased. ARGV: scope, now_ms, now_str, ttl_s, id.
--#include _live.lua
local h = redis.call('HMGET', KEYS[1], 'scope', 'state')
if h[1] ~= ARGV[1] then return redis.error_reply('NOTFOUND') end
if h[2] ~= 'queued' then return redis.error_reply('STATE ' .. h[2]) end
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + 1000 * tonumber(ARGV[4]), ARGV[5])
redis.call('HSET', KEYS[1], 'state', 'starting', 'acked_at', ARGV[3])
live(KEYS[1])
local r = redis.call('HMGET', KEYS[1], 'json', 'live')
return {r[1], r[2]}
