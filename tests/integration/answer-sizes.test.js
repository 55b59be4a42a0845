'use strict';
/*
 * The token answer is written into its request's own buffer (1,536 bytes)
 * and sent through an MHD response kept with that buffer, queued again
 * while the answer's length stays the same (daemon/api.c, answer_buf(),
 * respond_slot()). Answers of every size around that buffer's edge, of
 * the same length with new content, of lengths changing between requests
 * on one kept-alive socket, tokens that need escaping, and the answers
 * with a header of their own (Retry-After) must each be the current
 * token, whole, with the JSON answer's headers.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');

const { Broker, followAuthorize, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const SLOT = 1536;

// A token of n characters, different each time (a counter at its end).
let serial = 0;
function tokenOf(n, fill = 'a') {
  const tail = `-${++serial}`;
  return n > tail.length ? fill.repeat(n - tail.length) + tail : tail.slice(0, n).padStart(n, 'z');
}

// GET over one kept-alive socket (the same MHD connection, the same
// request buffers reused): status, headers, raw body and the parsed token.
function getter(socketPath) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = (path) => new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path, agent, timeout: 10000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        let json = null;
        try { json = JSON.parse(raw.toString('utf8')); } catch { /* checked by the caller */ }
        resolve({ status: res.statusCode, headers: res.headers, raw, json, socket: req.socket });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${path}: timed out`)));
    req.on('error', reject);
  });
  return { get, close: () => agent.destroy() };
}

function checkAnswer(r, want, what) {
  assert.equal(r.status, 200, `${what}: ${r.raw.toString().slice(0, 200)}`);
  assert.ok(r.json, `${what}: the body is JSON`);
  assert.equal(r.json.access_token, want, `${what}: the current token`);
  assert.equal(r.headers['content-type'], 'application/json', what);
  assert.equal(r.headers['cache-control'], 'no-store', what);
  assert.equal(Number(r.headers['content-length']), r.raw.length, `${what}: Content-Length`);
}

async function setup(t) {
  let next = tokenOf(40);
  const fp = await startFakeProvider({ expiresIn: 3600 });
  // every token answer hands out `next`: the test sets its length
  fp.respond = (req) => (req.path === '/token'
    ? { status: 200, body: { access_token: next, token_type: 'Bearer', expires_in: 3600, refresh_token: `rt-${++serial}` } }
    : null);
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'answer-sizes-secret' },
    broker: { refresh_margin: '60s', refresh_ratio: '0.1' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  const activate = async (name) => {
    const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
    assert.equal(r.status, 201, r.text);
    assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  };
  // the next refresh of name hands out token
  const refreshTo = async (name, token) => {
    next = token;
    const r = await b.api('POST', `/v1/connections/${name}/refresh`);
    assert.equal(r.status, 200, r.text);
    return token;
  };
  return { fp, b, activate, refreshTo };
}

test('answers of every length around the request buffer, the same length again, lengths changing', { timeout: 180000 }, async (t) => {
  const { b, activate, refreshTo } = await setup(t);
  await activate('c');
  const g = getter(b.socket);
  t.after(() => g.close());

  // How the answer's length follows the token's: measured, not assumed
  // (the token may appear in a usage header too).
  const t1 = await refreshTo('c', tokenOf(100));
  const a1 = await g.get('/v1/connections/c/token');
  checkAnswer(a1, t1, 'token of 100');
  const t2 = await refreshTo('c', tokenOf(200));
  const a2 = await g.get('/v1/connections/c/token');
  checkAnswer(a2, t2, 'token of 200');
  const per = (a2.raw.length - a1.raw.length) / 100;
  assert.ok(per >= 1, `the answer grows with the token (${per} bytes a character)`);
  const base = a1.raw.length - per * 100;

  // Every answer length from SLOT - 12 to SLOT + 12 that a token length
  // gives, each fetched twice (the second reuses the kept response), then
  // a new token of the same length (the same response, new bytes in it).
  const seen = new Set();
  let socket = null;
  for (let len = SLOT - 12; len <= SLOT + 12; len++) {
    if ((len - base) % per !== 0) continue;
    const n = (len - base) / per;
    const tok = await refreshTo('c', tokenOf(n));
    for (let i = 0; i < 2; i++) {
      const r = await g.get('/v1/connections/c/token');
      checkAnswer(r, tok, `answer of ${len} bytes (${i})`);
      assert.equal(r.raw.length, len, 'the answer length predicted');
      seen.add(r.raw.length);
      if (socket) assert.equal(r.socket, socket, 'one kept-alive socket throughout');
      socket = r.socket;
    }
    const again = await refreshTo('c', tokenOf(n, 'b'));
    const r = await g.get('/v1/connections/c/token');
    checkAnswer(r, again, `a new token of the same length, answer of ${len} bytes`);
    assert.notEqual(again, tok);
  }
  assert.ok([...seen].some((l) => l < SLOT) && [...seen].some((l) => l >= SLOT),
    `lengths on both sides of the buffer: ${[...seen].sort((x, y) => x - y).join(', ')}`);

  // Small and very large answers, then two connections of different
  // lengths alternating on the same socket (each request's buffer and
  // kept response reused by the other's answers).
  for (const n of [1, 7, 16, 17, 700, 5000, 60000]) {
    const tok = await refreshTo('c', tokenOf(n));
    checkAnswer(await g.get('/v1/connections/c/token'), tok, `token of ${n}`);
  }
  await activate('d');
  const tc = await refreshTo('c', tokenOf(30));
  const td = await refreshTo('d', tokenOf(900));
  for (let i = 0; i < 20; i++) {
    checkAnswer(await g.get('/v1/connections/c/token'), tc, `c, round ${i}`);
    checkAnswer(await g.get('/v1/connections/d/token'), td, `d, round ${i}`);
  }
  // an error answer between two token answers on the same socket
  const miss = await g.get('/v1/connections/nope/token');
  assert.equal(miss.status, 404);
  assert.equal(miss.json.error, 'not_found');
  checkAnswer(await g.get('/v1/connections/c/token'), tc, 'c after a 404');
});

test('tokens that need escaping, and a rate-limited answer with its Retry-After', { timeout: 60000 }, async (t) => {
  const { b, activate, refreshTo } = await setup(t);
  await activate('e');
  const g = getter(b.socket);
  t.after(() => g.close());

  // every VSCHAR that JSON escapes, at the edges of 16- and 8-byte blocks
  for (const tok of ['"', '\\', `${'x'.repeat(15)}"${'y'.repeat(16)}\\`, `a"b\\c${'z'.repeat(40)}"`, '${access_token}']) {
    await refreshTo('e', tok);
    checkAnswer(await g.get('/v1/connections/e/token'), tok, `token ${JSON.stringify(tok)}`);
  }

  // min_ttl beyond the token's life: a client-driven refresh, then the
  // same again within 5 s is limited: the token there is, with Retry-After
  // (an answer with a header of its own: not the kept response).
  const tok = await refreshTo('e', tokenOf(64));
  const first = await g.get('/v1/connections/e/token?min_ttl=7200');
  assert.equal(first.status, 200, first.raw.toString());
  const current = first.json.access_token;
  assert.notEqual(current, undefined);
  const limited = await g.get('/v1/connections/e/token?min_ttl=7200');
  checkAnswer(limited, current, 'the limited answer');
  assert.ok(Number(limited.headers['retry-after']) >= 1, `Retry-After ${limited.headers['retry-after']}`);
  assert.ok(limited.json.refresh_retry_after >= 1, 'refresh_retry_after in the body');
  // and the plain answer after it has no Retry-After
  const plain = await g.get('/v1/connections/e/token');
  checkAnswer(plain, current, 'the plain answer after it');
  assert.equal(plain.headers['retry-after'], undefined);
  assert.equal(plain.json.refresh_retry_after, undefined);
  assert.ok(typeof tok === 'string');
});
