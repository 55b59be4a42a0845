'use strict';
/*
 * Mix-up attack (RFC 9700 section 4.4, RFC 9207) and endpoints from OIDC
 * discovery.
 *
 * A malicious provider ("evil") the admin configured beside an honest one
 * (the real oidc-provider, which registered the shared redirect URI for
 * compatibility and its own one): evil's authorize endpoint forwards the
 * browser to the honest provider with the broker's state and
 * code_challenge. The honest provider's code and the PKCE verifier must
 * never reach evil's token endpoint:
 *  - on the per-provider redirect URI, an answer for evil's state that
 *    comes back on the shared URI (or another provider's) is refused;
 *  - with shared_callback = yes (the weaker, compatible mode), the iss the
 *    honest provider adds is not evil's issuer: refused;
 *  - a provider whose discovery says authorization_response_iss_parameter_
 *    supported, answering without iss: refused.
 * A discovery document whose endpoint holds ${client_secret} is refused,
 * not expanded (the secret would go to wherever the document points).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');
const { execFile } = require('node:child_process');

const { startOidc } = require('../lib/oidc-server.js');
const { authorizeInBrowser } = require('../lib/browser.js');
const { Broker, httpGet, iniProvider, oidcProviderConf, noteRun, BUILD } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

/* The malicious provider. forward(u, evil) gives the URL its authorize
 * endpoint redirects to; discovery(evil) its discovery document. */
async function startEvil({ forward, discovery }) {
  const evil = { requests: [] };
  evil.server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { if (body.length < 65536) body += d; });
    req.on('end', () => {
      const u = new URL(req.url, evil.url);
      evil.requests.push({ method: req.method, path: u.pathname, query: u.search, body });
      if (u.pathname === '/.well-known/openid-configuration' && discovery) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(discovery(evil)));
      } else if (u.pathname === '/authorize' && forward) {
        res.writeHead(302, { location: forward(u, evil) });
        res.end();
      } else if (u.pathname === '/token') {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end('{"error":"invalid_grant"}');
      } else {
        res.writeHead(404);
        res.end();
      }
    });
  });
  await new Promise((r) => evil.server.listen(0, '127.0.0.1', r));
  evil.url = `http://127.0.0.1:${evil.server.address().port}`;
  evil.close = () => new Promise((r) => { evil.server.closeAllConnections(); evil.server.close(() => r()); });
  return evil;
}

/* To the honest provider, with the broker's state, code_challenge and
 * scope, the broker's client_id there, and the redirect URI chosen. */
function forwardTo(op, redirectUri) {
  return (u) => {
    const to = new URL(op.endpoints.authorization);
    for (const k of ['response_type', 'scope', 'state', 'code_challenge', 'code_challenge_method', 'prompt']) {
      if (u.searchParams.has(k)) to.searchParams.set(k, u.searchParams.get(k));
    }
    to.searchParams.set('client_id', 'tokenbroker');
    to.searchParams.set('redirect_uri', redirectUri);
    return to.toString();
  };
}

function evilConf(evil, extra = {}) {
  return iniProvider({
    grant: 'authorization_code',
    authorize_url: `${evil.url}/authorize`,
    token_url: `${evil.url}/token`,
    client_id: 'tokenbroker',
    client_secret_file: 'evil.secret',
    scopes: 'openid email offline_access',
    authorize_params: 'prompt=consent',
    ...extra,
  });
}

async function setup(t, evilOpts, evilExtra) {
  const b = await Broker.prepare();
  const op = await startOidc({ accessTokenTtl: 60, redirectUris: b.redirectUrisFor('honest'), quiet: true });
  const evil = await startEvil(evilOpts(op, b));
  t.after(async () => {
    const st = await b.stop();
    await op.close();
    await evil.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  b.opts = {
    providers: { honest: oidcProviderConf(op), evil: evilConf(evil, evilExtra?.(evil)) },
    secrets: { 'local.secret': op.clientSecret, 'evil.secret': 'mixup-evil-client-secret' },
  };
  b.writeConfig();
  await b.launch();
  return { b, op, evil };
}

/* Starts an authorization at evil, runs it in the browser (through the
 * honest provider's login) and checks that nothing of it reached evil's
 * token endpoint and the connection is not active. */
async function attack(b, op, evil) {
  const r = await b.ctl(['--json', 'authorize', 'victim', '--provider', 'evil', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const url = JSON.parse(r.stdout).authorize_url;
  let page;
  try {
    page = await authorizeInBrowser(url, { timeoutMs: 60000 });
  } catch (e) {
    page = { error: e.message, finalUrl: e.finalUrl };
  }
  const callback = new URL(page.finalUrl ?? 'http://x/');
  const code = callback.searchParams.get('code');
  assert.ok(code, `the honest provider answered with a code: ${JSON.stringify(page).slice(0, 500)}`);
  const toEvil = evil.requests.filter((x) => x.path === '/token');
  assert.deepEqual(toEvil, [], "the honest provider's code went to the malicious token endpoint");
  assert.ok(!evil.requests.some((x) => x.body.includes(code) || x.query.includes(code)), 'the code reached evil');
  assert.equal(page.status, 400, JSON.stringify(page).slice(0, 500));
  assert.match(page.text, /does not belong to the provider/);
  const show = JSON.parse((await b.ctl(['--json', 'show', 'victim'])).stdout);
  assert.notEqual(show.state, 'active');
  const ev = await b.ctl(['events', 'victim']);
  assert.match(ev.stdout, /possible mix-up/);
  return { page, callback };
}

test('mix-up: an answer for one provider on the shared redirect URI is refused', { timeout: 180000 }, async (t) => {
  // evil forwards with the shared redirect URI, which the honest provider
  // still has registered for compatibility.
  const { b, op, evil } = await setup(t, (op, b) => ({ forward: forwardTo(op, b.redirectUri) }));
  const { callback } = await attack(b, op, evil);
  assert.equal(callback.pathname, '/oauth/callback');

  // The honest provider on its own redirect URI still works end to end.
  const r = await b.ctl(['--json', 'authorize', 'good', '--provider', 'honest', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const url = new URL(JSON.parse(r.stdout).authorize_url);
  assert.equal(url.searchParams.get('redirect_uri'), b.redirectUriFor('honest'));
  const providers = JSON.parse((await b.ctl(['--json', 'providers'])).stdout);
  const list = providers.providers ?? providers;
  assert.equal(list.find((p) => p.name === 'honest').redirect_uri, b.redirectUriFor('honest'));
  const page = await authorizeInBrowser(url.toString(), { timeoutMs: 60000 });
  assert.equal(page.status, 200, page.text);
  assert.equal(JSON.parse((await b.ctl(['--json', 'show', 'good'])).stdout).state, 'active');
});

test('mix-up: another provider\'s redirect URI is refused for evil\'s state', { timeout: 180000 }, async (t) => {
  const { b, op, evil } = await setup(t, (op, b) => ({ forward: forwardTo(op, b.redirectUriFor('honest')) }));
  const { callback } = await attack(b, op, evil);
  assert.equal(callback.pathname, '/oauth/callback/honest');
});

test('mix-up with shared_callback: the honest provider\'s iss is not evil\'s issuer', { timeout: 180000 }, async (t) => {
  const { b, op, evil } = await setup(t, (op, b) => ({
    forward: forwardTo(op, b.redirectUri),
    discovery: (e) => ({ issuer: e.url, authorization_endpoint: `${e.url}/authorize`, token_endpoint: `${e.url}/token` }),
  }), (e) => ({ issuer: e.url, shared_callback: 'yes', authorize_url: undefined, token_url: undefined }));
  const { callback } = await attack(b, op, evil);
  assert.equal(callback.pathname, '/oauth/callback');
  assert.equal(callback.searchParams.get('iss'), op.issuer, 'oidc-provider sends iss (RFC 9207)');
});

test('iss required when discovery says authorization_response_iss_parameter_supported', { timeout: 120000 }, async (t) => {
  // The fake provider sends no iss; its "discovery" (served by a helper) says it does.
  const fp = await startFakeProvider();
  const doc = await startEvil({
    discovery: (e) => ({
      issuer: e.url, authorization_endpoint: fp.url('/authorize'), token_endpoint: fp.url('/token'),
      authorization_response_iss_parameter_supported: true,
    }),
  });
  const b = await Broker.start({
    providers: { fake: iniProvider({ ...fp.providerConf(), issuer: doc.url, authorize_url: undefined, token_url: undefined }) },
    secrets: { 'fake.secret': 'mixup-fake-client-secret' },
  });
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    await doc.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  const r = await b.ctl(['--json', 'authorize', 'c', '--provider', 'fake', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const red = await httpGet(JSON.parse(r.stdout).authorize_url);
  const cb = await httpGet(red.headers.location);
  assert.equal(cb.status, 400, cb.text);
  assert.match(cb.text, /does not belong to the provider/);
  assert.equal(fp.requests.filter((x) => x.path === '/token').length, 0, 'a code without iss was exchanged');

  // With the provider's iss added, the same answer goes through.
  const loc = new URL(red.headers.location);
  loc.searchParams.set('iss', doc.url);
  const ok = await httpGet(loc.toString());
  assert.equal(ok.status, 200, ok.text);
});

test('a discovered endpoint holding ${client_secret} is refused, not expanded', { timeout: 120000 }, async (t) => {
  const secret = 'mixup-discovery-client-secret';
  const doc = await startEvil({
    discovery: (e) => ({
      issuer: e.url,
      authorization_endpoint: `${e.url}/authorize`,
      token_endpoint: `${e.url}/token?leak=\${client_secret}`,
    }),
  });
  const b = await Broker.prepare();
  t.after(async () => { await doc.close(); });
  b.opts = {
    providers: { d: iniProvider({ grant: 'authorization_code', issuer: doc.url, client_id: 'c', client_secret_file: 'd.secret', client_auth: 'post' }) },
    secrets: { 'd.secret': secret },
  };
  b.writeConfig();
  // Asynchronously: the discovery document is served by this process.
  const r = await new Promise((resolve) => {
    execFile(path.join(BUILD, 'tokenbrokerd'), ['--check-config', '-c', b.confPath],
      { encoding: 'utf8', timeout: 30000, env: { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' } },
      (err, stdout, stderr) => resolve({ code: err ? err.code : 0, out: `${stdout}${stderr}` }));
  });
  noteRun('mixup-discovery-check', r.out);
  assert.notEqual(r.code, 0, `--check-config passed:\n${r.out}`);
  assert.match(r.out, /token_endpoint holds '\$'/);
  assert.ok(!r.out.includes(secret));
  assert.ok(!doc.requests.some((x) => x.query.includes('mixup')), 'the secret went to the discovered endpoint');
  require('node:fs').rmSync(b.dir, { recursive: true, force: true });
});
