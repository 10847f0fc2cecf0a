--! static const char lua_stats[]
-- KEYS: queued, pending, workers. ARGV: now_ms, the item key's prefix
-- (wp:wq:{E}:item:, the environment's slot).
local now = tonumber(ARGV[1])
local oldest = nil
for i = 1, 2 do
  local f = redis.call('ZRANGE', KEYS[i], 0, 0)
  if #f > 0 then
    local c = redis.call('HGET', ARGV[2] .. f[1], 'created_ms')
    if c and (not oldest or tonumber(c) < oldest) then oldest = tonumber(c) end
  end
end
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]), oldest and tostring(oldest) or '',
        redis.call('ZCOUNT', KEYS[3], now - 30000, '+inf')}
