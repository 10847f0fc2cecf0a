--! static const char lua_note[]
-- Only while the template hash exists: a late note must not recreate the
-- hash of an environment that was just deleted.
-- KEYS[1] wp:tpl:{E}. ARGV[1] field (build:<node>), ARGV[2] the line.
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
