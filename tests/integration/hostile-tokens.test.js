'use strict';
/*
 * Issue 11, finding 9: a provider answering a refresh with control
 * characters in what goes into a header (a CR LF in the access token that
 * would inject a header line, ESC, NUL, DEL, a non-ASCII byte, a CR LF in
 * the token type or the refresh token). Each is refused like any malformed
 * answer: a clear logged error, a refresh-failed event, the old token kept
 * and still served, the refresh token kept; `tokenctl header` never prints
 * a control character or a second header line.
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, waitFor, httpGet, iniProvider } = require('../lib/broker.js');

const TOKEN_CTL = /token response has a token with control or non-ASCII characters/;
const TYPE_CTL = /token response has a token_type or scope with control or non-ASCII characters/;
const CASES = [
  { name: 'CR LF in the access token', body: { access_token: 'at-crlf\r\nX-Injected: evil', token_type: 'Bearer', expires_in: 3600 }, log: TOKEN_CTL },
  { name: 'LF in the access token', body: { access_token: 'at-lf\nX-Injected: evil', expires_in: 3600 }, log: TOKEN_CTL },
  { name: 'ESC in the access token', body: { access_token: 'at-esc\u001b[2J', expires_in: 3600 }, log: TOKEN_CTL },
  { name: 'NUL in the access token', body: { access_token: 'at-nul\u0000tail', expires_in: 3600 }, log: /token response|invalid token response/ },
  { name: 'DEL in the access token', body: { access_token: 'at-del\u007f', expires_in: 3600 }, log: TOKEN_CTL },
  { name: 'non-ASCII in the access token', body: { access_token: 'at-\u00e9t\u00e9', expires_in: 3600 }, log: TOKEN_CTL },
  { name: 'CR LF in the refresh token', body: { access_token: 'at-good-1', refresh_token: 'rt\r\nX-Injected: evil', expires_in: 3600 }, log: TOKEN_CTL },
  { name: 'CR LF in the token type', body: { access_token: 'at-good-2', token_type: 'Bearer\r\nX-Injected: evil', expires_in: 3600 }, log: TYPE_CTL },
  { name: 'space in the token type', body: { access_token: 'at-good-3', token_type: 'Bearer X-Injected:', expires_in: 3600 }, log: TYPE_CTL },
];

test('hostile tokens: control characters refused like a malformed answer; tokenctl header prints one clean line', { timeout: 180000 }, async (t) => {
  let bad = null;
  const fp = await startFakeProvider({ respond: (rec) => (rec.path === '/token' && rec.params.grant_type === 'refresh_token' && bad ? bad : null) });
  const b = await Broker.start({
    providers: { p: iniProvider({ ...fp.providerConf(), timeout: '20s' }) },
    secrets: { 'fake.secret': 's3cret-hostile' },
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

  const checkHeader = async (what) => {
    const h = await b.ctl(['header', 'c']);
    assert.equal(h.code, 0, `${what}: ${h.stderr}`);
    assert.doesNotMatch(h.stdout, /[\u0000-\u0009\u000b-\u001f\u007f]/, `${what}: a control character printed`);
    assert.doesNotMatch(h.stdout, /Injected/i, `${what}: an injected header line printed`);
    assert.equal(h.stdout.trimEnd().split('\n').length, 1, `${what}: ${JSON.stringify(h.stdout.replace(/Bearer \S+/, 'Bearer ...'))}`);
  };

  for (const c of CASES) {
    const before = (await b.api('GET', '/v1/connections/c/token')).json;
    const rt = fp.issued[fp.issued.length - 1].refresh_token;
    const events = b.sql("SELECT count(*) AS n FROM events WHERE connection = 'c' AND kind = 'refresh-failed'")[0].n;
    bad = { body: JSON.stringify(c.body), headers: { 'content-type': 'application/json' } };
    const res = await b.ctl(['refresh', 'c']);
    assert.equal(res.code, 8, `${c.name}: ${res.stderr}`);
    assert.match(res.stderr, c.log, c.name);
    await waitFor(() => c.log.test(b.log()), { what: `${c.name} in the log` });
    // events are written by the store's writer thread, after the answer
    const failedEvents = () => b.sql("SELECT message FROM events WHERE connection = 'c' AND kind = 'refresh-failed' ORDER BY id DESC");
    await waitFor(() => failedEvents().length >= events + 1, { what: `${c.name}: the refresh-failed event` });
    assert.equal(failedEvents().length, events + 1, c.name);
    const tok = await b.api('GET', '/v1/connections/c/token');
    assert.equal(tok.status, 200, c.name);
    assert.equal(tok.json.access_token, before.access_token, `${c.name}: the old token was not kept`);
    assert.equal(tok.json.token_type, 'Bearer', c.name);
    await checkHeader(c.name);
    // nothing lost: a good answer refreshes with the same refresh token
    bad = null;
    assert.equal((await b.ctl(['refresh', 'c'])).code, 0, c.name);
    const last = fp.requests.filter((q) => q.path === '/token').pop();
    assert.equal(last.params.refresh_token, rt, `${c.name}: the refresh token was lost`);
  }
  assert.doesNotMatch(b.log(), /Injected/, 'a hostile value reached the log');
});
