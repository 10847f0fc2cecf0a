--! static const char lua_orphan[]
-- KEYS: lease, session obj (one slot). The sweep's question about one
-- member of an active-set shard: 1 = input waits and no brain holds it
-- (take it over), 0 = a brain holds it (keep), -1 = nothing to do, or the
-- session is archived or gone (drop it from the shard: lua_active_drop).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local h = redis.call('HMGET', KEYS[2], 'active', 'archived')
if h[1] == '1' and h[2] ~= '1' then return 1 end
return -1
