--! static const char lua_egress_creds[]
-- KEYS: wp:seq:{<org>} (not touched: names the org's slot, where every key
-- below is). ARGV: org, credential kind name, environment id, vault ids...
-- Returns {environment json or "", then for every vault of org that is not
-- archived, in the order given, its credentials not archived in creation
-- order: id, vault id, json, sealed}. The session's part (its json, its
-- repositories' tokens) is read beside it in its own slot (brain_egress.c).
local pre = 'wp:obj:{' .. ARGV[1] .. '}:'
local out = {redis.call('HGET', pre .. ARGV[3], 'json') or ''}
for i = 4, #ARGV do
  local v = redis.call('HMGET', pre .. ARGV[i], 'org', 'archived')
  if v[1] == ARGV[1] and v[2] ~= '1' then
    local idx = 'wp:idx:{' .. ARGV[1] .. '}:' .. ARGV[i] .. ':' .. ARGV[2] .. ':active'
    for _, id in ipairs(redis.call('ZRANGE', idx, 0, 99)) do
      local c = redis.call('HMGET', pre .. id, 'json', 'sealed', 'archived', 'org')
      if c[1] and c[2] and c[3] ~= '1' and c[4] == ARGV[1] then
        table.insert(out, id); table.insert(out, ARGV[i]); table.insert(out, c[1]); table.insert(out, c[2])
      end
    end
  end
end
return out
