--! static const char lua_open[]
-- KEYS: session obj, stream. ARGV: org. Returns the log's last id.
if redis.call('HGET', KEYS[1], 'org') ~= ARGV[1] then return redis.error_reply('NOTFOUND') end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last == 0 then return '0-0' end
return last[1][1]
