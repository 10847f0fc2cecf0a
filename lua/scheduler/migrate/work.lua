--! static const char lua_migrate_work[]
-- No KEYS: single Redis only (the layout it moves from never ran on a
-- cluster). ARGV: the old global sequence's value, then work item ids.
-- Moves each to its environment's slot (work.c): wp:obj:<id> (scope
-- "<org>:<env>") -> wp:wq:{<env>}:item:<id> with its session in field
-- "session", its entries of wp:idx:<scope>:work[:active] to
-- wp:wq:{<env>}:<org>:work[:active], starts wp:wq:{<env>}:seq no lower
-- than the old global sequence (cursors keep their order), and records a
-- session's latest item (the session's work_id) that is not stopped in
-- wp:wq:{<env>}:latest. Idempotent: the rename is each item's last step.
-- Returns the number of items moved.
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local old = 'wp:obj:' .. id
  local h = redis.call('HMGET', old, 'org', 'scope', 'json', 'state')
  local org, scope = h[1], h[2]
  if org and scope and string.sub(scope, 1, #org + 1) == org .. ':' then
    local wq = 'wp:wq:{' .. string.sub(scope, #org + 2) .. '}:'
    for _, suf in ipairs({'', ':active'}) do
      local oi = 'wp:idx:' .. scope .. ':work' .. suf
      local s = redis.call('ZSCORE', oi, id)
      if s then
        redis.call('ZADD', wq .. org .. ':work' .. suf, s, id)
        redis.call('ZREM', oi, id)
      end
    end
    local sk = wq .. 'seq'
    if tonumber(ARGV[1]) > tonumber(redis.call('GET', sk) or '0') then redis.call('SET', sk, ARGV[1]) end
    local ok, w = pcall(cjson.decode, h[3] or '')
    local sid = ok and type(w) == 'table' and type(w.data) == 'table' and w.data.id
    if type(sid) == 'string' then
      redis.call('HSET', old, 'session', sid)
      if h[4] ~= 'stopped' and redis.call('HGET', 'wp:obj:{' .. sid .. '}', 'work_id') == id then
        redis.call('HSET', wq .. 'latest', sid, id)
      end
    end
    local new = wq .. 'item:' .. id
    if redis.call('EXISTS', new) == 0 then redis.call('RENAME', old, new) else redis.call('DEL', old) end
    n = n + 1
  end
end
return n
