'use strict';
/*
 * The socket API, revocation and the callback's refusals, against the real
 * oidc-provider:
 *  - curl --unix-socket and tokenctl token hand out the same valid token;
 *  - revoke revokes at the provider (RFC 7009) and removes the connection;
 *  - a bad state, a reused state and a provider error on the callback each
 *    leave the SQLite store unchanged and show an error page.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');

const { startOidc } = require('../lib/oidc-server.js');
const { authorizeInBrowser } = require('../lib/browser.js');
const { Broker, waitFor, httpGet, oidcProviderConf } = require('../lib/broker.js');

async function setup(t) {
  const b = await Broker.prepare();
  const op = await startOidc({ accessTokenTtl: 60, redirectUris: b.redirectUrisFor('local'), quiet: true });
  t.after(async () => {
    const st = await b.stop();
    await op.close();
    // A clean SIGTERM shutdown exits 0 (and, under ASan, leaks nothing).
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  b.opts = { providers: { local: oidcProviderConf(op) }, secrets: { 'local.secret': op.clientSecret } };
  b.writeConfig();
  await b.launch();
  return { b, op };
}

async function authorize(b, name, browserOpts = {}) {
  const r = await b.ctl(['--json', 'authorize', name, '--provider', 'local', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const url = JSON.parse(r.stdout).authorize_url;
  const page = await authorizeInBrowser(url, browserOpts);
  return { url, page };
}

test('curl and tokenctl hand out the same valid token; revoke revokes at the provider', { timeout: 120000 }, async (t) => {
  const { b, op } = await setup(t);
  const { page } = await authorize(b, 'alice', { login: 'alice' });
  assert.equal(page.status, 200, page.text);

  const curl = spawnSync('curl', ['-sS', '--unix-socket', b.socket, 'http://localhost/v1/connections/alice/token'], { encoding: 'utf8' });
  assert.equal(curl.status, 0, curl.stderr);
  const body = JSON.parse(curl.stdout);
  const ctl = await b.ctl(['token', 'alice']);
  assert.equal(ctl.code, 0, ctl.stderr);
  assert.equal(ctl.stdout.trim(), body.access_token);
  assert.equal(body.token_type, 'Bearer');
  assert.ok(body.expires_in > 30 && body.expires_in <= 60, `expires_in ${body.expires_in}`);
  assert.match(body.expires_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.deepEqual(body.headers, { Authorization: `Bearer ${body.access_token}` });
  assert.equal(body.refresh_token, undefined, 'a refresh token left the daemon');
  assert.equal((await op.introspect(body.access_token)).active, true);

  const hdr = await b.ctl(['header', 'alice']);
  assert.equal(hdr.stdout, `Authorization: Bearer ${body.access_token}\n`);

  // min_ttl beyond the token's life forces a refresh first.
  const n = op.refreshRequests().length;
  const fresh = await b.ctl(['token', 'alice', '--min-ttl', '3000']);
  assert.equal(fresh.code, 0, fresh.stderr);
  assert.equal(op.refreshRequests().length, n + 1);
  assert.notEqual(fresh.stdout.trim(), body.access_token);

  // Revoke: at the provider first, then gone here.
  const rev = await b.ctl(['revoke', 'alice']);
  assert.equal(rev.code, 0, rev.stderr);
  assert.match(rev.stdout, /revoked at the provider/);
  assert.equal((await op.introspect(fresh.stdout.trim())).active, false);
  assert.ok(op.events.some((e) => e.type === 'grant.revoked' || e.type.endsWith('.destroyed')), 'no revocation seen at the provider');
  const gone = await b.ctl(['show', 'alice']);
  assert.equal(gone.code, 4, 'show of a revoked connection must exit 4 (unknown connection)');
  assert.equal(b.sql("SELECT count(*) AS n FROM connections WHERE name = 'alice'")[0].n, 0);
  await waitFor(() => b.sql("SELECT kind FROM events WHERE connection = 'alice'").some((e) => e.kind === 'revoked'), { what: 'the revoked event' });
});

test('bad state, reused state and provider errors leave the store unchanged', { timeout: 120000 }, async (t) => {
  const { b } = await setup(t);
  const { page } = await authorize(b, 'bob', { login: 'bob' });
  assert.equal(page.status, 200, page.text);
  const callbackUrl = page.finalUrl;
  assert.match(callbackUrl, /\/oauth\/callback\/local\?/);   // the provider's own redirect URI

  // A pending authorization to aim at.
  const pend = JSON.parse((await b.ctl(['--json', 'authorize', 'carol', '--provider', 'local', '--no-wait'])).stdout);
  const state = new URL(pend.authorize_url).searchParams.get('state');
  const before = b.dumpStore();
  assert.match(before, /\|carol\|local\|pending\|/);

  // Bad state.
  let r = await httpGet(`${b.publicUrl}/oauth/callback?state=not-a-state&code=abc`);
  assert.equal(r.status, 400);
  assert.match(r.text, /Unknown or expired authorization request/);
  assert.equal(b.dumpStore(), before);

  // Reused state: the callback the browser already completed for bob.
  r = await httpGet(callbackUrl);
  assert.equal(r.status, 400);
  assert.match(r.text, /Unknown or expired/);
  assert.equal(b.dumpStore(), before);

  // The provider reports an error for carol's state; the page escapes it.
  r = await httpGet(`${b.redirectUriFor('local')}?state=${state}&error=access_denied&error_description=${encodeURIComponent('<script>alert(1)</script>')}`);
  assert.equal(r.status, 400);
  assert.match(r.text, /access_denied/);
  assert.ok(!r.text.includes('<script>'), 'an echoed value was not escaped');
  assert.match(r.text, /&lt;script&gt;/);
  assert.equal(b.dumpStore(), before);

  // No state at all, an unknown route, a wrong method.
  assert.equal((await httpGet(`${b.publicUrl}/oauth/callback?code=x`)).status, 400);
  assert.equal((await httpGet(`${b.publicUrl}/other`)).status, 404);
  assert.equal((await httpGet(`${b.publicUrl}/healthz`)).status, 200);
  assert.equal(b.dumpStore(), before);

  // The refused consent in a real browser ends on an error page too.
  const pend2 = JSON.parse((await b.ctl(['--json', 'authorize', 'dave', '--provider', 'local', '--no-wait'])).stdout);
  const mid = b.dumpStore();
  const refused = await authorizeInBrowser(pend2.authorize_url, { login: 'dave', consent: false }).catch((e) => e);
  const text = refused.text ?? '';
  assert.match(text, /access_denied|Authorization failed/);
  assert.equal(b.dumpStore(), mid);
  const dave = JSON.parse((await b.ctl(['--json', 'show', 'dave'])).stdout);
  assert.equal(dave.state, 'pending');
});

test('API errors: 404, 400, 405, and pending connections answer 409', { timeout: 120000 }, async (t) => {
  const { b } = await setup(t);
  let r = await b.api('GET', '/v1/connections/nope/token');
  assert.equal(r.status, 404);
  assert.equal(r.json.error, 'not_found');
  r = await b.api('POST', '/v1/connections', { name: 'bad name!', provider: 'local' });
  assert.equal(r.status, 400);
  r = await b.api('POST', '/v1/connections', { name: 'x', provider: 'no-such-provider' });
  assert.equal(r.status, 404);
  r = await b.api('PUT', '/v1/connections');
  assert.equal(r.status, 405);
  r = await b.api('POST', '/v1/connections', { name: 'erin', provider: 'local' });
  assert.equal(r.status, 201);
  assert.equal(r.json.state, 'pending');
  r = await b.api('GET', '/v1/connections/erin/token');
  assert.equal(r.status, 409);
  assert.equal(r.json.error, 'authorization_pending');
  const tok = await b.ctl(['token', 'erin']);
  assert.equal(tok.code, 6);
  assert.equal((await b.ctl(['token', 'nobody'])).code, 4);
  assert.equal((await b.ctl(['frobnicate'])).code, 2);
  assert.equal((await b.ctl(['--socket', '/nonexistent/sock', 'list'])).code, 3);
  r = await b.api('GET', '/v1/providers');
  assert.equal(r.status, 200);
  assert.equal(r.json.providers[0].name, 'local');
  assert.equal(JSON.stringify(r.json).includes(b.opts.secrets['local.secret']), false);
});
