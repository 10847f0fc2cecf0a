--! static const char lua_owned[]
-- KEYS: the files' object keys; ARGV[1]: org. The 1-based index of the
-- first that is not a live file of org, or 0.
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'org', 'archived')
  if h[1] ~= ARGV[1] or h[2] ~= '0' then return i end
end
return 0
