'use strict';
/*
 * Fault injection with the fake provider: each failure ends in the state
 * the contract says, retries come with exponential backoff within bounds
 * (Retry-After honoured), and the old token is served while it is valid.
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { Broker, followAuthorize, waitFor, sleep, iniProvider, freePort } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

async function activate(b, name) {
  const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
  assert.ok(r.status === 201 || r.status === 200, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
}

async function setup(t, { expiresIn = 3600, provider = {}, broker = {} } = {}) {
  const fp = await startFakeProvider({ expiresIn });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf(provider)) },
    secrets: { 'fake.secret': 'failures-test-secret' },
    broker: { refresh_margin: '1s', refresh_ratio: '0.1', refresh_jitter: '0s', ...broker },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  return { fp, b };
}

const tokenRequests = (fp, since = 0) => fp.requests.filter((r) => r.path === '/token' && r.params.grant_type === 'refresh_token' && r.time >= since);

test('503 burst: backoff within bounds, old token served, then recovery', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t);
  await activate(b, 'c');
  const old = (await b.api('GET', '/v1/connections/c/token')).json.access_token;
  let failures = 3;
  fp.respond = (req) => (req.path === '/token' && failures-- > 0 ? { status: 503, body: { error: 'temporarily_unavailable' } } : null);

  const t0 = Date.now();
  const r = await b.api('POST', '/v1/connections/c/refresh');
  assert.equal(r.status, 503);
  assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After ${r.headers['retry-after']}`);
  // While the provider fails, the still-valid token keeps being served.
  const during = await b.api('GET', '/v1/connections/c/token');
  assert.equal(during.status, 200);
  assert.equal(during.json.access_token, old);

  await waitFor(() => tokenRequests(fp, t0).length >= 4, { timeoutMs: 30000, what: '3 retries and a success' });
  const times = tokenRequests(fp, t0).map((x) => x.time);
  // attempt k (k = 1, 2, 3 failures so far) waits 1 s + U(0, min(5 min, 2^k s))
  for (let k = 1; k < 4; k++) {
    const gap = (times[k] - times[k - 1]) / 1000;
    assert.ok(gap >= 0.9 && gap <= 1 + 2 ** k + 0.6, `retry ${k} after ${gap.toFixed(2)} s`);
  }
  await waitFor(async () => (await b.api('GET', '/v1/connections/c')).json.last_error == null, { timeoutMs: 5000, what: 'recovery' });
  const after = await b.api('GET', '/v1/connections/c/token');
  assert.notEqual(after.json.access_token, old);
  const eventKinds = () => b.sql("SELECT kind FROM events WHERE connection = 'c' ORDER BY id").map((e) => e.kind);
  await waitFor(() => eventKinds().includes('recovered'), { what: 'the recovered event' });
  const kinds = eventKinds();
  assert.deepEqual(kinds.filter((k) => k === 'refresh-failed').length, 3);
  assert.ok(kinds.includes('recovered'), kinds.join(','));
});

test('429 with Retry-After is honoured', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t);
  await activate(b, 'c');
  let once = true;
  fp.respond = (req) => {
    if (req.path !== '/token' || !once) return null;
    once = false;
    return { status: 429, headers: { 'retry-after': '4' }, body: { error: 'slow_down' } };
  };
  const t0 = Date.now();
  assert.equal((await b.api('POST', '/v1/connections/c/refresh')).status, 503);
  await waitFor(() => tokenRequests(fp, t0).length >= 2, { timeoutMs: 15000, what: 'the retry' });
  const [a, c] = tokenRequests(fp, t0).map((x) => x.time);
  const gap = (c - a) / 1000;
  assert.ok(gap >= 3.9 && gap <= 5.5, `retry after ${gap.toFixed(2)} s, Retry-After was 4`);
});

test('invalid_grant: needs_reauth, 409 for clients, an event, no retries', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t);
  await activate(b, 'c');
  fp.respond = (req) => (req.path === '/token' ? { status: 400, body: { error: 'invalid_grant', error_description: 'Token has been expired or revoked.' } } : null);
  const t0 = Date.now();
  const r = await b.api('POST', '/v1/connections/c/refresh');
  assert.equal(r.status, 409);
  assert.equal(r.json.error, 'needs_reauth');
  const tok = await b.api('GET', '/v1/connections/c/token');
  assert.equal(tok.status, 409);
  assert.equal(tok.json.error, 'needs_reauth');
  assert.equal((await b.ctl(['token', 'c'])).code, 5);
  const show = (await b.api('GET', '/v1/connections/c')).json;
  assert.equal(show.state, 'needs_reauth');
  assert.match(show.last_error, /invalid_grant/);
  await waitFor(() => b.sql("SELECT kind FROM events WHERE connection = 'c'").some((e) => e.kind === 'needs-reauth'), { what: 'the needs-reauth event' });
  await sleep(3000);
  assert.equal(tokenRequests(fp, t0).length, 1, 'a dead grant must not be retried');
  // Re-authorizing in place brings it back.
  fp.respond = null;
  await activate(b, 'c');
  assert.equal((await b.api('GET', '/v1/connections/c')).json.state, 'active');
});

test('timeouts and slow answers: a slow answer within the timeout works, a slower one is transient', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, { provider: { timeout: '2s' } });
  await activate(b, 'c');
  fp.respond = async (req) => {
    if (req.path !== '/token') return null;
    await sleep(800);
    return null;   // then answer normally
  };
  let r = await b.api('POST', '/v1/connections/c/refresh');
  assert.equal(r.status, 200, r.text);
  const good = (await b.api('GET', '/v1/connections/c/token')).json.access_token;
  fp.respond = async (req) => (req.path === '/token' ? { delayMs: 5000, status: 200, body: { access_token: 'late', expires_in: 60 } } : null);
  const t0 = Date.now();
  r = await b.api('POST', '/v1/connections/c/refresh');
  const took = (Date.now() - t0) / 1000;
  assert.equal(r.status, 503, r.text);
  assert.ok(took >= 1.8 && took < 4.5, `gave up after ${took} s with a 2 s timeout`);
  assert.match((await b.api('GET', '/v1/connections/c')).json.last_error, /[Tt]imeout/);
  assert.equal((await b.api('GET', '/v1/connections/c/token')).json.access_token, good);
  fp.respond = null;
});

test('connection refused and an expired token: 503 with Retry-After, still active', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, { expiresIn: 3 });
  await activate(b, 'c');
  // The provider goes away entirely.
  await fp.close();
  await sleep(3500);   // the token expires; refreshes fail with ECONNREFUSED
  const r = await b.api('GET', '/v1/connections/c/token');
  assert.equal(r.status, 503, r.text);
  assert.equal(r.json.error, 'temporarily_unavailable');
  assert.ok(Number(r.headers['retry-after']) >= 1);
  assert.equal((await b.ctl(['token', 'c'])).code, 8);
  assert.equal((await b.api('GET', '/v1/connections/c')).json.state, 'active', 'a transient failure must not need re-authorization');
});

test('wait= on a pending connection returns the token once authorized, or 409 at the deadline', { timeout: 120000 }, async (t) => {
  const { b } = await setup(t);
  const r = await b.api('POST', '/v1/connections', { name: 'p', provider: 'fake' });
  assert.equal(r.status, 201);
  let t0 = Date.now();
  const short = await b.api('GET', '/v1/connections/p/token?wait=1');
  const took = (Date.now() - t0) / 1000;
  assert.equal(short.status, 409);
  assert.ok(took >= 0.9 && took < 3, `wait=1 answered after ${took} s`);

  t0 = Date.now();
  const waiting = b.api('GET', '/v1/connections/p/token?wait=20');
  await sleep(1000);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  const got = await waiting;
  assert.equal(got.status, 200, got.text);
  assert.ok(got.json.access_token.startsWith('at-'));
  assert.ok((Date.now() - t0) / 1000 < 10);
  assert.equal((await b.api('GET', '/v1/connections/p/token?wait=999')).status, 400);
});
