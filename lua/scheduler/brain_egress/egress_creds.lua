--! static const char lua_egress_creds[]
-- KEYS: none. ARGV: org, credential kind name, environment id, session
-- id, vault ids... Returns {environment json or "", session json or "",
-- {rtok:<resource> field, sealed token, ...}, then for every vault of org
-- that is not archived, in the order given, its credentials not archived
-- in creation order: id, vault id, json, sealed}. The environment, vaults
-- and credentials are in the org's slot, the session in its own: this one
-- still crosses slots (single Redis only; ARCHITECTURE.md, Redis Cluster).
local pre = 'wp:obj:{' .. ARGV[1] .. '}:'
local out = {redis.call('HGET', pre .. ARGV[3], 'json') or '',
             redis.call('HGET', 'wp:obj:{' .. ARGV[4] .. '}', 'json') or ''}
local toks = {}
local all = redis.call('HGETALL', 'wp:obj:{' .. ARGV[4] .. '}')
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 5) == 'rtok:' then table.insert(toks, all[i]); table.insert(toks, all[i + 1]) end
end
table.insert(out, toks)
for i = 5, #ARGV do
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
