'use strict';
/* Issue 13, "must show" 1: the auth-injecting proxy on the API socket,
 * ANY /v1/connections/NAME/proxy/PATH?QUERY.
 *  - the API (a local HTTP server standing in for the provider's API, and
 *    oidc-provider's userinfo) receives the token; the client never does,
 *    in no header or body it gets back;
 *  - a 401 after the access token was revoked makes one refresh and one
 *    retry (X-Tokenbroker-Retried: 1); a second 401 goes back, no loop;
 *  - 50 concurrent proxied requests meeting a 401 make one refresh;
 *  - a 1 GiB download and a 100 MiB upload pass with the daemon's RSS
 *    growing by less than 16 MiB;
 *  - targets and headers that try to reach another origin get 400, a peer
 *    not on the ACL 403, and the API sees none of them. */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const { spawn, spawnSync } = require('node:child_process');

const { Broker, followAuthorize, sleep, iniProvider, waitFor } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { recordSecret } = require('../lib/suite.js');

const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;

/* The provider's API: Bearer tokens in `revoked` (or every token, with
 * deny) get 401; records what it received. */
async function startApi() {
  const api = { requests: [], revoked: new Set(), deny: false };
  const server = http.createServer((req, res) => {
    const auth = req.headers.authorization || '';
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : null;
    const rec = { method: req.method, url: req.url, headers: req.headers, token, bytes: 0 };
    api.requests.push(rec);
    const u = new URL(req.url, 'http://x');
    req.on('data', (d) => { rec.bytes += d.length; });
    req.on('end', () => {
      if (!token || api.deny || api.revoked.has(token)) {
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer error="invalid_token"' });
        res.end(JSON.stringify({ message: 'Bad credentials' }));
        return;
      }
      if (u.pathname === '/big') {
        let left = Number(u.searchParams.get('n'));
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(left) });
        const chunk = Buffer.alloc(256 * 1024, 'x');
        const more = () => {
          while (left > 0 && !res.destroyed) {
            const c = left >= chunk.length ? chunk : chunk.subarray(0, left);
            left -= c.length;
            if (!res.write(c)) { res.once('drain', more); return; }
          }
          res.end();
        };
        res.on('error', () => {});
        more();
        return;
      }
      if (u.pathname === '/redirect') {
        res.writeHead(302, { location: 'https://elsewhere.example/landing' });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', 'x-api': 'yes', connection: 'keep-alive' });
      res.end(JSON.stringify({ ok: true, method: req.method, path: u.pathname, query: u.search, received: rec.bytes,
        cookie: req.headers.cookie ?? null, 'x-custom': req.headers['x-custom'] ?? null }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  api.port = server.address().port;
  api.base = `http://127.0.0.1:${api.port}`;
  api.close = () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); });
  return api;
}

/** One request over the socket; body: Buffer, or {size} streamed in 1 MiB
 * chunks. The answer's body is kept unless count (then only counted). */
function request(socket, method, path, { headers = {}, body, count = false, timeoutMs = 120000 } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    if (Buffer.isBuffer(body)) h['content-length'] = body.length;
    else if (body) h['content-length'] = body.size;
    const req = http.request({ socketPath: socket, method, path, headers: h, timeout: timeoutMs, agent: false }, (res) => {
      const chunks = [];
      let n = 0;
      res.on('data', (c) => { n += c.length; if (!count) chunks.push(c); });
      res.on('end', () => {
        const text = count ? '' : Buffer.concat(chunks).toString('utf8');
        let json = null;
        try { json = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, text, json, bytes: n });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
    req.on('error', reject);
    if (Buffer.isBuffer(body)) req.end(body);
    else if (body) {
      const chunk = Buffer.alloc(MiB, 'u');
      let left = body.size;
      const more = () => {
        while (left > 0) {
          const c = left >= chunk.length ? chunk : chunk.subarray(0, left);
          left -= c.length;
          if (!req.write(c)) { req.once('drain', more); return; }
        }
        req.end();
      };
      more();
    } else req.end();
  });
}

/** A request written byte for byte (no client library normalizing it). */
function rawRequest(socket, text, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    const chunks = [];
    const timer = setTimeout(() => { s.destroy(); reject(new Error('raw request timed out')); }, timeoutMs);
    s.on('connect', () => s.write(text));
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.on('close', () => {
      clearTimeout(timer);
      const out = Buffer.concat(chunks).toString('utf8');
      resolve({ status: Number((out.match(/^HTTP\/1\.\d (\d{3})/) || [])[1]), text: out });
    });
  });
}

function rssKiB(pid) {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(s.match(/VmRSS:\s+(\d+)/)[1]);
}

/** Runs fn while sampling the daemon's RSS; resolves [result, growth KiB]. */
async function withRss(pid, fn) {
  const before = rssKiB(pid);
  let peak = before;
  const timer = setInterval(() => { try { peak = Math.max(peak, rssKiB(pid)); } catch { /* gone */ } }, 20);
  try {
    const r = await fn();
    peak = Math.max(peak, rssKiB(pid));
    return [r, peak - before];
  } finally { clearInterval(timer); }
}

async function setup(t, { conns = ['c'], providerExtra = {}, broker = {}, env } = {}) {
  const api = await startApi();
  const fp = await startFakeProvider({ expiresIn: 3600 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf({ api_url: [api.base, 'http://127.0.0.2:9'], api_max_connections: 64, ...providerExtra })) },
    secrets: { 'fake.secret': 'proxy-test-client-secret' },
    broker,
    env,
  });
  t.after(async () => { await b.stop(); await fp.close(); await api.close(); });
  for (const name of conns) {
    const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
    assert.equal(r.status, 201, r.text);
    assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  }
  const refreshes = () => fp.requests.filter((x) => x.path === '/token' && x.params.grant_type === 'refresh_token').length;
  const token = async (name) => {
    const r = await b.api('GET', `/v1/connections/${name}/token`);
    assert.equal(r.status, 200, r.text);
    recordSecret(r.json.access_token);
    return r.json.access_token;
  };
  /* every access token the provider issued: none may reach the client */
  const noToken = (res, what) => {
    const all = [...fp.tokens.keys()];
    const seen = JSON.stringify(res.rawHeaders ?? res.headers) + (res.text ?? '');
    for (const tok of all) assert.ok(!seen.includes(tok), `${what}: the client got a token back`);
  };
  return { api, fp, b, refreshes, token, noToken };
}

test('proxy: the API gets the token, the client never does; headers dropped and kept', { timeout: 120000 }, async (t) => {
  const { api, b, token, noToken } = await setup(t);
  const tok = await token('c');

  const r = await request(b.socket, 'GET', '/v1/connections/c/proxy/user/repos?per_page=5&q=a%20b', {
    headers: { authorization: 'Bearer client-own-credential', cookie: 'session=abc', 'x-custom': 'kept',
      'proxy-authorization': 'Basic eA==' },
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.path, '/user/repos');
  assert.equal(r.json.query, '?per_page=5&q=a%20b');
  assert.equal(r.json['x-custom'], 'kept');
  assert.equal(r.json.cookie, null, 'the client Cookie went to the API');
  assert.equal(r.headers['x-api'], 'yes');
  assert.equal(r.headers['x-tokenbroker-retried'], '0');
  const seen = api.requests.at(-1);
  assert.equal(seen.token, tok, 'the API did not receive the broker-held token');
  assert.equal(seen.headers['proxy-authorization'], undefined);
  assert.equal(seen.headers.authorization, `Bearer ${tok}`, 'the client Authorization went on');
  // a header the Connection header names is hop-by-hop too
  const hop = await rawRequest(b.socket, 'GET /v1/connections/c/proxy/hop HTTP/1.1\r\nHost: localhost\r\n' +
    'Connection: close, X-Hop\r\nX-Hop: dropped\r\nX-Custom: kept\r\n\r\n');
  assert.equal(hop.status, 200, hop.text);
  assert.equal(api.requests.at(-1).headers['x-hop'], undefined, 'a header the Connection header named was forwarded');
  assert.equal(api.requests.at(-1).headers['x-custom'], 'kept');
  noToken({ text: hop.text }, 'raw GET');
  assert.equal(seen.headers.host, `127.0.0.1:${api.port}`);
  noToken(r, 'GET');

  // POST with a small body, then PUT, DELETE, HEAD: any method goes
  const p = await request(b.socket, 'POST', '/v1/connections/c/proxy/items', {
    headers: { 'content-type': 'application/json' }, body: Buffer.from('{"a":1}'),
  });
  assert.equal(p.status, 200, p.text);
  assert.equal(p.json.method, 'POST');
  assert.equal(p.json.received, 7);
  assert.equal(api.requests.at(-1).headers['content-type'], 'application/json');
  for (const m of ['PUT', 'DELETE', 'PATCH']) {
    const x = await request(b.socket, m, '/v1/connections/c/proxy/items/1', { body: Buffer.from('x') });
    assert.equal(x.status, 200, `${m}: ${x.text}`);
    assert.equal(x.json.method, m);
    noToken(x, m);
  }
  const hd = await request(b.socket, 'HEAD', '/v1/connections/c/proxy/items/1');
  assert.equal(hd.status, 200);
  assert.equal(api.requests.at(-1).method, 'HEAD');
  const hb = await request(b.socket, 'HEAD', `/v1/connections/c/proxy/big?n=${5 * MiB}`);
  assert.equal(hb.status, 200);
  assert.equal(hb.headers['content-length'], String(5 * MiB), 'HEAD lost the length');

  // a redirect goes back as it is, never followed with the token
  const n = api.requests.length;
  const rd = await request(b.socket, 'GET', '/v1/connections/c/proxy/redirect');
  assert.equal(rd.status, 302);
  assert.equal(rd.headers.location, 'https://elsewhere.example/landing');
  assert.equal(api.requests.length, n + 1);

  // the origin header picks another api_url; one not listed is refused
  const other = await request(b.socket, 'GET', '/v1/connections/c/proxy/x', { headers: { 'x-tokenbroker-origin': 'http://127.0.0.2:9' } });
  assert.equal(other.status, 502, other.text);   // nothing listens there
  assert.equal(other.json.error, 'server_error');
  const bad = await request(b.socket, 'GET', '/v1/connections/c/proxy/x', { headers: { 'x-tokenbroker-origin': 'http://127.0.0.3:9' } });
  assert.equal(bad.status, 400, bad.text);

  // keep-alive: many requests on one connection
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const ports = new Set();
  for (let i = 0; i < 20; i++) {
    const x = await new Promise((resolve, reject) => {
      http.get({ socketPath: b.socket, path: `/v1/connections/c/proxy/k${i}`, agent }, (res) => {
        ports.add(res.socket);
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      }).on('error', reject);
    });
    assert.equal(x, 200);
  }
  agent.destroy();
  assert.equal(ports.size, 1, 'the proxy lost keep-alive');
});

test('proxy: 401 after revocation makes one refresh and one retry; a second 401 goes back', { timeout: 120000 }, async (t) => {
  const { api, b, refreshes, token, noToken } = await setup(t, { conns: ['r1', 'r2'] });
  await sleep(5200);   // the client refresh limit counts the authorization's refresh
  const old = await token('r1');
  api.revoked.add(old);
  const n0 = refreshes();
  const r = await request(b.socket, 'GET', '/v1/connections/r1/proxy/me');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers['x-tokenbroker-retried'], '1');
  assert.equal(refreshes() - n0, 1);
  const fresh = await token('r1');
  assert.notEqual(fresh, old);
  assert.equal(api.requests.at(-1).token, fresh);
  assert.deepEqual(api.requests.slice(-2).map((x) => x.token), [old, fresh]);
  noToken(r, 'retried GET');

  // a small POST body is kept and sent again
  const old2 = await token('r1');
  api.revoked.add(old2);
  await sleep(5200);
  const p = await request(b.socket, 'POST', '/v1/connections/r1/proxy/items', { body: Buffer.alloc(300 * 1024, 'p') });
  assert.equal(p.status, 200, p.text);
  assert.equal(p.headers['x-tokenbroker-retried'], '1');
  assert.equal(p.json.received, 300 * 1024);

  // every token refused: one refresh, one retry, the 401 goes back
  api.deny = true;
  const n1 = refreshes();
  const a0 = api.requests.length;
  const d = await request(b.socket, 'GET', '/v1/connections/r2/proxy/me');
  assert.equal(d.status, 401, d.text);
  assert.equal(d.headers['x-tokenbroker-retried'], '1');
  assert.equal(d.json.message, 'Bad credentials');
  assert.equal(d.headers['www-authenticate'], 'Bearer error="invalid_token"');
  assert.equal(api.requests.length - a0, 2, 'not exactly one retry');
  assert.equal(refreshes() - n1, 1);
  noToken(d, 'second 401');
  // at once again: the refresh limit holds, the 401 goes back unretried
  const e = await request(b.socket, 'GET', '/v1/connections/r2/proxy/me');
  assert.equal(e.status, 401);
  assert.equal(e.headers['x-tokenbroker-retried'], '0');
  assert.equal(refreshes() - n1, 1);
});

test('proxy: 50 concurrent requests meeting a 401 make one refresh', { timeout: 120000 }, async (t) => {
  const { api, b, refreshes, token, noToken } = await setup(t, { conns: ['m'] });
  await sleep(5200);
  const old = await token('m');
  api.revoked.add(old);
  const n0 = refreshes();
  const all = await Promise.all(Array.from({ length: 50 }, (_, i) => request(b.socket, 'GET', `/v1/connections/m/proxy/c${i}`)));
  for (const r of all) {
    assert.equal(r.status, 200, r.text);
    noToken(r, 'concurrent');
  }
  assert.equal(refreshes() - n0, 1, `${refreshes() - n0} refreshes for 50 concurrent 401s`);
  assert.ok(all.some((r) => r.headers['x-tokenbroker-retried'] === '1'));
});

test('proxy: escape attempts get 400, a peer not on the ACL 403, and the API sees none', { timeout: 120000 }, async (t) => {
  const { api, b } = await setup(t, { conns: ['e'] });
  const n0 = api.requests.length;
  const targets = [
    '/v1/connections/e/proxy/http://evil.example/x',
    '/v1/connections/e/proxy/https:%2f%2fevil.example/x',
    '/v1/connections/e/proxy//evil.example/x',
    '/v1/connections/e/proxy/../../admin',
    '/v1/connections/e/proxy/a/../../b',
    '/v1/connections/e/proxy/a/%2e%2e/b',
    '/v1/connections/e/proxy/a/.%2E/b',
    '/v1/connections/e/proxy/@evil.example/x',
    '/v1/connections/e/proxy/a%2fb',
    '/v1/connections/e/proxy/a%2Fb',
    '/v1/connections/e/proxy/a%5cb',
    '/v1/connections/e/proxy/a\\b',
    '/v1/connections/e/proxy/a%00b',
    '/v1/connections/e/proxy/a%zzb',
  ];
  for (const target of targets) {
    const r = await rawRequest(b.socket, `GET ${target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`);
    assert.equal(r.status, 400, `${target}: ${r.text.split('\r\n')[0]}`);
  }
  for (const host of ['evil.example', 'localhost@evil.example', '127.0.0.1.evil.example', 'api.github.com']) {
    const r = await rawRequest(b.socket, `GET /v1/connections/e/proxy/x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    assert.equal(r.status, 400, `Host ${host}: ${r.text.split('\r\n')[0]}`);
  }
  const two = await rawRequest(b.socket, 'GET /v1/connections/e/proxy/x HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n');
  assert.ok(two.status === 400, `two Host headers: ${two.text.split('\r\n')[0]}`);
  assert.equal(api.requests.length, n0, 'the API received a refused request');
  // loopback Host values pass
  for (const host of ['localhost', '127.0.0.1:8080', '[::1]:99', `127.0.0.1:${api.port}`]) {
    const r = await rawRequest(b.socket, `GET /v1/connections/e/proxy/fine HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    assert.equal(r.status, 200, `Host ${host}: ${r.text.split('\r\n')[0]}`);
  }

  // a peer not on the ACL: 403, nothing forwarded (with a body too)
  fs.chmodSync(b.dir, 0o755);   // mkdtemp made it 0700; the socket is 0666
  const user = 'tbtest-proxy';
  if (spawnSync('getent', ['passwd', user]).status !== 0) {
    const u = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', user], { encoding: 'utf8' });
    assert.ok(u.status === 0 || u.status === 9, u.stderr);
  }
  const n1 = api.requests.length;
  for (const extra of [[], ['--data-binary', 'secret-body']]) {
    const out = spawnSync('setpriv', [`--reuid=${user}`, `--regid=${user}`, '--clear-groups', '--', 'curl', '-q', '-sS',
      '--max-time', '20', '--unix-socket', b.socket, ...extra, '-o', '/dev/null', '-w', '%{http_code}',
      'http://localhost/v1/connections/e/proxy/user'], { encoding: 'utf8', timeout: 30000 });
    assert.equal(out.stdout, '403', `${extra.join(' ')}: ${out.stderr}`);
  }
  assert.equal(api.requests.length, n1, 'a request of a peer not on the ACL reached the API');
  // an unknown connection answers the same
  const unk = spawnSync('setpriv', [`--reuid=${user}`, `--regid=${user}`, '--clear-groups', '--', 'curl', '-q', '-sS',
    '--max-time', '20', '--unix-socket', b.socket, '-o', '/dev/null', '-w', '%{http_code}',
    'http://localhost/v1/connections/nosuch/proxy/user'], { encoding: 'utf8', timeout: 30000 });
  assert.equal(unk.stdout, '403');
});

test('proxy: a 1 GiB download and a 100 MiB upload in bounded memory', { timeout: 600000 }, async (t) => {
  // Under ASan, freed memory waits in a quarantine (256 MiB by default) and
  // counts in RSS: kept small here, RSS measures what is live.
  const asan = [process.env.ASAN_OPTIONS, 'quarantine_size_mb=1'].filter(Boolean).join(':');
  const { api, b } = await setup(t, { conns: ['big'], broker: {}, env: { ASAN_OPTIONS: asan } });
  const pid = b.proc.pid;
  // warm up: the first transfer's allocations are not growth per byte
  assert.equal((await request(b.socket, 'GET', `/v1/connections/big/proxy/big?n=${8 * MiB}`, { count: true })).bytes, 8 * MiB);
  const [down, g1] = await withRss(pid, () => request(b.socket, 'GET', `/v1/connections/big/proxy/big?n=${GiB}`, { count: true, timeoutMs: 500000 }));
  assert.equal(down.status, 200);
  assert.equal(down.bytes, GiB);
  assert.equal(down.headers['content-length'], String(GiB));
  const [up, g2] = await withRss(pid, () => request(b.socket, 'PUT', '/v1/connections/big/proxy/upload', { body: { size: 100 * MiB }, timeoutMs: 500000 }));
  assert.equal(up.status, 200, up.text);
  assert.equal(up.json.received, 100 * MiB);
  assert.equal(api.requests.at(-1).bytes, 100 * MiB);
  t.diagnostic(`RSS growth: download ${g1} KiB, upload ${g2} KiB`);
  assert.ok(g1 < 16 * 1024, `1 GiB download grew RSS by ${g1} KiB`);
  assert.ok(g2 < 16 * 1024, `100 MiB upload grew RSS by ${g2} KiB`);
});

test('proxy to oidc-provider userinfo: the token reaches it, a revoked one is refreshed once and retried', { timeout: 180000 }, async (t) => {
  const { startOidc } = require('../lib/oidc-server.js');
  const { authorizeInBrowser } = require('../lib/browser.js');
  const { oidcProviderConf } = require('../lib/broker.js');
  const b = await Broker.prepare();
  const op = await startOidc({ accessTokenTtl: 600, redirectUris: b.redirectUrisFor('local'), quiet: true });
  t.after(async () => { await b.stop(); await op.close(); });
  const origin = new URL(op.endpoints.userinfo).origin;
  const userinfoPath = new URL(op.endpoints.userinfo).pathname;
  b.opts = { providers: { local: oidcProviderConf(op, { api_url: origin }) }, secrets: { 'local.secret': op.clientSecret } };
  b.writeConfig();
  await b.launch();
  const auth = b.ctlAsync(['authorize', 'alice', '--provider', 'local', '--timeout', '60']);
  const url = await waitFor(() => (auth.stdout.match(/https?:\/\/\S+\/auth\?\S+/) || [])[0], { timeoutMs: 10000, what: 'the authorization URL' });
  assert.equal((await authorizeInBrowser(url, { login: 'alice' })).status, 200);
  assert.equal((await auth.done).code, 0);
  const tok = async () => {
    const r = await b.api('GET', '/v1/connections/alice/token');
    assert.equal(r.status, 200, r.text);
    recordSecret(r.json.access_token);
    return r.json.access_token;
  };
  const first = await tok();
  const check = (r) => {
    const seen = JSON.stringify(r.rawHeaders) + r.text;
    for (const x of [first]) assert.ok(!seen.includes(x), 'the client got the token back');
  };

  const r = await request(b.socket, 'GET', `/v1/connections/alice/proxy${userinfoPath}`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.email, 'alice@example.com');
  assert.equal(r.headers['x-tokenbroker-retried'], '0');
  check(r);

  // userinfo refuses the token once (401): one refresh, one retry
  await sleep(5200);   // past the client refresh limit's window of the authorization
  op.failNext({ path: userinfoPath, status: 401, body: { error: 'invalid_token' } });
  const n0 = op.refreshRequests().length;
  const again = await request(b.socket, 'GET', `/v1/connections/alice/proxy${userinfoPath}`);
  assert.equal(again.status, 200, again.text);
  assert.equal(again.json.email, 'alice@example.com');
  assert.equal(again.headers['x-tokenbroker-retried'], '1');
  assert.equal(op.refreshRequests().length - n0, 1);
  check(again);
  const second = await tok();
  assert.notEqual(second, first);
  assert.ok(!(JSON.stringify(again.rawHeaders) + again.text).includes(second));

  // the provider revokes the token (oidc-provider revokes the whole grant):
  // the one refresh is refused, the answer says so, nothing loops
  await sleep(5200);
  assert.equal(await op.revoke(second, { hint: 'access_token' }), 200);
  const n1 = op.refreshRequests().length;
  const gone = await request(b.socket, 'GET', `/v1/connections/alice/proxy${userinfoPath}`);
  assert.equal(gone.status, 409, gone.text);
  assert.equal(gone.json.error, 'needs_reauth');
  assert.equal(op.refreshRequests().length - n1, 1);
});

test('tokenctl proxy --listen in front of the real proxy route: the API gets the token, the loopback client never does', { timeout: 120000 }, async (t) => {
  const { api, b, token, noToken } = await setup(t);
  const tok = await token('c');
  const { BUILD } = require('../lib/broker.js');
  const p = spawn(require('node:path').join(BUILD, 'tokenctl'), ['--socket', b.socket, 'proxy', 'c', '--listen', '127.0.0.1:0'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => p.on('exit', resolve));
  t.after(async () => {
    p.kill('SIGTERM');
    await Promise.race([exited, sleep(10000)]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });
  const port = Number(await waitFor(() => (/forwarding http:\/\/127\.0\.0\.1:(\d+)\//.exec(out) || [])[1],
    { what: 'tokenctl proxy to listen', timeoutMs: 30000 }));
  const res = await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/user/repos?per_page=2', agent: false,
      headers: { authorization: 'Bearer the-clients-own', 'x-custom': 'kept' }, timeout: 30000 }, (r) => {
      let text = '';
      r.on('data', (d) => { text += d; });
      r.on('end', () => resolve({ status: r.statusCode, headers: r.headers, rawHeaders: r.rawHeaders, text }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
  assert.equal(res.status, 200, res.text);
  const json = JSON.parse(res.text);
  assert.equal(json.path, '/user/repos');
  assert.equal(json.query, '?per_page=2');
  assert.equal(json['x-custom'], 'kept');
  const seen = api.requests.at(-1);
  assert.equal(seen.token, tok, 'the API did not receive the broker-held token');
  assert.equal(seen.headers.authorization, `Bearer ${tok}`, 'the client Authorization went on');
  noToken(res, 'through tokenctl proxy');
});
