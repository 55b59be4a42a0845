'use strict';
/*
 * Bad provider answers to a refresh: non-JSON, an HTML error page, no
 * access token, negative and absurd expires_in, a 1 GiB body (the read is
 * bounded), a truncated JWT. Each gives a clear logged error and a
 * refresh-failed event, the previous token keeps being served, the
 * refresh token is kept (nothing lost: the next good answer refreshes
 * with it).
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, waitFor, httpGet, iniProvider } = require('../lib/broker.js');

const CASES = [
  { name: 'non-JSON', answer: { body: 'access_token=abc&token_type=bearer' }, log: /token response is not a JSON object/ },
  { name: 'HTML error page', answer: { status: 200, headers: { 'content-type': 'text/html' }, body: '<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>' }, log: /not JSON \(an HTML page\?\)/ },
  { name: 'HTML 502 page', answer: { status: 502, headers: { 'content-type': 'text/html' }, body: '<html><body>Bad Gateway</body></html>' }, log: /HTTP 502/ },
  { name: 'missing access token', answer: { body: { token_type: 'Bearer', expires_in: 3600 } }, log: /no access_token/ },
  { name: 'negative expires_in', answer: { body: { access_token: 'at-neg', expires_in: -3600 } }, log: /invalid expires_in/ },
  { name: 'absurd expires_in', answer: { body: { access_token: 'at-big', expires_in: '99999999999' } }, log: /invalid expires_in/ },
  { name: '1 GiB body', answer: { streamBytes: 1024 * 1024 * 1024 }, log: /response larger than 1 MiB/ },
  { name: 'truncated JWT', answer: { body: { access_token: 'eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3', refresh_token: 'rt-x' } }, log: /looks like a JWT but does not decode/ },
];

test('bad provider answers: logged, an event, the old token kept, nothing lost', { timeout: 120000 }, async (t) => {
  let bad = null;
  const fp = await startFakeProvider({ respond: (rec) => (rec.path === '/token' && rec.params.grant_type === 'refresh_token' && bad ? bad : null) });
  const b = await Broker.start({
    providers: { p: iniProvider({ ...fp.providerConf(), timeout: '20s' }) },
    secrets: { 'fake.secret': 's3cret' },
    broker: { backoff_max: '1h' },
  });
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  const r = await b.ctl(['--json', 'authorize', 'c', '--provider', 'p', '--no-wait']);
  const redirect = await httpGet(JSON.parse(r.stdout).authorize_url);
  assert.equal((await httpGet(redirect.headers.location)).status, 200);
  await waitFor(async () => (await b.api('GET', '/v1/connections/c')).json.state === 'active', { what: 'active' });

  for (const c of CASES) {
    const before = (await b.api('GET', '/v1/connections/c/token')).json;
    const rt = fp.issued[fp.issued.length - 1].refresh_token;
    const events = b.sql("SELECT count(*) AS n FROM events WHERE connection = 'c' AND kind = 'refresh-failed'")[0].n;
    bad = c.answer;
    const started = Date.now();
    const res = await b.ctl(['refresh', 'c']);
    assert.equal(res.code, 8, `${c.name}: ${res.stderr}`);
    assert.match(res.stderr, c.log, c.name);
    assert.ok(Date.now() - started < 20000, `${c.name}: took ${Date.now() - started} ms`);
    // logged, an event, the old token still served, the connection active
    await waitFor(() => c.log.test(b.log()), { what: `${c.name} in the log` });
    // events are written by the store's writer thread, after the answer
    const failedEvents = () => b.sql("SELECT message FROM events WHERE connection = 'c' AND kind = 'refresh-failed' ORDER BY id DESC");
    await waitFor(() => failedEvents().length >= events + 1, { what: `${c.name}: the refresh-failed event` });
    const ev = failedEvents();
    assert.equal(ev.length, events + 1, c.name);
    assert.match(ev[0].message, c.log);
    const tok = await b.api('GET', '/v1/connections/c/token');
    assert.equal(tok.status, 200, c.name);
    assert.equal(tok.json.access_token, before.access_token, c.name);
    const show = (await b.api('GET', '/v1/connections/c')).json;
    assert.equal(show.state, 'active', c.name);
    assert.equal(show.has_refresh_token, true, c.name);
    // nothing lost: the next refresh (ours, or the daemon's own retry when
    // its backoff ran out first on a slow machine) presents the same
    // refresh token and succeeds
    const mark = fp.requests.length;
    bad = null;
    assert.equal((await b.ctl(['refresh', 'c'])).code, 0, c.name);
    const next = fp.requests.slice(mark).find((q) => q.path === '/token');
    assert.ok(next, `${c.name}: no refresh after the bad answer`);
    assert.equal(next.params.refresh_token, rt, `${c.name}: the refresh token was lost`);
    assert.notEqual((await b.api('GET', '/v1/connections/c/token')).json.access_token, before.access_token);
  }
  assert.ok(!b.log().includes('at-neg') && !b.log().includes('rt-x'), 'a token reached the log');
});
