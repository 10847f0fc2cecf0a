--! static const char lua_creds[]
-- KEYS: wp:seq:{<org>} (not touched: names the org's slot, where every
-- key below is). ARGV: org, credential kind name, vault ids... For every
-- vault of org that is not archived, in the order given, its credentials
-- not archived in creation order: {id, json, sealed, rev} flattened.
local out = {}
local pre = 'wp:obj:{' .. ARGV[1] .. '}:'
for i = 3, #ARGV do
  local v = redis.call('HMGET', pre .. ARGV[i], 'org', 'archived')
  if v[1] == ARGV[1] and v[2] ~= '1' then
    local idx = 'wp:idx:{' .. ARGV[1] .. '}:' .. ARGV[i] .. ':' .. ARGV[2] .. ':active'
    for _, id in ipairs(redis.call('ZRANGE', idx, 0, 99)) do
      local c = redis.call('HMGET', pre .. id, 'json', 'sealed', 'rev', 'archived', 'org')
      if c[1] and c[2] and c[4] ~= '1' and c[5] == ARGV[1] then
        table.insert(out, id); table.insert(out, c[1]); table.insert(out, c[2]); table.insert(out, c[3] or '0')
      end
    end
  end
end
return out
