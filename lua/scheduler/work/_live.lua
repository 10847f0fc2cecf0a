-- Shared Lua: q() quotes a timestamp or gives null; live() rebuilds the
-- fragment from the hash.
local function q(v) if not v or v == '' then return 'null' end return '"' .. v .. '"' end
local function live(k)
  local h = redis.call('HMGET', k, 'state', 'acked_at', 'started_at', 'hb_at', 'stop_req_at', 'stopped_at')
  local l = '"state":"' .. h[1] .. '","acknowledged_at":' .. q(h[2]) .. ',"started_at":' .. q(h[3]) ..
    ',"latest_heartbeat_at":' .. q(h[4]) .. ',"stop_requested_at":' .. q(h[5]) .. ',"stopped_at":' .. q(h[6])
  redis.call('HSET', k, 'live', l)
  return l
end
