'use strict';
/*
 * Every grant against a real authorization server (npm oidc-provider 9.x):
 *  - client_credentials: no browser; the grant runs again ahead of expiry;
 *  - device_code (RFC 8628): tokenctl authorize --device prints the user
 *    code, a headless chromium approves it at the verification URI, the
 *    daemon's polling picks the tokens up; then refreshes;
 *  - discovery by issuer: a provider file with only `issuer` finds every
 *    endpoint, and tokenctl revoke revokes at the discovered RFC 7009
 *    endpoint (introspection says inactive);
 *  - the code flow with client authentication by HTTP Basic and in the
 *    body (oidc-provider refuses the other method for each client).
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { startOidc } = require('../lib/oidc-server.js');
const { authorizeInBrowser, approveDeviceInBrowser } = require('../lib/browser.js');
const { Broker, waitFor, iniProvider, oidcProviderConf, noteRun } = require('../lib/broker.js');

async function setup(t, providers, oidcOpts = {}) {
  const b = await Broker.prepare();
  const op = await startOidc({ accessTokenTtl: 30, redirectUris: b.redirectUrisFor('local', 'basic', 'post', 'wrong', 'disc', 'cc'), quiet: true, ...oidcOpts });
  t.after(async () => {
    const st = await b.stop();
    await op.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  b.opts = { providers: providers(op), secrets: { 'local.secret': op.clientSecret } };
  b.writeConfig();
  await b.launch();
  return { b, op };
}

test('client_credentials against oidc-provider: granted, re-run ahead of expiry, introspects active', { timeout: 120000 }, async (t) => {
  const { b, op } = await setup(t, (op) => ({
    cc: iniProvider({ grant: 'client_credentials', token_url: op.endpoints.token, client_id: 'tokenbroker', client_secret_file: 'local.secret', scopes: 'api:read' }),
  }), { accessTokenTtl: 6 });
  const r = await b.ctl(['authorize', 'svc', '--provider', 'cc', '--timeout', '20']);
  assert.equal(r.code, 0, r.stderr);
  const first = (await b.ctl(['token', 'svc'])).stdout.trim();
  assert.equal((await op.introspect(first)).active, true);
  await waitFor(() => op.tokenRequests.filter((q) => q.grant_type === 'client_credentials').length >= 3,
    { timeoutMs: 25000, what: 'two re-runs of the grant' });
  const now = (await b.ctl(['token', 'svc'])).stdout.trim();
  assert.notEqual(now, first);
  assert.equal((await op.introspect(now)).active, true);
  const show = JSON.parse((await b.ctl(['--json', 'show', 'svc'])).stdout);
  assert.equal(show.state, 'active');
  assert.equal(show.has_refresh_token, false);
});

test('device code against oidc-provider: user code approved in a headless browser, then refreshes', { timeout: 180000 }, async (t) => {
  const { b, op } = await setup(t, (op) => ({
    local: oidcProviderConf(op, { device_authorization_url: op.endpoints.device_authorization, authorize_params: undefined }),
  }));
  const auth = b.ctlAsync(['authorize', 'tv', '--provider', 'local', '--device', '--timeout', '90']);
  const code = await waitFor(() => (auth.stdout.match(/enter the code\s+(\S+)/) || [])[1], { timeoutMs: 15000, what: 'the user code' });
  const uri = (auth.stdout.match(/open\s+(http\S+)/) || [])[1];
  assert.ok(uri, auth.stdout);
  const show = JSON.parse((await b.ctl(['--json', 'show', 'tv'])).stdout);
  assert.equal(show.state, 'pending');
  assert.equal(show.user_code, code);
  const page = await approveDeviceInBrowser({ uri, userCode: code }, { login: 'dora' });
  assert.ok(page.text.length > 0);
  const done = await auth.done;
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /tv: active, authorized by dora@example\.com/);
  const tok = (await b.ctl(['token', 'tv'])).stdout.trim();
  assert.equal((await op.introspect(tok)).active, true);
  for (let i = 0; i < 2; i++) assert.equal((await b.ctl(['refresh', 'tv'])).code, 0);
  assert.equal(op.refreshRequests().length, 2);
  const now = (await b.ctl(['token', 'tv'])).stdout.trim();
  assert.equal((await op.introspect(now)).active, true);
  const polls = op.tokenRequests.filter((q) => q.grant_type === 'urn:ietf:params:oauth:grant-type:device_code');
  assert.ok(polls.length >= 1);
});

test('discovery by issuer fills every endpoint; revoke uses the discovered RFC 7009 endpoint', { timeout: 150000 }, async (t) => {
  const { b, op } = await setup(t, (op) => ({
    disc: iniProvider({ issuer: op.issuer, client_id: 'tokenbroker', client_secret_file: 'local.secret', scopes: 'openid email offline_access', authorize_params: 'prompt=consent' }),
  }));
  const provs = JSON.parse((await b.ctl(['--json', 'providers'])).stdout);
  const p = provs.find((x) => x.name === 'disc');
  assert.equal(p.token_url, op.endpoints.token);
  assert.equal(p.authorize_url, op.endpoints.authorization);
  assert.equal(p.revoke_url, op.endpoints.revocation);
  assert.equal(p.device_authorization_url, op.endpoints.device_authorization);
  assert.equal(p.userinfo_url, op.endpoints.userinfo);
  const r = await b.ctl(['--json', 'authorize', 'd', '--provider', 'disc', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const page = await authorizeInBrowser(JSON.parse(r.stdout).authorize_url, { login: 'disco' });
  assert.equal(page.status, 200, page.text);
  await waitFor(async () => JSON.parse((await b.ctl(['--json', 'show', 'd'])).stdout).state === 'active', { what: 'active' });
  const show = JSON.parse((await b.ctl(['--json', 'show', 'd'])).stdout);
  assert.equal(show.identity, 'disco@example.com');
  for (let i = 0; i < 2; i++) assert.equal((await b.ctl(['refresh', 'd'])).code, 0);
  const tok = (await b.ctl(['token', 'd'])).stdout.trim();
  assert.equal((await op.introspect(tok)).active, true);
  const rev = await b.ctl(['revoke', 'd']);
  assert.equal(rev.code, 0, rev.stderr);
  assert.match(rev.stdout, /revoked at the provider/);
  assert.equal((await op.introspect(tok)).active, false);

  // --check-config works with the issuer reachable (asynchronously: the
  // authorization server answers from this very process).
  const { spawn } = require('node:child_process');
  const path = require('node:path');
  const chk = await new Promise((resolve) => {
    const p = spawn(path.join(require('../lib/broker.js').BUILD, 'tokenbrokerd'), ['--check-config', '-c', b.confPath]);
    const o = { stdout: '', stderr: '' };
    p.stdout.on('data', (d) => { o.stdout += d; });
    p.stderr.on('data', (d) => { o.stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 30000);
    p.on('close', (status, signal) => { clearTimeout(timer); resolve({ ...o, status, signal }); });
  });
  noteRun('check-config-discovery', chk.stdout + chk.stderr);
  assert.equal(chk.status, 0, chk.stderr);
  assert.match(chk.stdout, /disc\.conf: authorization_code/);
});

test('code flow with client authentication by Basic and in the body', { timeout: 150000 }, async (t) => {
  const { b, op } = await setup(t, (op) => ({
    basic: oidcProviderConf(op, { client_id: 'tokenbroker', client_auth: 'basic' }),
    post: oidcProviderConf(op, { client_id: 'tokenbroker-post', client_auth: 'post' }),
    wrong: oidcProviderConf(op, { client_id: 'tokenbroker-post', client_auth: 'basic' }),
  }));
  for (const [name, login] of [['basic', 'bea'], ['post', 'pat']]) {
    const r = await b.ctl(['--json', 'authorize', name, '--provider', name, '--no-wait']);
    assert.equal(r.code, 0, r.stderr);
    const page = await authorizeInBrowser(JSON.parse(r.stdout).authorize_url, { login });
    assert.equal(page.status, 200, page.text);
    await waitFor(async () => JSON.parse((await b.ctl(['--json', 'show', name])).stdout).state === 'active', { what: `${name} active` });
    for (let i = 0; i < 2; i++) assert.equal((await b.ctl(['refresh', name])).code, 0);
    const tok = (await b.ctl(['token', name])).stdout.trim();
    assert.equal((await op.introspect(tok)).active, true);
  }
  // The wrong method for a client: the exchange fails with invalid_client, said to be a configuration error.
  const r = await b.ctl(['--json', 'authorize', 'w', '--provider', 'wrong', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  // The browser reaches the broker's callback, which says the exchange failed.
  const page = await authorizeInBrowser(JSON.parse(r.stdout).authorize_url, { login: 'wes' });
  assert.ok(page.finalUrl.startsWith(b.redirectUri), `ended at ${page.finalUrl}`);
  assert.equal(page.status, 502, `callback page: ${page.status} ${page.text}`);
  assert.match(page.text, /Authorization failed/);
  assert.match(page.text, /invalid_client/);
  await waitFor(async () => JSON.parse((await b.ctl(['--json', 'show', 'w'])).stdout).last_error, { what: 'the exchange error' });
  assert.match(JSON.parse((await b.ctl(['--json', 'show', 'w'])).stdout).last_error, /configuration error: HTTP 401: invalid_client/);
});
