--! static const char lua_migrate_org_keys[]
-- No KEYS: single Redis only (the layout it moves from never ran on a
-- cluster). ARGV: the old global sequence's value, then key names found by
-- SCAN. Moves each of an organization's keys of layout 3 into its slot:
-- wp:quota:<org> -> wp:quota:{<org>}, wp:quotause:<envs|sbx>:<org> ->
-- wp:quotause:{<org>}:<envs|sbx>, wp:sbx:<id> -> wp:sbx:{<org>}:<id> (its
-- org field), wp:idx:<org>:session[:active] -> wp:idx:{<org>}:session[...]
-- (scores kept, so page cursors keep working), and raises wp:seq:{<org>}
-- to the old global sequence (the sessions' scores came from it: new ones
-- list after them). A key whose new name exists already is merged into
-- it (the new one's values win) and deleted. Other names are left alone.
-- Idempotent. Returns the number of keys moved.
local function target(k)
  local o = string.match(k, '^wp:quota:([^{}:]+)$')
  if o then return 'wp:quota:{' .. o .. '}', o, false end
  local what
  what, o = string.match(k, '^wp:quotause:(%a+):([^{}:]+)$')
  if o then return 'wp:quotause:{' .. o .. '}:' .. what, o, false end
  local suf
  o, suf = string.match(k, '^wp:idx:([^{}:]+):session(.*)$')
  if o and (suf == '' or suf == ':active') then
    return 'wp:idx:{' .. o .. '}:session' .. suf, o, true
  end
  local id = string.match(k, '^wp:sbx:([^{}:]+)$')
  if id then
    o = redis.call('HGET', k, 'org')
    if o and not string.find(o, '[{}:]') then return 'wp:sbx:{' .. o .. '}:' .. id, o, false end
  end
  return nil
end
local n = 0
for i = 2, #ARGV do
  local old = ARGV[i]
  local new, org, sessions = target(old)
  if new and redis.call('EXISTS', old) == 1 then
    if redis.call('EXISTS', new) == 0 then
      redis.call('RENAME', old, new)
    else
      local t = redis.call('TYPE', old)['ok']
      if t == 'hash' then
        local h = redis.call('HGETALL', old)
        for j = 1, #h, 2 do redis.call('HSETNX', new, h[j], h[j + 1]) end
      elseif t == 'zset' then
        redis.call('ZUNIONSTORE', new, 2, new, old, 'AGGREGATE', 'MAX')
      end
      redis.call('DEL', old)
    end
    if sessions then
      local sk = 'wp:seq:{' .. org .. '}'
      if tonumber(ARGV[1]) > tonumber(redis.call('GET', sk) or '0') then
        redis.call('SET', sk, ARGV[1])
      end
    end
    n = n + 1
  end
end
return n
