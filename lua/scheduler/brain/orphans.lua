--! static const char lua_orphans[]
-- ARGV: max. Sessions in the active set whose brain lease is gone.
-- No KEYS. Outside KEYS: wp:brain:active, wp:brain:{<sid>}, wp:obj:<sid>.
local out = {}
for _, s in ipairs(redis.call('ZRANGE', 'wp:brain:active', 0, 999)) do
  if redis.call('EXISTS', 'wp:brain:{' .. s .. '}') == 0 then
    if redis.call('EXISTS', 'wp:obj:' .. s) == 0 then redis.call('ZREM', 'wp:brain:active', s)
    else table.insert(out, s) end
    if #out >= tonumber(ARGV[1]) then break end
  end
end
return out
