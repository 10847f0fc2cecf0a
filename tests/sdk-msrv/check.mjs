// check.mjs - the official Anthropic TypeScript SDK (pinned in package.json)
// against wp-modelserver. Run by tests/integration/test_modelserver_sdk.c with
// the server started on tests/sdk-msrv/script.json:
//   node check.mjs PORT
// Prints one TAP line per check and exits non-zero if any failed.
import Anthropic from '@anthropic-ai/sdk';
import assert from 'node:assert/strict';

const port = process.argv[2];
const client = new Anthropic({
  apiKey: 'test-key',
  baseURL: `http://127.0.0.1:${port}`,
  maxRetries: 2,
  timeout: 20000,
});
const model = 'claude-test';
let n = 0;
let failed = 0;

async function check(name, fn) {
  n++;
  try {
    await fn();
    console.log(`ok ${n} - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok ${n} - ${name}`);
    console.log(`# ${String(e && e.stack ? e.stack : e).split('\n').join('\n# ')}`);
  }
}

// The first request of the run is answered 529 by the script: the SDK
// retries it (honouring retry-after) and the stream then succeeds.
await check('text stream (after one 529 retried by the SDK)', async () => {
  const stream = client.messages.stream({
    model,
    max_tokens: 256,
    messages: [{ role: 'user', content: 'say hello' }],
  });
  let streamed = '';
  const events = [];
  stream.on('text', (t) => (streamed += t));
  stream.on('streamEvent', (e) => events.push(e.type));
  const msg = await stream.finalMessage();
  assert.equal(msg.role, 'assistant');
  assert.equal(msg.model, model);
  assert.equal(msg.stop_reason, 'end_turn');
  assert.equal(msg.content.length, 1);
  assert.equal(msg.content[0].type, 'text');
  assert.equal(msg.content[0].text, 'Hello from the scripted model server.');
  assert.equal(streamed, msg.content[0].text);
  assert.ok(msg.usage.output_tokens > 0);
  assert.equal(events[0], 'message_start');
  assert.equal(events.at(-1), 'message_stop');
});

await check('tool_use stream: thinking, text, tool_use; then the tool result', async () => {
  const messages = [{ role: 'user', content: 'please use bash to list /tmp' }];
  const stream = client.messages.stream({ model, max_tokens: 1024, messages });
  const json = [];
  stream.on('inputJson', (piece) => json.push(piece));
  const msg = await stream.finalMessage();
  assert.equal(msg.stop_reason, 'tool_use');
  assert.deepEqual(
    msg.content.map((b) => b.type),
    ['thinking', 'text', 'tool_use'],
  );
  assert.equal(msg.content[0].thinking, 'The user wants a listing. I will run ls.');
  assert.ok(msg.content[0].signature.length > 0);
  assert.equal(msg.content[1].text, 'Let me look.');
  const tool = msg.content[2];
  assert.equal(tool.name, 'bash');
  assert.match(tool.id, /^toolu_/);
  assert.deepEqual(tool.input, { command: 'ls -la /tmp', timeout: 30 });
  assert.ok(json.length > 1, 'input arrives in several input_json_delta pieces');

  messages.push({ role: 'assistant', content: msg.content });
  messages.push({
    role: 'user',
    content: [{ type: 'tool_result', tool_use_id: tool.id, content: 'total 0' }],
  });
  const msg2 = await client.messages.stream({ model, max_tokens: 1024, messages }).finalMessage();
  assert.equal(msg2.stop_reason, 'end_turn');
  assert.equal(msg2.content[0].text, 'The directory is empty.');
});

await check('non-streaming create', async () => {
  const msg = await client.messages.create({
    model,
    max_tokens: 256,
    messages: [{ role: 'user', content: 'say hello' }],
  });
  assert.equal(msg.type, 'message');
  assert.equal(msg.content[0].text, 'Hello from the scripted model server.');
  assert.equal(msg.stop_reason, 'end_turn');
});

await check('mid-stream error event surfaces as an overloaded APIError', async () => {
  const stream = client.messages.stream({
    model,
    max_tokens: 256,
    messages: [{ role: 'user', content: 'overload me' }],
  });
  stream.on('error', () => {});
  await assert.rejects(stream.finalMessage(), (e) => {
    assert.ok(e instanceof Anthropic.APIError, `got ${e}`);
    assert.equal(e.error?.error?.type, 'overloaded_error');
    return true;
  });
});

await check('invalid request answers 400 invalid_request_error', async () => {
  await assert.rejects(
    client.messages.create({ model, max_tokens: 0, messages: [{ role: 'user', content: 'x' }] }),
    (e) => {
      assert.equal(e.status, 400);
      assert.equal(e.error?.error?.type, 'invalid_request_error');
      return true;
    },
  );
});

await check('server stats: one 529 served, streams recorded with their TTFT', async () => {
  const stats = await (await fetch(`http://127.0.0.1:${port}/stats`)).json();
  assert.equal(stats.faults.status, 1);
  assert.equal(stats.status['529'], 1);
  assert.equal(stats.status['400'], 1);
  assert.ok(stats.ttft_ms.count >= 4);
  assert.ok(stats.ttft_ms.min >= 19.5, `min ttft ${stats.ttft_ms.min}`);
});

console.log(`1..${n}`);
process.exit(failed ? 1 : 0);
