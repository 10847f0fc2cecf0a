// sdk_mcp.mjs - the official Anthropic SDK drives a session with an MCP
// toolset (run by tests/integration/test_brain_mcp.c): vault and credential
// made through the SDK, an always_ask MCP tool confirmed through the SDK,
// the MCP events read off its stream, mcp_oauth_validate through its
// method. WP_BASE_URL, WP_API_KEY, WP_ENV, WP_MCP_URL (the /mcp endpoint,
// token "static-good"), WP_OAUTH_URL (/oauth/mcp). Prints "# ok N - name"
// lines; exits non-zero on the first failure.
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({ baseURL: process.env.WP_BASE_URL, apiKey: process.env.WP_API_KEY,
                               maxRetries: 0, timeout: 30000 });
let n = 0;
function ok(name) { console.log(`# ok ${++n} - sdk-mcp: ${name}`); }
function check(cond, what) { if (!cond) throw new Error(`check failed: ${what}`); }

// Stream until an idle whose stop reason satisfies done.
async function until(stream, done) {
  const seen = [];
  for await (const ev of stream) {
    seen.push(ev);
    if (ev.type === 'session.status_idle' && done(ev.stop_reason)) break;
  }
  stream.controller.abort();
  return seen;
}

async function main() {
  const vault = await client.beta.vaults.create({ display_name: 'sdk-mcp' });
  await client.beta.vaults.credentials.create(vault.id, {
    auth: { type: 'static_bearer', mcp_server_url: process.env.WP_MCP_URL, token: 'static-good' } });
  const agent = await client.beta.agents.create({
    name: 'sdk-mcp', model: 'claude-test',
    mcp_servers: [{ type: 'url', name: 'tools', url: process.env.WP_MCP_URL }],
    tools: [{ type: 'mcp_toolset', mcp_server_name: 'tools',
              configs: [{ name: 'danger', permission_policy: { type: 'always_ask' } }] }] });
  const s = await client.beta.sessions.create({ agent: agent.id, environment_id: process.env.WP_ENV,
                                                 vault_ids: [vault.id] });
  ok('vault, credential, agent with an MCP toolset and a session made through the SDK');

  let stream = await client.beta.sessions.events.stream(s.id);
  await client.beta.sessions.events.send(s.id, {
    events: [{ type: 'user.message', content: [{ type: 'text', text: 'sdk: use danger' }] }] });
  let seen = await until(stream, (sr) => true);
  const use = seen.find((e) => e.type === 'agent.mcp_tool_use');
  const idle = seen[seen.length - 1];
  check(use && use.name === 'danger' && use.mcp_server_name === 'tools' && use.evaluated_permission === 'ask',
        `mcp tool use ${JSON.stringify(use)}`);
  check(idle.stop_reason.type === 'requires_action' && idle.stop_reason.event_ids[0] === use.id,
        `requires_action ${JSON.stringify(idle)}`);
  ok('the MCP call waits for a confirmation (requires_action)');

  stream = await client.beta.sessions.events.stream(s.id);
  await client.beta.sessions.events.send(s.id, {
    events: [{ type: 'user.tool_confirmation', tool_use_id: use.id, result: 'allow' }] });
  seen = await until(stream, (sr) => sr.type !== 'requires_action');
  const res = seen.find((e) => e.type === 'agent.mcp_tool_result');
  check(res && res.mcp_tool_use_id === use.id && !res.is_error && res.content[0].text === 'danger done',
        `mcp tool result ${JSON.stringify(res)}`);
  check(seen[seen.length - 1].stop_reason.type === 'end_turn', 'end_turn');
  ok('confirmed through the SDK: agent.mcp_tool_result streamed, end_turn');

  const oc = await client.beta.vaults.credentials.create(vault.id, {
    auth: { type: 'mcp_oauth', mcp_server_url: process.env.WP_OAUTH_URL, access_token: 'not-issued' } });
  const v = await client.beta.vaults.credentials.mcpOAuthValidate(oc.id, { vault_id: vault.id });
  check(v.type === 'vault_credential_validation' && v.status === 'invalid' &&
        v.mcp_probe.http_response.status_code === 401 && v.refresh.status === 'no_refresh_token',
        `validation ${JSON.stringify(v)}`);
  ok('mcpOAuthValidate: a refused token is invalid');
  console.log(`# sdk-mcp: ${n} steps passed`);
}

main().catch((e) => { console.log(`# FAILED step ${n + 1} - sdk-mcp: ${e && e.stack || e}`); process.exit(1); });
