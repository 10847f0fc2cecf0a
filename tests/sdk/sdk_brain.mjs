// sdk_brain.mjs - the official SDK streams whole sessions run by warmpool's
// brain (run by tests/integration/test_brain.c against schedulers whose model
// is the local model server). WP_BASE_URL, WP_API_KEY, WP_AGENT (an agent with
// the toolset), WP_ENV (a cloud environment served by a node). Prints
// "# ok N - name" lines; exits non-zero on the first failure.
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({ baseURL: process.env.WP_BASE_URL, apiKey: process.env.WP_API_KEY,
                               maxRetries: 0, timeout: 30000 });
let n = 0;
function ok(name) { console.log(`# ok ${++n} - sdk-brain: ${name}`); }
function check(cond, what) { if (!cond) throw new Error(`check failed: ${what}`); }

// Stream until a turn ends (an idle that is not requires_action).
async function turn(sessionId, text) {
  const stream = await client.beta.sessions.events.stream(sessionId);
  await client.beta.sessions.events.send(sessionId, {
    events: [{ type: 'user.message', content: [{ type: 'text', text }] }] });
  const seen = [];
  for await (const ev of stream) {
    seen.push(ev);
    if (ev.type === 'session.status_idle' && ev.stop_reason.type !== 'requires_action') break;
  }
  stream.controller.abort();
  return seen;
}

async function main() {
  const agent = process.env.WP_AGENT, env = process.env.WP_ENV;

  // A cloud session: the model calls bash, the sandbox runs it, the turn ends.
  const s = await client.beta.sessions.create({ agent, environment_id: env });
  const seen = await turn(s.id, 'sdk: run bash');
  const types = seen.map((e) => e.type);
  const use = seen.find((e) => e.type === 'agent.tool_use');
  const res = seen.find((e) => e.type === 'agent.tool_result');
  check(types.includes('session.status_running') && use && use.name === 'bash', `tool use (${types})`);
  check(res && res.tool_use_id === use.id && !res.is_error &&
        res.content[0].text === 'from-box-42\n/work', `tool result ${JSON.stringify(res)}`);
  const msgs = seen.filter((e) => e.type === 'agent.message').map((e) => e.content[0].text);
  check(msgs.join('|') === 'Let me look at the sandbox.|All done here.', `messages ${msgs}`);
  check(seen[seen.length - 1].stop_reason.type === 'end_turn', 'end_turn');
  const retrieved = await client.beta.sessions.retrieve(s.id);
  check(retrieved.status === 'idle', `status ${retrieved.status}`);
  ok('cloud session streamed: bash in a sandbox, end_turn');

  // The history as the SDK lists it has the same events, no previews.
  const history = [];
  for await (const ev of client.beta.sessions.events.list(s.id, { limit: 5 })) history.push(ev);
  check(!history.some((e) => e.type === 'event_delta' || e.type === 'event_start'), 'no previews');
  check(history.find((e) => e.type === 'agent.tool_use').id === use.id, 'same ids');
  ok('history paged by the SDK');

  // A self-hosted session: the SDK's own worker runs the model's bash calls
  // through the work queue; the brain continues with its results.
  const sh = await client.beta.environments.create({ name: 'sdk-sh', config: { type: 'self_hosted' } });
  const kr = await fetch(`${process.env.WP_BASE_URL}/v1/environments/${sh.id}/keys`,
                         { method: 'POST', headers: { 'x-api-key': process.env.WP_API_KEY } });
  const envKey = (await kr.json()).key;
  const os = await import('node:os');
  const fs = await import('node:fs');
  const workdir = fs.mkdtempSync(`${os.tmpdir()}/wp-worker-`);
  const ac = new AbortController();
  const worker = client.beta.environments.work.worker({ environmentId: sh.id, environmentKey: envKey,
                                                        workdir, maxIdleMs: 3000, memorySyncIntervalMs: null });
  const running = worker.run(ac.signal).catch((e) => { if (!ac.signal.aborted) throw e; });
  const shs = await client.beta.sessions.create({ agent, environment_id: sh.id });
  const seen2 = await turn(shs.id, 'sdk: run bash on my worker');
  const use2 = seen2.find((e) => e.type === 'agent.tool_use');
  const res2 = seen2.find((e) => e.type === 'user.tool_result');
  check(use2 && res2 && res2.tool_use_id === use2.id, `worker answered (${seen2.map((e) => e.type)})`);
  check(seen2.some((e) => e.type === 'session.status_idle' && e.stop_reason.type === 'requires_action'),
        'requires_action while the worker runs it');
  check(seen2[seen2.length - 1].stop_reason.type === 'end_turn', 'end_turn after the worker');
  ac.abort();
  await Promise.race([running, new Promise((r) => setTimeout(r, 5000))]);
  fs.rmSync(workdir, { recursive: true, force: true });
  ok('self-hosted session: tool calls served by the SDK EnvironmentWorker');
  console.log(`# sdk-brain: ${n} steps passed`);
}

main().catch((e) => { console.log(`# FAILED step ${n + 1} - sdk-brain: ${e && e.stack || e}`); process.exit(1); });
