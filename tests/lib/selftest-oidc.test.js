'use strict';
// Self-test of lib/oidc-server.js and lib/browser.js.
//   cd tests && node --test lib/selftest-oidc.test.js
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');

const { startOidc, DEVICE_CODE_GRANT } = require('./oidc-server.js');
const { authorizeInBrowser, approveDeviceInBrowser } = require('./browser.js');

const TTL = 10;
const STEP = 60000; // per-test bound (node:test timeout)

let op;
let cb; // redirect target
let redirectUri;
const callbacks = [];
const tokens = {};

function b64url(buf) { return Buffer.from(buf).toString('base64url'); }

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

before(async () => {
  cb = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://127.0.0.1');
    if (u.pathname === '/oauth/callback') {
      callbacks.push(Object.fromEntries(u.searchParams));
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
      return;
    }
    res.writeHead(404); res.end();
  });
  await new Promise((r) => cb.listen(0, '127.0.0.1', r));
  redirectUri = `http://127.0.0.1:${cb.address().port}/oauth/callback`;
  op = await withTimeout(startOidc({ redirectUris: [redirectUri], accessTokenTtl: TTL, quiet: true }), 20000, 'startOidc');
});

after(async () => {
  if (op) await withTimeout(op.close(), 10000, 'op.close').catch(() => {});
  if (cb) {
    cb.closeAllConnections();
    await new Promise((r) => cb.close(r));
  }
});

test('discovery lists the endpoints and PKCE S256 only', { timeout: STEP }, async () => {
  const r = await fetch(op.endpoints.discovery, { signal: AbortSignal.timeout(5000) });
  const d = await r.json();
  assert.equal(d.issuer, op.issuer);
  assert.equal(d.token_endpoint, op.endpoints.token);
  assert.deepEqual(d.code_challenge_methods_supported, ['S256']);
  assert.ok(d.grant_types_supported.includes(DEVICE_CODE_GRANT));
  assert.ok(d.introspection_endpoint && d.revocation_endpoint && d.device_authorization_endpoint);
  assert.match(op.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
});

test('authorization code flow in the browser, PKCE, token exchange', { timeout: STEP }, async () => {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const state = b64url(crypto.randomBytes(12));
  const u = new URL(op.endpoints.authorization);
  u.search = new URLSearchParams({
    response_type: 'code',
    client_id: 'tokenbroker',
    redirect_uri: redirectUri,
    scope: 'openid email offline_access',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    prompt: 'consent',
  }).toString();

  const r = await authorizeInBrowser(u.toString(), { login: 'alice', timeoutMs: 30000 });
  assert.equal(r.status, 200);
  assert.equal(r.text.trim(), 'ok');
  const fin = new URL(r.finalUrl);
  assert.equal(fin.searchParams.get('state'), state);
  const code = fin.searchParams.get('code');
  assert.ok(code, 'code in final URL');
  assert.equal(callbacks.at(-1).code, code, 'callback server saw the code');
  assert.equal(callbacks.at(-1).state, state);
  assert.deepEqual(r.steps.filter((s) => s !== 'goto'), ['login', 'consent', 'callback']);

  // a wrong verifier: refused (PKCE checked at the token endpoint too)
  const bad = await op.tokenRequest({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: b64url(crypto.randomBytes(32)) });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error, 'invalid_grant');
  // oidc-provider checks PKCE before consuming the code, so the real
  // exchange below still works
  const t = await op.tokenRequest({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier });
  assert.equal(t.status, 200, t.text);
  assert.ok(t.json.access_token && t.json.refresh_token && t.json.id_token);
  assert.equal(t.json.token_type, 'Bearer');
  assert.ok(Math.abs(t.json.expires_in - TTL) <= 1, `expires_in ${t.json.expires_in}`);
  const idt = JSON.parse(Buffer.from(t.json.id_token.split('.')[1], 'base64url').toString());
  assert.equal(idt.sub, 'alice');
  assert.equal(idt.email, 'alice@example.com');
  assert.equal(idt.aud, 'tokenbroker');
  tokens.code = t.json;
});

test('authorization request without PKCE is refused', { timeout: STEP }, async () => {
  const u = new URL(op.endpoints.authorization);
  u.search = new URLSearchParams({
    response_type: 'code', client_id: 'tokenbroker', redirect_uri: redirectUri, scope: 'openid', state: 's1',
  }).toString();
  const res = await fetch(u, { redirect: 'manual', signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 303);
  const loc = new URL(res.headers.get('location'));
  assert.equal(loc.searchParams.get('error'), 'invalid_request');
  assert.match(loc.searchParams.get('error_description'), /PKCE|code_challenge/);
});

test('introspection of a fresh access token', { timeout: STEP }, async () => {
  assert.ok(tokens.code, 'needs the code-flow test');
  const i = await op.introspect(tokens.code.access_token);
  assert.equal(i.active, true);
  assert.equal(i.client_id, 'tokenbroker');
  assert.equal(i.sub, 'alice');
  assert.match(i.scope, /offline_access/);
  const ri = await op.introspect(tokens.code.refresh_token);
  assert.equal(ri.active, true);
  assert.equal(ri.client_id, 'tokenbroker');
});

test('client_credentials grant (basic and post clients)', { timeout: STEP }, async () => {
  const r = await op.tokenRequest({ grant_type: 'client_credentials', scope: 'api:read' });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.scope, 'api:read');
  assert.ok(r.json.access_token);
  assert.equal(r.json.refresh_token, undefined);
  assert.ok(Math.abs(r.json.expires_in - TTL) <= 1);
  const i = await op.introspect(r.json.access_token);
  assert.equal(i.active, true);
  const p = await op.tokenRequest({ grant_type: 'client_credentials', scope: 'api:read' }, { clientId: 'tokenbroker-post' });
  assert.equal(p.status, 200, p.text);
  assert.deepEqual(op.tokenRequests.slice(-2).map((e) => e.client_auth), ['client_secret_basic', 'client_secret_post']);
  // the basic client cannot authenticate with the post method (strictClientAuth)
  const wrong = await op.tokenRequest({ grant_type: 'client_credentials' }, { auth: 'client_secret_post' });
  assert.equal(wrong.status, 401);
  assert.equal(wrong.json.error, 'invalid_client');
  const wrong2 = await op.tokenRequest({ grant_type: 'client_credentials' }, { clientId: 'tokenbroker-post', auth: 'client_secret_basic' });
  assert.equal(wrong2.status, 401);
  const badSecret = await op.tokenRequest({ grant_type: 'client_credentials' }, { secret: 'nope' });
  assert.equal(badSecret.status, 401);
});

test('device flow: authorize, approve in the browser, poll', { timeout: STEP }, async () => {
  const d = await fetch(op.endpoints.device_authorization, {
    method: 'POST',
    headers: { authorization: op.basicAuth('tokenbroker', op.clientSecret), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ scope: 'openid email offline_access' }),
    signal: AbortSignal.timeout(5000),
  }).then((r) => r.json());
  assert.ok(d.device_code && d.user_code && d.verification_uri && d.verification_uri_complete, JSON.stringify(Object.keys(d)));

  const pending = await op.tokenRequest({ grant_type: DEVICE_CODE_GRANT, device_code: d.device_code });
  assert.equal(pending.status, 400);
  assert.equal(pending.json.error, 'authorization_pending');

  // the "type the code" variant: plain verification_uri + user code
  const r = await approveDeviceInBrowser({ uri: d.verification_uri, userCode: d.user_code }, { login: 'bob@corp.test', timeoutMs: 30000 });
  assert.deepEqual(r.steps.filter((s) => s !== 'goto'), ['user-code', 'confirm', 'login', 'consent', 'success']);

  let t;
  const deadline = Date.now() + 15000;
  for (;;) {
    t = await op.tokenRequest({ grant_type: DEVICE_CODE_GRANT, device_code: d.device_code });
    if (t.status === 200 || t.json?.error !== 'authorization_pending' || Date.now() > deadline) break;
    await new Promise((res) => setTimeout(res, 200));
  }
  assert.equal(t.status, 200, t.text);
  assert.ok(t.json.access_token && t.json.refresh_token && t.json.id_token);
  const idt = JSON.parse(Buffer.from(t.json.id_token.split('.')[1], 'base64url').toString());
  assert.equal(idt.sub, 'bob@corp.test');
  assert.equal(idt.email, 'bob@corp.test');

  // verification_uri_complete variant (no typing)
  const dd = await fetch(op.endpoints.device_authorization, {
    method: 'POST',
    headers: { authorization: op.basicAuth('tokenbroker', op.clientSecret), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ scope: 'openid' }),
    signal: AbortSignal.timeout(5000),
  }).then((x) => x.json());
  const r2 = await approveDeviceInBrowser(dd.verification_uri_complete, { timeoutMs: 30000 });
  assert.ok(r2.steps.includes('success'));
  const t2 = await op.tokenRequest({ grant_type: DEVICE_CODE_GRANT, device_code: dd.device_code });
  assert.equal(t2.status, 200, t2.text);
});

test('consent refused in the browser: redirect with access_denied', { timeout: STEP }, async () => {
  const verifier = b64url(crypto.randomBytes(32));
  const u = new URL(op.endpoints.authorization);
  u.search = new URLSearchParams({
    response_type: 'code', client_id: 'tokenbroker', redirect_uri: redirectUri, scope: 'openid', state: 'deny1',
    code_challenge: b64url(crypto.createHash('sha256').update(verifier).digest()), code_challenge_method: 'S256',
  }).toString();
  const r = await authorizeInBrowser(u.toString(), { consent: false, timeoutMs: 30000 });
  const fin = new URL(r.finalUrl);
  assert.equal(fin.searchParams.get('error'), 'access_denied');
  assert.equal(fin.searchParams.get('state'), 'deny1');
  assert.equal(fin.searchParams.get('code'), null);
});

test('revocation of an access token', { timeout: STEP }, async () => {
  const r = await op.tokenRequest({ grant_type: 'client_credentials', scope: 'api:read' });
  assert.equal(r.status, 200);
  assert.equal((await op.introspect(r.json.access_token)).active, true);
  assert.equal(await op.revoke(r.json.access_token), 200);
  assert.equal((await op.introspect(r.json.access_token)).active, false);
});

// Last: reusing a rotated refresh token revokes the whole grant.
test('refresh twice with rotation, then a rotated token is refused and the grant dies', { timeout: STEP }, async () => {
  assert.ok(tokens.code, 'needs the code-flow test');
  const rt0 = tokens.code.refresh_token;
  const before = op.refreshRequests().length;

  const r1 = await op.tokenRequest({ grant_type: 'refresh_token', refresh_token: rt0 });
  assert.equal(r1.status, 200, r1.text);
  assert.ok(r1.json.refresh_token && r1.json.refresh_token !== rt0, 'rotated');
  assert.ok(r1.json.access_token !== tokens.code.access_token);
  assert.ok(Math.abs(r1.json.expires_in - TTL) <= 1);
  const r2 = await op.tokenRequest({ grant_type: 'refresh_token', refresh_token: r1.json.refresh_token });
  assert.equal(r2.status, 200, r2.text);
  assert.ok(r2.json.refresh_token !== r1.json.refresh_token, 'rotated again');

  // the log: two refreshes, each presenting the then-current refresh token
  const log = op.refreshRequests().slice(before);
  assert.equal(log.length, 2);
  assert.deepEqual(log.map((e) => e.refresh_token_was_current), [true, true]);
  assert.equal(log[0].refresh_token_hash, op.tokenHash(rt0));
  assert.equal(log[1].refresh_token_hash, op.tokenHash(r1.json.refresh_token));
  assert.equal(log[1].issued_refresh_token_hash, op.tokenHash(r2.json.refresh_token));
  const g = op.grants.get(log[0].grant_id);
  assert.equal(g.refreshCount, 2);
  assert.equal(g.currentRefreshTokenHash, op.tokenHash(r2.json.refresh_token));
  assert.ok(op.events.some((e) => e.type === 'refresh_token.consumed' && e.token_hash === op.tokenHash(rt0)));
  // nothing in the records holds a raw token
  const dump = JSON.stringify([op.events, op.tokenRequests]);
  for (const v of [rt0, r1.json.refresh_token, r2.json.access_token]) assert.ok(!dump.includes(v));

  const atBeforeTheft = r2.json.access_token;
  assert.equal((await op.introspect(atBeforeTheft)).active, true);

  // reuse of the old one: refused, logged as not current, grant revoked
  const reuse = await op.tokenRequest({ grant_type: 'refresh_token', refresh_token: rt0 });
  assert.equal(reuse.status, 400);
  assert.equal(reuse.json.error, 'invalid_grant');
  const last = op.refreshRequests().at(-1);
  assert.equal(last.ok, false);
  assert.equal(last.refresh_token_was_current, false);
  assert.equal(last.refresh_token_known, true);
  assert.ok(op.events.some((e) => e.type === 'grant.revoked' && e.grant_id === log[0].grant_id));
  assert.equal(op.grants.get(log[0].grant_id).revoked, true);
  // the newest refresh token and access token die with the grant
  const newest = await op.tokenRequest({ grant_type: 'refresh_token', refresh_token: r2.json.refresh_token });
  assert.equal(newest.status, 400);
  assert.equal((await op.introspect(atBeforeTheft)).active, false);
});

test('failure injection on the token endpoint', { timeout: STEP }, async () => {
  op.failNext({ path: '/token', count: 1, status: 503 });
  const a = await op.tokenRequest({ grant_type: 'client_credentials' });
  assert.equal(a.status, 503);
  assert.equal(a.json.error, 'temporarily_unavailable');
  const b = await op.tokenRequest({ grant_type: 'client_credentials' });
  assert.equal(b.status, 200);
});

test('own login/consent pages (devInteractions: false) can refuse', { timeout: STEP }, async () => {
  let denyConsent = true;
  const op2 = await startOidc({
    redirectUris: [redirectUri], quiet: true, devInteractions: false,
    users: { alice: 'right' }, consent: () => !denyConsent,
  });
  try {
    const mk = (state) => {
      const verifier = b64url(crypto.randomBytes(32));
      const u = new URL(op2.endpoints.authorization);
      u.search = new URLSearchParams({
        response_type: 'code', client_id: 'tokenbroker', redirect_uri: redirectUri, scope: 'openid email', state,
        code_challenge: b64url(crypto.createHash('sha256').update(verifier).digest()), code_challenge_method: 'S256',
      }).toString();
      return { url: u.toString(), verifier };
    };
    await assert.rejects(
      authorizeInBrowser(mk('w').url, { login: 'alice', password: 'wrong', timeoutMs: 20000 }),
      (e) => e.code === 'LOGIN_REFUSED',
    );
    assert.ok(op2.events.some((e) => e.type === 'interaction.login_failed'));
    const denied = await authorizeInBrowser(mk('d').url, { login: 'alice', password: 'right', timeoutMs: 20000 });
    assert.equal(new URL(denied.finalUrl).searchParams.get('error'), 'access_denied');
    denyConsent = false;
    const { url, verifier } = mk('ok');
    const ok = await authorizeInBrowser(url, { login: 'alice', password: 'right', timeoutMs: 20000 });
    const code = new URL(ok.finalUrl).searchParams.get('code');
    assert.ok(code);
    const t = await op2.tokenRequest({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier });
    assert.equal(t.status, 200, t.text);
    assert.ok(t.json.refresh_token, 'issueRefreshToken: refresh token without offline_access');
  } finally {
    await op2.close();
  }
});
