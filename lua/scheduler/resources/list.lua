--! static const char lua_list[]
-- ARGV: cursor score or '', limit, 'asc'|'desc', the object key's prefix
-- and suffix around an id ('wp:obj:{<org>}:' '' for org-tagged kinds,
-- 'wp:obj:{' '}' for sessions, 'wp:obj:' '' for the rest), then filter
-- triples (field, op, value) with op in eq, in (comma list), gte, lte, gt, lt.
-- Returns {first, last, more, json1, live1, json2, live2, ...}.
-- KEYS[1] the index (all or active) of one kind in one scope.
local idx, cur, limit, asc = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3] == 'asc'
local kpre, ksuf = ARGV[4], ARGV[5]
local fields, ops, vals = {'json', 'live', 'archived'}, {}, {}
-- an archived object in the active index: a session archived by a
-- scheduler that died before removing its entry (another slot)
local active = string.sub(idx, -7) == ':active'
for i = 6, #ARGV, 3 do
  table.insert(fields, ARGV[i]); table.insert(ops, ARGV[i+1]); table.insert(vals, ARGV[i+2])
end
local function pass(h)
  for j = 1, #ops do
    local v, op, want = h[j + 3], ops[j], vals[j]
    if op == 'eq' then if v ~= want then return false end
    elseif op == 'in' then
      if not v or not string.find(',' .. want .. ',', ',' .. v .. ',', 1, true) then return false end
    else
      local a, b = tonumber(v or ''), tonumber(want)
      if not a or not b then return false end
      if op == 'gte' and a < b then return false end
      if op == 'lte' and a > b then return false end
      if op == 'gt' and a <= b then return false end
      if op == 'lt' and a >= b then return false end
    end
  end
  return true
end
local out, first, last, scanned = {}, '', cur, 0
local done = false
while #out < 2 * limit and not done and scanned < 5000 do
  local ids
  if asc then
    ids = redis.call('ZRANGEBYSCORE', idx, last == '' and '-inf' or '(' .. last, '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 10)
  else
    ids = redis.call('ZREVRANGEBYSCORE', idx, last == '' and '+inf' or '(' .. last, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 10)
  end
  if #ids == 0 then done = true end
  for i = 1, #ids, 2 do
    local h = redis.call('HMGET', kpre .. ids[i] .. ksuf, unpack(fields))
    last = ids[i + 1]
    scanned = scanned + 1
    local stale = not h[1] or (active and h[3] == '1') -- expired (archived TTL), archived
    if stale then redis.call('ZREM', idx, ids[i]) end
    if not stale and pass(h) then
      if first == '' then first = last end
      table.insert(out, h[1]); table.insert(out, h[2] or '')
      if #out >= 2 * limit then break end
    end
  end
end
local more = 0
if last ~= '' and not done then
  local r
  if asc then r = redis.call('ZRANGEBYSCORE', idx, '(' .. last, '+inf', 'LIMIT', 0, 1)
  else r = redis.call('ZREVRANGEBYSCORE', idx, '(' .. last, '-inf', 'LIMIT', 0, 1) end
  if #r > 0 then more = 1 end
end
local res = {first, last, more}
for i = 1, #out do table.insert(res, out[i]) end
return res
