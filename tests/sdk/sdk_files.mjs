// sdk_files.mjs - the official SDK's beta.files against warmpool-scheduler,
// run by tests/integration/test_sched_files.c with WP_BASE_URL, WP_API_KEY,
// WP_OTHER_KEY (another organization), WP_AGENT and WP_ENV set. Prints
// "# ok N - sdk: name" lines; "FAILED" and a non-zero exit on the first
// failure.
import Anthropic, { toFile, NotFoundError } from '@anthropic-ai/sdk';

const opts = { baseURL: process.env.WP_BASE_URL, maxRetries: 0, timeout: 20000 };
const client = new Anthropic({ ...opts, apiKey: process.env.WP_API_KEY });
const other = new Anthropic({ ...opts, apiKey: process.env.WP_OTHER_KEY });
let n = 0;
function ok(name) { console.log(`# ok ${++n} - sdk: ${name}`); }
function check(cond, what) { if (!cond) throw new Error(`check failed: ${what}`); }
async function notFound(p, what) {
  try { await p; } catch (e) { if (e instanceof NotFoundError) return; throw e; }
  throw new Error(`check failed: ${what} should be 404`);
}

async function main() {
  const bytes = Buffer.from('sdk bytes\r\n--x\r\n\u0000end', 'latin1');
  const f = await client.beta.files.upload({ file: await toFile(bytes, 'notes.txt', { type: 'text/plain' }) });
  check(f.id.startsWith('file_') && f.type === 'file' && f.filename === 'notes.txt', 'upload metadata');
  check(f.size_bytes === bytes.length && f.mime_type === 'text/plain', 'upload size and type');
  ok('files.upload');

  const ids = [];
  for await (const x of client.beta.files.list()) ids.push(x.id);
  check(ids.includes(f.id), 'list has the upload');
  ok('files.list');

  const meta = await client.beta.files.retrieveMetadata(f.id);
  check(meta.id === f.id && meta.size_bytes === bytes.length, 'retrieveMetadata');
  ok('files.retrieveMetadata');

  const res = await client.beta.files.download(f.id);
  const got = Buffer.from(await res.arrayBuffer());
  check(got.equals(bytes), 'download is byte for byte the upload');
  ok('files.download');

  const s = await client.beta.sessions.create({ agent: process.env.WP_AGENT, environment_id: process.env.WP_ENV,
                                               resources: [{ type: 'file', file_id: f.id }] });
  check(s.resources.length === 1 && s.resources[0].mount_path === `/mnt/session/uploads/${f.id}`,
        'session resource with the default mount path');
  const added = await client.beta.sessions.resources.add(s.id, { type: 'file', file_id: f.id,
                                                                 mount_path: '/workspace/notes.txt' });
  check(added.type === 'file' && added.file_id === f.id && added.mount_path === '/workspace/notes.txt',
        'resources.add');
  ok('sessions.create with a file resource + resources.add');

  await notFound(other.beta.files.retrieveMetadata(f.id), 'another organization retrieving');
  await notFound(other.beta.files.download(f.id), 'another organization downloading');
  await notFound(other.beta.files.delete(f.id), 'another organization deleting');
  const theirs = [];
  for await (const x of other.beta.files.list()) theirs.push(x.id);
  check(!theirs.includes(f.id), 'another organization does not list it');
  ok('another organization gets 404');

  const del = await client.beta.files.delete(f.id);
  check(del.id === f.id && del.type === 'file_deleted', 'delete answer');
  await notFound(client.beta.files.retrieveMetadata(f.id), 'retrieving a deleted file');
  ok('files.delete');
}

main().catch((e) => { console.log(`FAILED: ${e.stack || e}`); process.exit(1); });
