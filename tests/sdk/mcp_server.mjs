// mcp_server.mjs - a real MCP server for tests/integration/test_mcp.c, built
// with the official SDK (@modelcontextprotocol/sdk, streamable HTTP), on
// loopback. Prints "port N" on its first stdout line.
//
//   /mcp        bearer tokens: "static-good" accepted, anything else 401;
//               answers as text/event-stream (the SDK's default)
//   /oauth/mcp  bearer tokens issued by /token only; answers as JSON
//   /token      OAuth token endpoint: grant_type=refresh_token with
//               client_secret_basic or _post (client "wp-client", secret "s3cret"),
//               refresh token "R1" (rotated to "R2", then "R3", ...)
//   /admin      GET: what happened (calls, token requests, initializations)
//               and the refresh token the endpoint accepts now, as JSON
//   /admin/forget  drop every MCP session (as a restarted server would)
//
// tools/list pages two tools at a time, so clients must follow nextCursor.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  ListToolsRequestSchema, CallToolRequestSchema, isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

const state = { calls: [], token_requests: [], lists: 0, refused: 0, inits: 0 };
const oauthTokens = new Set();
let refreshToken = 'R1';
let issued = 0;

const TOOLS = [
  { name: 'echo', description: 'Echo the text back',
    inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] } },
  { name: 'add', description: 'Add two numbers',
    inputSchema: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } } } },
  { name: 'danger', description: 'Something to confirm first',
    inputSchema: { type: 'object', properties: {} } },
  { name: 'hidden', description: 'Disabled by the agent',
    inputSchema: { type: 'object', properties: {} } },
];

function newServer(path) {
  const s = new Server({ name: 'wp-test', version: '1.0.0' }, { capabilities: { tools: {} } });
  s.setRequestHandler(ListToolsRequestSchema, async (req) => {
    state.lists++;
    const start = Number(req.params?.cursor ?? 0);
    const page = TOOLS.slice(start, start + 2);
    const next = start + 2 < TOOLS.length ? String(start + 2) : undefined;
    return next ? { tools: page, nextCursor: next } : { tools: page };
  });
  s.setRequestHandler(CallToolRequestSchema, async (req) => {
    const { name, arguments: args } = req.params;
    state.calls.push({ path, name, arguments: args });
    if (name === 'echo') return { content: [{ type: 'text', text: `echo: ${args?.text}` }] };
    if (name === 'add') return { content: [{ type: 'text', text: String((args?.a ?? 0) + (args?.b ?? 0)) }] };
    if (name === 'danger') return { content: [{ type: 'text', text: 'danger done' }] };
    return { content: [{ type: 'text', text: `no tool ${name}` }], isError: true };
  });
  return s;
}

const transports = new Map(); // session id -> transport

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

function authorized(path, req) {
  const h = req.headers.authorization ?? '';
  const tok = h.startsWith('Bearer ') ? h.slice(7) : '';
  if (path === '/mcp') return tok === 'static-good';
  return oauthTokens.has(tok);
}

async function mcp(path, req, res) {
  if (!authorized(path, req)) {
    state.refused++;
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer' });
    res.end(JSON.stringify({ error: 'invalid_token' }));
    return;
  }
  const raw = req.method === 'POST' ? await readBody(req) : '';
  let body;
  try { body = raw ? JSON.parse(raw) : undefined; } catch { body = undefined; }
  const sid = req.headers['mcp-session-id'];
  let t = sid ? transports.get(sid) : undefined;
  if (!t && req.method === 'POST' && body && isInitializeRequest(body)) {
    state.inits++;
    t = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: path !== '/mcp',
      onsessioninitialized: (id) => transports.set(id, t),
    });
    await newServer(path).connect(t);
  }
  if (!t) {
    res.writeHead(sid ? 404 : 400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message: 'no session' }, id: null }));
    return;
  }
  await t.handleRequest(req, res, body);
}

async function token(req, res) {
  const form = new URLSearchParams(await readBody(req));
  const h = req.headers.authorization ?? '';
  let client = null, secret = null;
  if (h.startsWith('Basic ')) {
    const [id, sec] = Buffer.from(h.slice(6), 'base64').toString('utf8').split(':');
    client = decodeURIComponent(id); secret = decodeURIComponent(sec ?? '');
  }
  const rec = { auth: h.startsWith('Basic ') ? 'basic' : 'none', client_id: client ?? form.get('client_id'),
                grant_type: form.get('grant_type'), refresh_token: form.get('refresh_token'),
                secret_in_form: form.has('client_secret') };
  state.token_requests.push(rec);
  if (!h.startsWith('Basic ')) { client = form.get('client_id'); secret = form.get('client_secret'); }
  if (rec.grant_type !== 'refresh_token' || client !== 'wp-client' || secret !== 's3cret' ||
      form.get('refresh_token') !== refreshToken) {
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'invalid_grant' }));
    return;
  }
  issued++;
  const access = `oauth-new-${issued}`;
  oauthTokens.add(access);
  refreshToken = `R${issued + 1}`;
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ access_token: access, token_type: 'Bearer', expires_in: 3600,
                           refresh_token: refreshToken }));
}

const srv = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const p = path === '/mcp' || path === '/oauth/mcp' ? mcp(path, req, res)
          : path === '/token' && req.method === 'POST' ? token(req, res)
          : path === '/admin/forget' ? Promise.resolve((transports.clear(), res.end('{}')))
          : path === '/admin' ? Promise.resolve(res.end(JSON.stringify({ ...state, refresh_token: refreshToken })))
          : Promise.resolve((res.writeHead(404), res.end()));
  p.catch((e) => { console.error(e); if (!res.headersSent) res.writeHead(500); res.end(); });
});
srv.listen(0, '127.0.0.1', () => {
  process.stdout.write(`port ${srv.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
