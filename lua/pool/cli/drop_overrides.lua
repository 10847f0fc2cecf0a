--! static const char lua_drop_overrides[]
-- KEYS[1] wp:env:{E}:policy. ARGV[1] a policy field (min_hot, max_hot).
-- Drops the per-node overrides of that field (ARGV[1]:<node>), so the
-- value set for every node holds on every node.
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then redis.call('HDEL', KEYS[1], f) end
end
return 1
