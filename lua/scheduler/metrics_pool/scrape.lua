--! static const char lua_scrape[]
-- Returns JSON: {"nodes": {N: {"alive": 0|1, "fields": {node hash},
-- "sbs": {E: {state: count}}}}, "envs": {E: {"hot": LLEN, "policy": {...},
-- "stats": {...}, "nodes": [N...], "mem": {N: {wp:env:{E}:mem:N}}}}}. Environments are those some node
-- holds sandboxes of or publishes a target for.
-- No KEYS, no ARGV: reads every node and environment key (wp:nodes,
-- wp:node:<N>[:alive|:sbs], wp:env:{E}:hot|policy|stats|nodes|mem:<N>).
-- Single Redis only.
local out, envs = {nodes = {}, envs = {}}, {}
for _, n in ipairs(redis.call('SMEMBERS', 'wp:nodes')) do
  local h, f = redis.call('HGETALL', 'wp:node:' .. n), {}
  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
  local node = {alive = redis.call('EXISTS', 'wp:node:' .. n .. ':alive'), fields = f, sbs = {}}
  for k, _ in pairs(f) do
    local e = string.match(k, '^target:(.+)$')
    if e then envs[e] = true end
  end
  for _, m in ipairs(redis.call('SMEMBERS', 'wp:node:' .. n .. ':sbs')) do
    local e, id = string.match(m, '^(%S+) (%S+)$')
    if e then
      envs[e] = true
      local st = redis.call('HGET', 'wp:env:{' .. e .. '}:sb:' .. id, 'state') or 'unknown'
      node.sbs[e] = node.sbs[e] or {}
      node.sbs[e][st] = (node.sbs[e][st] or 0) + 1
    end
  end
  out.nodes[n] = node
end
for e, _ in pairs(envs) do
  local p, s = redis.call('HGETALL', 'wp:env:{' .. e .. '}:policy'),
               redis.call('HGETALL', 'wp:env:{' .. e .. '}:stats')
  local env = {hot = redis.call('LLEN', 'wp:env:{' .. e .. '}:hot'), policy = {}, stats = {},
               nodes = redis.call('SMEMBERS', 'wp:env:{' .. e .. '}:nodes')}
  for i = 1, #p, 2 do env.policy[p[i]] = p[i + 1] end
  for i = 1, #s, 2 do env.stats[s[i]] = s[i + 1] end
-- what its clones hold on each node (memory.c publishes it)
  env.mem = {}
  for _, n in ipairs(env.nodes) do
    local m, f = redis.call('HGETALL', 'wp:env:{' .. e .. '}:mem:' .. n), {}
    for i = 1, #m, 2 do f[m[i]] = m[i + 1] end
    if #m > 0 then env.mem[n] = f end
  end
  out.envs[e] = env
end
return cjson.encode(out)
