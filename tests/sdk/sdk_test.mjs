// sdk_test.mjs - the official Anthropic SDK (pinned in package.json) as a
// real client of warmpool-scheduler. Run by tests/integration/test_sched_sdk.c
// with WP_BASE_URL and WP_API_KEY set; prints "ok N - name" lines (TAP) and
// exits non-zero on the first failure.
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({
  baseURL: process.env.WP_BASE_URL,
  apiKey: process.env.WP_API_KEY,
  maxRetries: 0,
  timeout: 20000,
});
let n = 0;
function ok(name) { console.log(`# ok ${++n} - sdk: ${name}`); }
function check(cond, what) { if (!cond) throw new Error(`check failed: ${what}`); }

async function main() {
  const agent = await client.beta.agents.create({ name: 'sdk-agent', model: 'claude-sonnet-4-5',
                                                  system: 'be brief', metadata: { team: 'qa' } });
  check(agent.id.startsWith('agent_') && agent.version === 1 && agent.model.id === 'claude-sonnet-4-5',
        'agent create');
  check(typeof agent._request_id === 'undefined' || agent._request_id === null ||
        typeof agent._request_id === 'string', 'request id');
  ok('agents.create');

  const updated = await client.beta.agents.update(agent.id, { version: 1, system: 'be very brief' });
  check(updated.version === 2 && updated.system === 'be very brief', 'agent update');
  const v1 = await client.beta.agents.retrieve(agent.id, { version: 1 });
  check(v1.system === 'be brief', 'agent version 1 kept');
  ok('agents.update + retrieve(version)');

  const env = await client.beta.environments.create({
    name: 'sdk-env', config: { type: 'cloud', networking: { type: 'unrestricted' } } });
  check(env.id.startsWith('env_') && env.config.type === 'cloud', 'environment create');
  ok('environments.create');

  const session = await client.beta.sessions.create({ agent: agent.id, environment_id: env.id,
                                                      title: 'sdk session' });
  check(session.status === 'idle' && session.agent.version === 2, 'session create');
  ok('sessions.create');

  // Open the stream first (as the SDK's own runner does), then send.
  const stream = await client.beta.sessions.events.stream(session.id);
  const sent = await client.beta.sessions.events.send(session.id, {
    events: [{ type: 'user.message', content: [{ type: 'text', text: 'hello from the SDK' }] }] });
  check(sent.data.length === 1 && sent.data[0].type === 'user.message' && sent.data[0].id, 'send echo');
  ok('sessions.events.send');

  const seen = [];
  for await (const ev of stream) {
    seen.push(ev);
    if (ev.type === 'session.status_running') break;
  }
  check(seen[0].type === 'user.message' && seen[0].id === sent.data[0].id, 'stream delivered the message');
  check(seen[0].content[0].text === 'hello from the SDK', 'stream content');
  ok('sessions.events.stream');

  const history = [];
  for await (const ev of client.beta.sessions.events.list(session.id, { limit: 1 })) history.push(ev);
  check(history.length === 2 && history[0].id === seen[0].id && history[1].id === seen[1].id,
        'history matches the stream, across pages of 1');
  ok('sessions.events.list (paged)');

  const got = await client.beta.sessions.retrieve(session.id);
  check(got.status === 'running', 'session is running after a user.message');
  ok('sessions.retrieve');

  for (let i = 0; i < 5; i++) await client.beta.agents.create({ name: `pager-${i}`, model: 'claude-haiku-4-5' });
  const ids = new Set();
  let pages = 0;
  let page = await client.beta.agents.list({ limit: 2 });
  for (;;) {
    pages++;
    for (const a of page.data) { check(!ids.has(a.id), 'no duplicate across pages'); ids.add(a.id); }
    if (!page.hasNextPage()) break;
    page = await page.getNextPage();
  }
  check(ids.size === 6 && pages === 3, `6 agents over 3 pages (got ${ids.size} over ${pages})`);
  let all = 0;
  for await (const a of client.beta.agents.list({ limit: 4 })) { if (a) all++; }
  check(all === 6, 'auto-pagination');
  ok('agents.list pagination');

  try {
    await client.beta.agents.retrieve('agent_does_not_exist');
    throw new Error('expected NotFoundError');
  } catch (e) {
    check(e instanceof Anthropic.NotFoundError && e.status === 404, `NotFoundError (got ${e})`);
    check(typeof e.requestID === 'string' && e.requestID.startsWith('req_'), 'request id on errors');
  }
  ok('typed NotFoundError');

  try {
    await client.beta.sessions.create({ agent: agent.id, environment_id: env.id, bogus: 1 });
    throw new Error('expected BadRequestError');
  } catch (e) {
    check(e instanceof Anthropic.BadRequestError && e.status === 400, `BadRequestError (got ${e})`);
    check(e.error && e.error.error && e.error.error.type === 'invalid_request_error', 'error body shape');
  }
  ok('typed BadRequestError');

  try {
    await client.beta.sessions.create({ agent: agent.id, environment_id: 'env_missing' });
    throw new Error('expected 404');
  } catch (e) {
    check(e.status === 404 && e.errorCode === 'environment_not_found', `environment_not_found (got ${e})`);
  }
  ok('environment_not_found error code');

  const archived = await client.beta.sessions.archive(session.id);
  check(archived.status === 'terminated' && archived.archived_at, 'archive');
  const del = await client.beta.sessions.delete(session.id);
  check(del.type === 'session_deleted', 'delete');
  ok('sessions.archive + delete');

  const vault = await client.beta.vaults.create({ display_name: 'v' });
  const cred = await client.beta.vaults.credentials.create(vault.id, {
    display_name: 'c', auth: { type: 'static_bearer', mcp_server_url: 'https://mcp.example.com', token: 'sekrit' } });
  const cred2 = await client.beta.vaults.credentials.retrieve(cred.id, { vault_id: vault.id });
  check(!JSON.stringify(cred2).includes('sekrit') && !JSON.stringify(cred).includes('sekrit'), 'secret never returned');
  ok('vaults + credentials');
  // The SDK's own self-hosted worker against the work queue.
  const shEnv = await client.beta.environments.create({ name: 'sh', config: { type: 'self_hosted' } });
  const kr = await fetch(`${process.env.WP_BASE_URL}/v1/environments/${shEnv.id}/keys`,
                         { method: 'POST', headers: { 'x-api-key': process.env.WP_API_KEY } });
  const envKey = (await kr.json()).key;
  check(typeof envKey === 'string' && envKey.length > 10, 'environment key issued');
  const shSession = await client.beta.sessions.create({ agent: agent.id, environment_id: shEnv.id });
  const os = await import('node:os');
  const fs = await import('node:fs');
  const workdir = fs.mkdtempSync(`${os.tmpdir()}/wp-worker-`);
  const ac = new AbortController();
  const worker = client.beta.environments.work.worker({ environmentId: shEnv.id, environmentKey: envKey,
                                                        workdir, maxIdleMs: 2000, memorySyncIntervalMs: null });
  const running = worker.run(ac.signal).catch((e) => { if (!ac.signal.aborted) throw e; });
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function workState() {
    const items = [];
    for await (const w of client.beta.environments.work.list(shEnv.id)) items.push(w);
    check(items.length === 1 && items[0].data.id === shSession.id, 'one work item for the session');
    return items[0].state;
  }
  let state = '';
  for (let i = 0; i < 100 && state !== 'active'; i++) { await sleep(100); state = await workState(); }
  check(state === 'active', `worker acked and heartbeated (state ${state})`);
  await client.beta.sessions.archive(shSession.id);   // -> session.status_terminated on its stream
  for (let i = 0; i < 100 && state !== 'stopped'; i++) { await sleep(100); state = await workState(); }
  check(state === 'stopped', `worker stopped the item when the session terminated (state ${state})`);
  ac.abort();
  await Promise.race([running, sleep(5000)]);
  fs.rmSync(workdir, { recursive: true, force: true });
  ok('SDK EnvironmentWorker: poll, ack, heartbeat, stream, stop');
  console.log(`# sdk: ${n} steps passed`);
}

main().catch((e) => { console.log(`# FAILED step ${n + 1} - sdk: ${e && e.stack || e}`); process.exit(1); });
