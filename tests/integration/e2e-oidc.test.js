'use strict';
/*
 * End to end against a real authorization server (npm oidc-provider, PKCE
 * required, refresh tokens rotated on every use, access tokens living a
 * few seconds) and a real browser (Debian's chromium via playwright-core):
 *
 *   tokenctl authorize -> chromium logs in and consents -> active with the
 *   right identity -> the token introspects as active -> the broker
 *   refreshes ahead of expiry on its own, each time with the newest
 *   refresh token -> SIGKILL + restart -> still active, still refreshing.
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { startOidc } = require('../lib/oidc-server.js');
const { authorizeInBrowser } = require('../lib/browser.js');
const { Broker, waitFor, oidcProviderConf } = require('../lib/broker.js');

const TTL = 6;   // access token lifetime at the provider, seconds

test('authorize in a browser, refresh with rotation, survive SIGKILL', { timeout: 180000 }, async (t) => {
  const b = await Broker.prepare();
  const op = await startOidc({ accessTokenTtl: TTL, redirectUris: b.redirectUrisFor('local'), quiet: true });
  t.after(async () => {
    const st = await b.stop();
    await op.close();
    // A clean SIGTERM shutdown exits 0 (and, under ASan, leaks nothing).
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });

  b.opts = {
    providers: { local: oidcProviderConf(op) },
    secrets: { 'local.secret': op.clientSecret },
  };
  b.writeConfig();
  await b.launch();

  // 1. tokenctl authorize prints the URL and waits.
  const auth = b.ctlAsync(['authorize', 'alice', '--provider', 'local', '--timeout', '60']);
  const url = await waitFor(() => (auth.stdout.match(/https?:\/\/\S+\/auth\?\S+/) || [])[0],
    { timeoutMs: 10000, what: 'the authorization URL' });
  assert.match(url, /code_challenge_method=S256/);
  assert.match(url, /[?&]state=[A-Za-z0-9_-]{43}(&|$)/);

  // 2. A headless chromium logs in and consents.
  const page = await authorizeInBrowser(url, { login: 'alice' });
  assert.equal(page.status, 200, page.text);
  assert.match(page.text, /Connection 'alice' is active, authorized by alice@example\.com/);

  const done = await auth.done;
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /alice: active, authorized by alice@example\.com/);

  // 3. Active, with the identity from the id_token, and no secrets shown.
  const show = await b.ctl(['--json', 'show', 'alice']);
  assert.equal(show.code, 0, show.stderr);
  const conn = JSON.parse(show.stdout);
  assert.equal(conn.state, 'active');
  assert.equal(conn.identity, 'alice@example.com');
  assert.equal(conn.has_refresh_token, true);
  assert.equal(conn.access_token, undefined);
  assert.equal(conn.refresh_token, undefined);

  // 4. The token handed out is one the provider says is active.
  const tok = await b.ctl(['token', 'alice']);
  assert.equal(tok.code, 0, tok.stderr);
  const first = tok.stdout.trim();
  assert.ok(first.length > 20);
  const intro = await op.introspect(first);
  assert.equal(intro.active, true);
  assert.equal(intro.sub, 'alice');

  // 5. With no client asking, the broker refreshes before expiry, several
  // times, each with the refresh token the provider issued last.
  const codeGrants = op.tokenRequests.filter((r) => r.grant_type === 'authorization_code');
  assert.equal(codeGrants.length, 1);
  assert.equal(codeGrants[0].ok, true);
  const before = op.refreshRequests().length;
  await waitFor(() => op.refreshRequests().length >= before + 3, { timeoutMs: 40000, what: '3 refreshes' });
  const refreshes = op.refreshRequests();
  for (const r of refreshes) {
    assert.equal(r.ok, true, `refresh failed: ${JSON.stringify(r)}`);
    assert.equal(r.refresh_token_was_current, true, 'the broker presented a rotated-out refresh token');
    assert.equal(r.client_auth, 'client_secret_basic');
  }
  // Each refresh happened before the previous access token expired.
  const times = [codeGrants[0], ...refreshes].map((r) => r.time);
  for (let i = 1; i < times.length; i++) {
    const gap = (times[i] - times[i - 1]) / 1000;
    assert.ok(gap < TTL, `refresh ${i} came ${gap}s after the previous token was issued (ttl ${TTL}s)`);
  }
  const current = (await b.ctl(['token', 'alice'])).stdout.trim();
  assert.notEqual(current, first, 'the token handed out did not change after refreshes');
  assert.equal((await op.introspect(current)).active, true);

  // 6. SIGKILL, restart on the same state: still active, still refreshing.
  await b.restart();
  const after = JSON.parse((await b.ctl(['--json', 'show', 'alice'])).stdout);
  assert.equal(after.state, 'active');
  assert.equal(after.identity, 'alice@example.com');
  const n = op.refreshRequests().length;
  await waitFor(() => op.refreshRequests().length >= n + 2, { timeoutMs: 30000, what: '2 refreshes after restart' });
  for (const r of op.refreshRequests()) {
    assert.equal(r.ok, true);
    assert.equal(r.refresh_token_was_current, true);
  }
  const tok2 = await b.ctl(['token', 'alice']);
  assert.equal(tok2.code, 0, tok2.stderr);
  assert.equal((await op.introspect(tok2.stdout.trim())).active, true);
  const grant = [...op.grants.values()][0];
  assert.equal(grant.revoked, false);

  // The daemon's log never held a token.
  const log = b.log();
  for (const secret of [first, current, tok2.stdout.trim(), op.clientSecret]) {
    assert.equal(log.includes(secret), false, 'a secret reached the daemon log');
  }
});
