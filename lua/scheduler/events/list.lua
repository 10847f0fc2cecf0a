--! static const char lua_list[]
-- KEYS: obj, stream. ARGV: org, start, end, limit, order, types (comma
-- list or ''), fence ('1' in the durable mode: a propagated no-op, so the
-- WAIT behind this script covers every entry it read; see sse.c). Start/end are XRANGE bounds (exclusive '(' allowed).
-- Entries may carry an explicit event id (field i, set by the brain for
-- events announced before they were written); stream-only previews
-- (event_start, event_delta) are never history.
-- Returns {more, stream id1, explicit id1 or '', json1, ...}.
if redis.call('HGET', KEYS[1], 'org') ~= ARGV[1] then return redis.error_reply('NOTFOUND') end
if ARGV[7] == '1' then redis.call('PUBLISH', 'wp:sse:fence', '') end
local lo, hi, limit, asc, types = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5] == 'asc', ARGV[6]
local out, more, scanned = {}, 0, 0
while true do
  local batch
  if asc then batch = redis.call('XRANGE', KEYS[2], lo, hi, 'COUNT', limit + 1)
  else batch = redis.call('XREVRANGE', KEYS[2], hi, lo, 'COUNT', limit + 1) end
  if #batch == 0 then break end
  for _, ent in ipairs(batch) do
    local id, f = ent[1], ent[2]
    scanned = scanned + 1
    if asc then lo = '(' .. id else hi = '(' .. id end
    local t, e, x = f[2], f[4], ''
    if f[5] == 'i' then x = f[6] end
    if t ~= 'event_start' and t ~= 'event_delta' and
       (types == '' or string.find(',' .. types .. ',', ',' .. t .. ',', 1, true)) then
      if #out >= 3 * limit then more = 1; break end
      table.insert(out, id); table.insert(out, x); table.insert(out, e)
    end
  end
  if more == 1 or #batch < limit + 1 or scanned > 20000 then break end
end
if scanned > 20000 and more == 0 then more = 1 end
local res = {more}
for i = 1, #out do table.insert(res, out[i]) end
return res
