--! static const char lua_index[]
-- A session's second create step, in its organization's slot. KEYS:
-- wp:idx:{org}:session, ...:active, wp:seq:{org}, wp:quota:{org}. ARGV: id.
-- The quota's "sessions" field caps the active index: the count and the
-- add are one step, so racing creates cannot pass it together. Returns
-- the entry's score (the page cursor's).
local lim = tonumber(redis.call('HGET', KEYS[4], 'sessions') or '')
local n = redis.call('ZCARD', KEYS[2])
if lim and n >= lim then
  return redis.error_reply('QUOTA sessions ' .. lim .. ' ' .. n .. ' live')
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
return seq
