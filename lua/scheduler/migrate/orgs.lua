--! static const char lua_migrate_orgs[]
-- No KEYS: single Redis only (the layout it moves from never ran on a
-- cluster). ARGV: the old global sequence's value, then (object id, kind
-- name) pairs of agents, environments, vaults, credentials and files. Moves each
-- to its organization's slot: wp:obj:<id> -> wp:obj:{<org>}:<id> (TTL
-- kept), its entries of wp:idx:<scope>:<kind>[:active] to
-- wp:idx:{<org>}[:<parent>]:<kind>[:active], an agent's wp:agentver:<id>
-- to wp:agentver:{<org>}:<id>, and starts wp:seq:{<org>} no lower than the
-- old global sequence (cursors keep their order). Idempotent. Returns the
-- number of objects moved.
local n = 0
for i = 2, #ARGV, 2 do
  local id, kind = ARGV[i], ARGV[i + 1]
  local old = 'wp:obj:' .. id
  local h = redis.call('HMGET', old, 'org', 'scope')
  local org, scope = h[1], h[2]
  if org and scope and string.sub(scope, 1, #org) == org then
    local rest = string.sub(scope, #org + 1)
    for _, suf in ipairs({'', ':active'}) do
      local oi = 'wp:idx:' .. scope .. ':' .. kind .. suf
      local s = redis.call('ZSCORE', oi, id)
      if s then
        redis.call('ZADD', 'wp:idx:{' .. org .. '}' .. rest .. ':' .. kind .. suf, s, id)
        redis.call('ZREM', oi, id)
      end
    end
    local ov = 'wp:agentver:' .. id
    if redis.call('EXISTS', ov) == 1 then
      local nv = 'wp:agentver:{' .. org .. '}:' .. id
      if redis.call('EXISTS', nv) == 0 then redis.call('RENAME', ov, nv) else redis.call('DEL', ov) end
    end
    local sk = 'wp:seq:{' .. org .. '}'
    if tonumber(ARGV[1]) > tonumber(redis.call('GET', sk) or '0') then redis.call('SET', sk, ARGV[1]) end
    -- last: a run cut short before it is done again from the start
    local new = 'wp:obj:{' .. org .. '}:' .. id
    if redis.call('EXISTS', new) == 0 then redis.call('RENAME', old, new) else redis.call('DEL', old) end
    n = n + 1
  end
end
return n
