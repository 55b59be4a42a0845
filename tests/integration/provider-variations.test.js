'use strict';
/*
 * Every provider variation of the seeds, played by the programmable fake
 * provider (tests/lib/fake-provider.js) and expressed by a provider file
 * alone. Each test drives a connection through the authorization (or the
 * grant), a token handout and at least two refreshes, and checks what the
 * provider received (method, headers, body type, parameters) and what
 * clients are handed.
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, waitFor, httpGet, iniProvider, sleep } = require('../lib/broker.js');

const SECRET = 'fake-secret-Zx9';
const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function rnd() { return require('node:crypto').randomBytes(12).toString('base64url'); }

/* A fake provider and a broker whose providers are given as functions of fp. */
async function setup(t, providers, fpOpts = {}) {
  const fp = await startFakeProvider(fpOpts);
  const files = {};
  for (const [name, fields] of Object.entries(providers(fp))) files[name] = iniProvider(fields);
  const b = await Broker.start({ providers: files, secrets: { 'fake.secret': SECRET }, logLevel: 'debug' });
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  return { fp, b };
}

/* The code flow against the fake /authorize, which approves at once. */
async function authorize(b, name, provider, extra = []) {
  const r = await b.ctl(['--json', 'authorize', name, '--provider', provider, '--no-wait', ...extra]);
  assert.equal(r.code, 0, r.stderr);
  const url = JSON.parse(r.stdout).authorize_url;
  const redirect = await httpGet(url);
  assert.equal(redirect.status, 302);
  const page = await httpGet(redirect.headers.location);
  assert.equal(page.status, 200, page.text);
  await waitFor(async () => (await b.api('GET', `/v1/connections/${name}`)).json.state === 'active', { what: `${name} active` });
  return new URL(url);
}

async function token(b, name) {
  const r = await b.api('GET', `/v1/connections/${name}/token`);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

async function refresh(b, name) {
  const r = await b.ctl(['refresh', name]);
  assert.equal(r.code, 0, r.stderr);
}

const tokenReqs = (fp, path = '/token') => fp.requests.filter((q) => q.path === path);

test('JSON bodies, custom headers and parameters, client_auth = headers', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    p: {
      ...fp.providerConf(),
      client_auth: 'headers',
      token_body: 'json',
      token_header: ['X-Client: ${client_id}', 'X-Secret: ${client_secret}', 'X-Request-Id: ${uuid}'],
      token_param: ['grant_type=authorization_code', 'code=${code}', 'redirect_uri=${redirect_uri}',
        'verifier=${code_verifier}', 'nonce=${random_string}', 'at=${timestamp_unix}', 'when=${utc}', 'b=${random_base64}'],
      refresh_body: 'json',
      refresh_param: ['grant_type=refresh_token', 'refresh_token=${refresh_token}', 'n=${random_int}', 'url=${token_url}'],
    },
  }));
  const authUrl = await authorize(b, 'c', 'p');
  const ex = tokenReqs(fp)[0];
  assert.equal(ex.method, 'POST');
  assert.match(ex.headers['content-type'], /^application\/json/);
  assert.equal(ex.headers['x-client'], 'fake-client');
  assert.equal(ex.headers['x-secret'], SECRET);
  assert.match(ex.headers['x-request-id'], UUID4);
  assert.equal(ex.headers.authorization, undefined);
  assert.deepEqual(Object.keys(ex.params).sort(), ['at', 'b', 'code', 'grant_type', 'nonce', 'redirect_uri', 'verifier', 'when']);
  assert.equal(ex.params.code, fp.codes[0]);
  assert.equal(ex.params.redirect_uri, b.redirectUriFor('p'));   // the provider's own (mix-up defence)
  assert.equal(ex.params.verifier.length, 43);
  assert.equal(authUrl.searchParams.get('code_challenge_method'), 'S256');
  assert.match(ex.params.nonce, /^[a-z0-9]{12}$/);
  assert.ok(Math.abs(Number(ex.params.at) - Date.now() / 1000) < 30);
  assert.match(ex.params.when, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.match(ex.params.b, /^[A-Za-z0-9+/]{22}==$/);

  let tok = await token(b, 'c');
  assert.equal(tok.access_token, fp.issued[0].access_token);
  for (let i = 1; i <= 2; i++) {
    await refresh(b, 'c');
    const rq = tokenReqs(fp)[i];
    assert.match(rq.headers['content-type'], /^application\/json/);
    assert.equal(rq.headers['x-secret'], SECRET);
    assert.deepEqual(Object.keys(rq.params).sort(), ['grant_type', 'n', 'refresh_token', 'url']);
    assert.equal(rq.params.refresh_token, fp.issued[i - 1].refresh_token);
    assert.match(rq.params.n, /^\d+$/);
    assert.equal(rq.params.url, fp.url('/token'));
    tok = await token(b, 'c');
    assert.equal(tok.access_token, fp.issued[i].access_token);
  }
  assert.notEqual(tokenReqs(fp)[1].headers['x-request-id'], tokenReqs(fp)[2].headers['x-request-id']);
  assert.ok(!b.log().includes(SECRET), 'the client secret reached the log');
});

test('separate refresh URL and method; the code in the token URL query; parameters in the query', { timeout: 120000 }, async (t) => {
  let n = 0;
  const { fp, b } = await setup(t, (fp) => ({
    p: {
      ...fp.providerConf(),
      token_url: `${fp.url('/token')}?code=\${code}&app=\${client_id}`,
      token_param: ['grant_type=authorization_code', 'redirect_uri=${redirect_uri}'],
      refresh_url: `${fp.url('/oauth/refresh')}?v=2`,
      refresh_method: 'PUT',
      refresh_body: 'query',
      timeout: '15s',
    },
  }), {
    respond: (rec) => (rec.path === '/oauth/refresh'
      ? { body: { access_token: `at-r${++n}`, refresh_token: `rt-r${n}`, expires_in: 600, token_type: 'bearer' } }
      : null),
  });
  await authorize(b, 'c', 'p');
  const ex = tokenReqs(fp)[0];
  assert.equal(ex.query.code, fp.codes[0]);
  assert.equal(ex.query.app, 'fake-client');
  assert.deepEqual(ex.params, { grant_type: 'authorization_code', redirect_uri: b.redirectUriFor('p') });
  assert.match(ex.headers.authorization, /^Basic /);
  for (let i = 1; i <= 2; i++) {
    await refresh(b, 'c');
    const rq = tokenReqs(fp, '/oauth/refresh')[i - 1];
    assert.equal(rq.method, 'PUT');
    assert.equal(rq.raw, '');
    assert.equal(rq.query.v, '2');
    assert.equal(rq.query.grant_type, 'refresh_token');
    assert.equal(rq.query.refresh_token, i === 1 ? fp.issued[0].refresh_token : 'rt-r1');
    assert.equal(rq.headers.authorization, `Basic ${Buffer.from(`fake-client:${SECRET}`).toString('base64')}`);
    const tok = await token(b, 'c');
    assert.equal(tok.access_token, `at-r${i}`);
    assert.equal(tok.token_type, 'Bearer');
  }
  assert.equal(tokenReqs(fp).length, 1);
});

test('the code under another callback parameter; authorize_param templates', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    p: {
      ...fp.providerConf(),
      code_param: 'auth_code',
      authorize_params: 'access_type=offline prompt=consent',
      authorize_param: ['audience=https://api.example.com', 'nonce=${random_string}', 'response_type=code token', 'app=${client_id}'],
      scopes: 'read write',
      scope_separator: ',',
      pkce: 'none',
    },
  }), { codeParam: 'auth_code' });
  const url = await authorize(b, 'c', 'p');
  const q = url.searchParams;
  assert.equal(q.get('access_type'), 'offline');
  assert.equal(q.get('prompt'), 'consent');
  assert.equal(q.get('audience'), 'https://api.example.com');
  assert.match(q.get('nonce'), /^[a-z0-9]{12}$/);
  assert.equal(q.get('response_type'), 'code token');
  assert.equal(q.getAll('response_type').length, 1);
  assert.equal(q.get('app'), 'fake-client');
  assert.equal(q.get('scope'), 'read,write');
  assert.equal(q.get('code_challenge'), null);
  assert.equal(tokenReqs(fp)[0].params.code, fp.codes[0]);
  assert.equal(tokenReqs(fp)[0].params.code_verifier, undefined);
  await refresh(b, 'c');
  await refresh(b, 'c');
  assert.equal((await token(b, 'c')).access_token, fp.issued[2].access_token);
});

test('response mapping: nested pointers, numbers as strings, a custom token type, header and query usage', { timeout: 120000 }, async (t) => {
  let n = 0;
  const { fp, b } = await setup(t, (fp) => ({
    p: {
      ...fp.providerConf(),
      access_token_pointer: '/data/tok',
      refresh_token_pointer: '/data/extended_token',
      expires_in_pointer: '/data/ttl',
      token_type_pointer: '/data/kind',
      scope_pointer: '/data/granted/0',
      usage_header: ['X-Api-Token: ${access_token}', 'X-Token-Type: ${token_type}'],
      usage_query: 'key=${access_token}',
    },
  }), {
    respond: (rec) => (rec.path === '/token'
      ? { body: { data: { tok: `at-${++n}`, extended_token: `ext-${n}`, ttl: ' 3600 ', kind: 'MAC', granted: ['read write'] } } }
      : null),
  });
  await authorize(b, 'c', 'p');
  for (let i = 1; i <= 3; i++) {
    const tok = await token(b, 'c');
    assert.equal(tok.access_token, `at-${i}`);
    assert.equal(tok.token_type, 'MAC');
    assert.ok(tok.expires_in > 3500 && tok.expires_in <= 3600, `expires_in ${tok.expires_in}`);
    assert.equal(tok.scope, 'read write');
    assert.deepEqual(tok.headers, { 'X-Api-Token': `at-${i}`, 'X-Token-Type': 'MAC' });
    assert.deepEqual(tok.query, { key: `at-${i}` });
    const hdr = await b.ctl(['header', 'c']);
    assert.equal(hdr.stdout, `X-Api-Token: at-${i}\nX-Token-Type: MAC\n?key=at-${i}\n`);
    if (i < 3) {
      await refresh(b, 'c');
      assert.equal(tokenReqs(fp)[i].params.refresh_token, `ext-${i}`);
    }
  }
});

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
}

test('expiry only inside the access token JWT; absolute expiry as RFC 3339 or epoch seconds', { timeout: 120000 }, async (t) => {
  let n = 0;
  let m = 0;
  const { fp, b } = await setup(t, (fp) => ({
    jwt: fp.providerConf(),
    abs: { ...fp.providerConf({ token_url: fp.url('/abs') }), expires_at_pointer: '/expires_on' },
  }), {
    respond: (rec) => {
      const now = Math.floor(Date.now() / 1000);
      if (rec.path === '/token') {
        n++;
        return { body: { access_token: jwt({ sub: 'x', exp: now + 1800 + n }), refresh_token: `rt-${n}` } };
      }
      if (rec.path === '/abs') {
        m++;
        const exp = now + 7200;
        return { body: { access_token: `abs-${m}`, refresh_token: `art-${m}`, expires_on: m % 2 ? new Date(exp * 1000).toISOString() : String(exp) } };
      }
      return null;
    },
  });
  await authorize(b, 'j', 'jwt');
  await authorize(b, 'a', 'abs');
  for (let i = 0; i < 3; i++) {
    const tj = await token(b, 'j');
    assert.ok(tj.expires_in > 1700 && tj.expires_in <= 1803, `jwt expires_in ${tj.expires_in}`);
    const ta = await token(b, 'a');
    assert.ok(ta.expires_in > 7100 && ta.expires_in <= 7200, `abs expires_in ${ta.expires_in} (${i})`);
    if (i < 2) { await refresh(b, 'j'); await refresh(b, 'a'); }
  }
  assert.equal(n, 3);
  assert.equal(m, 3);
});

test('never_expires and default_lifetime', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    never: { ...fp.providerConf(), never_expires: 'yes' },
    deflt: { ...fp.providerConf({ token_url: fp.url('/plain') }), default_lifetime: '2h' },
  }), {
    respond: (rec) => (rec.path === '/plain' ? { body: { access_token: `p-${rnd()}`, refresh_token: `prt-${rnd()}` } } : null),
  });
  await authorize(b, 'n', 'never');
  await authorize(b, 'd', 'deflt');
  for (let i = 0; i < 3; i++) {
    const tn = await token(b, 'n');
    assert.equal(tn.expires_in, undefined, 'never_expires ignores the expires_in sent');
    assert.equal(tn.expires_at, undefined);
    const td = await token(b, 'd');
    assert.ok(td.expires_in > 7100 && td.expires_in <= 7200, `default_lifetime ${td.expires_in}`);
    if (i < 2) { await refresh(b, 'n'); await refresh(b, 'd'); }
  }
  const show = JSON.parse((await b.ctl(['--json', 'show', 'n'])).stdout);
  assert.equal(show.refreshes, 2, 'two refreshes; the code exchange is not one');
  assert.ok(tokenReqs(fp).length >= 3);
});

test('tolerance: token_type without case, refresh without refresh_token keeps the old one, a new scope is recorded', { timeout: 120000 }, async (t) => {
  let n = 0;
  const seen = [];
  const { fp, b } = await setup(t, (fp) => ({ p: fp.providerConf() }), {
    respond: (rec) => {
      if (rec.path !== '/token') return null;
      n++;
      seen.push(rec.params.refresh_token);
      if (n === 1) return { body: { access_token: 'at-1', refresh_token: 'rt-keep', token_type: 'BEARER', expires_in: '900', scope: 'read' } };
      if (n === 2) return { body: { access_token: 'at-2', token_type: 'bearer', expires_in: 900 } };
      return { body: { access_token: `at-${n}`, token_type: 'Bearer', expires_in: 900.0, scope: 'read write admin' } };
    },
  });
  await authorize(b, 'c', 'p');
  let tok = await token(b, 'c');
  assert.equal(tok.token_type, 'Bearer');
  assert.equal(tok.scope, 'read');
  await refresh(b, 'c');
  tok = await token(b, 'c');
  assert.equal(tok.access_token, 'at-2');
  assert.equal(tok.scope, 'read', 'an answer without scope keeps the scope');
  await refresh(b, 'c');
  tok = await token(b, 'c');
  assert.equal(tok.access_token, 'at-3');
  assert.equal(tok.scope, 'read write admin');
  assert.deepEqual(seen, [undefined, 'rt-keep', 'rt-keep']);
  assert.equal(JSON.parse((await b.ctl(['--json', 'show', 'c'])).stdout).has_refresh_token, true);
  assert.ok(fp.requests.length >= 4);
});

test('client authentication: basic, post and none with the RFC 6749 default parameters', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    basic: fp.providerConf({ client_auth: 'basic' }),
    post: fp.providerConf({ client_auth: 'post' }),
    none: fp.providerConf({ client_auth: 'none', client_secret_file: undefined }),
  }));
  const basicHdr = `Basic ${Buffer.from(`fake-client:${SECRET}`).toString('base64')}`;
  for (const kind of ['basic', 'post', 'none']) {
    const before = tokenReqs(fp).length;
    await authorize(b, kind, kind);
    await refresh(b, kind);
    await refresh(b, kind);
    const [ex, r1, r2] = tokenReqs(fp).slice(before);
    assert.match(ex.headers['content-type'], /^application\/x-www-form-urlencoded/);
    const auth = { basic: {}, post: { client_id: 'fake-client', client_secret: SECRET }, none: { client_id: 'fake-client' } }[kind];
    assert.deepEqual(ex.params, { grant_type: 'authorization_code', code: fp.codes[fp.codes.length - 1], redirect_uri: b.redirectUriFor(kind), code_verifier: ex.params.code_verifier, ...auth });
    assert.deepEqual(r2.params, { grant_type: 'refresh_token', refresh_token: r2.params.refresh_token, ...auth });
    assert.equal(r1.params.grant_type, 'refresh_token');
    for (const q of [ex, r1, r2]) assert.equal(q.headers.authorization, kind === 'basic' ? basicHdr : undefined, kind);
    assert.equal((await token(b, kind)).access_token, fp.issued[fp.issued.length - 1].access_token);
  }
});

test('client_credentials: no browser; the grant runs again ahead of expiry', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    cc: { ...fp.providerConf({ grant: 'client_credentials', authorize_url: undefined }), scopes: 'api.read api.write' },
  }), { expiresIn: 6 });
  const r = await b.ctl(['authorize', 'svc', '--provider', 'cc', '--timeout', '20']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /svc: active/);
  const first = await token(b, 'svc');
  assert.equal(first.access_token, fp.issued[0].access_token);
  // Two grants more on the broker's own schedule (6 s tokens, 2 s margin).
  await waitFor(() => tokenReqs(fp).length >= 3, { timeoutMs: 25000, what: 'two re-runs of the grant' });
  for (const q of tokenReqs(fp)) {
    assert.deepEqual(q.params, { grant_type: 'client_credentials', scope: 'api.read api.write' });
    assert.match(q.headers.authorization, /^Basic /);
  }
  await waitFor(async () => (await token(b, 'svc')).access_token === fp.issued[2].access_token, { what: 'newest token handed out' });
  const show = JSON.parse((await b.ctl(['--json', 'show', 'svc'])).stdout);
  assert.equal(show.has_refresh_token, false);
});

test('password grant: the password from stdin, sealed, re-used for each re-run', { timeout: 120000 }, async (t) => {
  const PASSWORD = 'hunter2-Pw!';
  const { fp, b } = await setup(t, (fp) => ({
    pw: { ...fp.providerConf({ grant: 'password', authorize_url: undefined, client_auth: 'post' }), scopes: 'all' },
  }));
  const r = await b.ctl(['authorize', 'me', '--provider', 'pw', '--username', 'alice', '--timeout', '20'], { input: `${PASSWORD}\n` });
  assert.equal(r.code, 0, r.stderr);
  await refresh(b, 'me');
  await refresh(b, 'me');
  const reqs = tokenReqs(fp);
  assert.equal(reqs.length, 3);
  for (const q of reqs) {
    assert.deepEqual(q.params, { grant_type: 'password', username: 'alice', password: PASSWORD, scope: 'all', client_id: 'fake-client', client_secret: SECRET });
  }
  assert.equal((await token(b, 'me')).access_token, fp.issued[2].access_token);
  // Sealed at rest, absent from logs, events and the API.
  const hex = Buffer.from(PASSWORD).toString('hex').toUpperCase();
  assert.ok(!b.dumpStore().includes(hex));
  assert.ok(!b.log().includes(PASSWORD));
  assert.ok(!JSON.stringify(b.sql('SELECT * FROM events')).includes(PASSWORD));
  const show = await b.ctl(['--json', 'show', 'me']);
  assert.ok(!show.stdout.includes(PASSWORD));
  assert.equal(JSON.parse(show.stdout).username, 'alice');
  // Survives a restart: the re-run grant still has the password.
  await b.restart();
  await refresh(b, 'me');
  assert.equal(tokenReqs(fp)[3].params.password, PASSWORD);
  // No username: refused up front.
  const bad = await b.ctl(['authorize', 'x', '--provider', 'pw', '--no-wait']);
  assert.equal(bad.code, 2);
});

test('device flow: user code printed, polling at the interval, slow_down honoured, expiry stops it', { timeout: 120000 }, async (t) => {
  const polls = [];
  let approved = false;
  const { fp, b } = await setup(t, (fp) => ({
    dev: {
      ...fp.providerConf({ grant: 'device_code', authorize_url: undefined, client_auth: 'none', client_secret_file: undefined }),
      device_authorization_url: fp.url('/device'),
      scopes: 'profile',
    },
  }), {
    respond: (rec) => {
      if (rec.path === '/device') {
        const short = rec.params.scope === 'short';
        return { body: { device_code: short ? 'dc-short' : 'dc-1', user_code: 'WDJB-MJHT', verification_uri: 'https://example.com/device', verification_uri_complete: 'https://example.com/device?user_code=WDJB-MJHT', expires_in: short ? 3 : 60, interval: 1 } };
      }
      if (rec.path === '/token' && rec.params.grant_type === 'urn:ietf:params:oauth:grant-type:device_code') {
        polls.push({ at: Date.now(), code: rec.params.device_code });
        if (rec.params.device_code === 'dc-short') return { status: 400, body: { error: 'authorization_pending' } };
        const k = polls.filter((p) => p.code === 'dc-1').length;
        if (k === 2) return { status: 400, body: { error: 'slow_down' } };
        if (!approved) return { status: 400, body: { error: 'authorization_pending' } };
        return null;   // the default handler issues tokens
      }
      return null;
    },
  });
  const auth = b.ctlAsync(['authorize', 'tv', '--provider', 'dev', '--timeout', '60']);
  await waitFor(() => /WDJB-MJHT/.test(auth.stdout), { what: 'the user code' });
  assert.match(auth.stdout, /open\s+https:\/\/example\.com\/device\s+and enter the code\s+WDJB-MJHT/);
  const dev = fp.requests.find((q) => q.path === '/device');
  assert.deepEqual(dev.params, { client_id: 'fake-client', scope: 'profile' });
  const show = JSON.parse((await b.ctl(['--json', 'show', 'tv'])).stdout);
  assert.equal(show.state, 'pending');
  assert.equal(show.user_code, 'WDJB-MJHT');
  // device_code is sealed like a verifier
  assert.ok(!b.dumpStore().includes(Buffer.from('dc-1').toString('hex').toUpperCase()));
  await waitFor(() => polls.length >= 4, { timeoutMs: 20000, what: 'four polls' });
  approved = true;
  const done = await auth.done;
  assert.equal(done.code, 0, done.stderr);
  const gaps = polls.slice(1).map((p, i) => p.at - polls[i].at);
  assert.ok(gaps[0] >= 900, `first interval ${gaps[0]} ms`);
  assert.ok(gaps[1] >= 5900, `after slow_down the interval grows by 5 s (${gaps[1]} ms)`);
  assert.ok(gaps[2] >= 5900, `and stays so (${gaps[2]} ms)`);
  const last = polls.length;
  await sleep(2500);
  assert.equal(polls.length, last, 'polling stopped after approval');
  const tok = await token(b, 'tv');
  await refresh(b, 'tv');
  await refresh(b, 'tv');
  assert.notEqual((await token(b, 'tv')).access_token, tok.access_token);
  assert.equal(tokenReqs(fp).filter((q) => q.params.grant_type === 'refresh_token').length, 2);

  // A code nobody approves: polling stops at expires_in; an event says so.
  const r = await b.ctl(['--json', 'authorize', 'never', '--provider', 'dev', '--scope', 'short', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).user_code, 'WDJB-MJHT');
  await waitFor(async () => (await b.api('GET', '/v1/connections/never')).status === 404, { timeoutMs: 15000, what: 'expiry' });
  const n = polls.filter((p) => p.code === 'dc-short').length;
  assert.ok(n >= 1 && n <= 4, `${n} polls of the short code`);
  await sleep(2000);
  assert.equal(polls.filter((p) => p.code === 'dc-short').length, n);
  await waitFor(() => b.sql("SELECT kind FROM events WHERE connection = 'never'").some((e) => e.kind === 'authorization-expired'), { what: 'the authorization-expired event' });
});

test('error_map: provider codes and descriptions to retry, re-authorize or configuration error, with hints', { timeout: 120000 }, async (t) => {
  let answer = null;
  const { b } = await setup(t, (fp) => ({
    ms: {
      ...fp.providerConf(),
      error_map: [
        'AADSTS70000 -> retry',
        'AADSTS700082 -> reauth : the refresh token expired after 90 days of inactivity',
        '/Token has been expired or revoked/ -> reauth : an app in testing mode gets refresh tokens that die after 7 days',
        'invalid_client -> config : check client_secret_file',
      ],
    },
  }), { respond: (rec) => (rec.path === '/token' && rec.params.grant_type === 'refresh_token' && answer ? answer : null) });
  await authorize(b, 'c', 'ms');
  await refresh(b, 'c');
  await refresh(b, 'c');

  // invalid_grant, but AADSTS70000 is a transient burst: retry, keep serving.
  answer = { status: 400, body: { error: 'invalid_grant', error_description: 'AADSTS70000: The request was denied because one or more scopes are unavailable (burst).' } };
  let r = await b.ctl(['refresh', 'c']);
  assert.equal(r.code, 8, r.stderr);
  let show = JSON.parse((await b.ctl(['--json', 'show', 'c'])).stdout);
  assert.equal(show.state, 'active');
  assert.equal((await b.api('GET', '/v1/connections/c/token')).status, 200);

  // AADSTS700082: re-authorize, with the hint.
  answer = { status: 400, body: { error: 'invalid_grant', error_description: 'AADSTS700082: The refresh token has expired due to inactivity.' } };
  await waitFor(async () => JSON.parse((await b.ctl(['--json', 'show', 'c'])).stdout).state === 'needs_reauth', { timeoutMs: 20000, what: 'needs_reauth' });
  show = JSON.parse((await b.ctl(['--json', 'show', 'c'])).stdout);
  assert.match(show.last_error, /AADSTS700082.*hint: the refresh token expired after 90 days/);
  await waitFor(() => b.sql("SELECT message FROM events WHERE connection = 'c' AND kind = 'needs-reauth'").length > 0, { what: 'the needs-reauth event' });
  assert.ok(b.sql("SELECT message FROM events WHERE connection = 'c' AND kind = 'needs-reauth'")[0].message.includes('hint'));

  // Google's testing-mode message, matched by a regular expression.
  answer = null;
  await authorize(b, 'g', 'ms');
  answer = { status: 400, body: { error: 'invalid_grant', error_description: 'Token has been expired or revoked.' } };
  r = await b.ctl(['refresh', 'g']);
  assert.equal(r.code, 5);
  assert.match(r.stderr, /testing mode/);

  // invalid_client: a configuration error (RFC 6749 5.2 default), said so.
  answer = null;
  await authorize(b, 'k', 'ms');
  answer = { status: 401, body: { error: 'invalid_client' } };
  r = await b.ctl(['refresh', 'k']);
  assert.equal(r.code, 5);
  assert.match(r.stderr, /configuration error: HTTP 401: invalid_client.*check client_secret_file/);
});

test('identity from a userinfo URL with a JSON pointer, and from id_token claims', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    ui: { ...fp.providerConf(), userinfo_url: fp.url('/me'), identity_pointer: '/account/login' },
    idt: { ...fp.providerConf({ token_url: fp.url('/idt') }), identity_pointer: '/upn' },
  }), {
    respond: (rec) => {
      if (rec.path === '/me') return { body: { account: { login: 'octocat', id: 1 } } };
      if (rec.path === '/idt') return { body: { access_token: `a-${rnd()}`, refresh_token: `r-${rnd()}`, expires_in: 900, id_token: jwt({ sub: 's1', upn: 'bob@corp.example' }) } };
      return null;
    },
  });
  await authorize(b, 'u', 'ui');
  const me = fp.requests.find((q) => q.path === '/me');
  assert.equal(me.method, 'GET');
  assert.equal(me.headers.authorization, `Bearer ${fp.issued[0].access_token}`);
  assert.equal(JSON.parse((await b.ctl(['--json', 'show', 'u'])).stdout).identity, 'octocat');
  await authorize(b, 'i', 'idt');
  assert.equal(JSON.parse((await b.ctl(['--json', 'show', 'i'])).stdout).identity, 'bob@corp.example');
  for (const n of ['u', 'i']) { await refresh(b, n); await refresh(b, n); }
  assert.equal(JSON.parse((await b.ctl(['--json', 'show', 'u'])).stdout).identity, 'octocat');
});

test('tokenctl test GETs the test URL with the usage rule; tokenctl import adopts a refresh token from stdin', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    p: { ...fp.providerConf(), test_url: fp.url('/api/me'), usage_header: 'X-Auth: ${token_type} ${access_token}', usage_query: 'k=${access_token}' },
  }), {
    respond: (rec) => (rec.path === '/api/me'
      ? { status: rec.headers['x-auth'] === `Bearer ${rec.query.k}` && fp.issued.some((i) => i.access_token === rec.query.k) ? 200 : 401, body: { ok: true } }
      : null),
  });
  // import: a refresh token from elsewhere (fp issued it to "someone else")
  fp.refreshTokens.set('rt-from-elsewhere', 'g0');
  const imp = await b.ctl(['import', 'imp', '--provider', 'p', '--timeout', '20'], { input: 'rt-from-elsewhere\n' });
  assert.equal(imp.code, 0, imp.stderr);
  assert.equal(tokenReqs(fp)[0].params.refresh_token, 'rt-from-elsewhere');
  assert.ok(!b.log().includes('rt-from-elsewhere'));
  const ps = await b.ctl(['--json', 'list']);
  assert.ok(!ps.stdout.includes('rt-from-elsewhere'));
  await refresh(b, 'imp');
  await refresh(b, 'imp');
  const te = await b.ctl(['test', 'imp']);
  assert.equal(te.code, 0, te.stderr);
  assert.match(te.stdout, /imp: GET http:\/\/127\.0\.0\.1:\d+\/api\/me -> HTTP 200 in \d+ ms/);
  const tj = JSON.parse((await b.ctl(['--json', 'test', 'imp'])).stdout);
  assert.equal(tj.status, 200);
  // a refused refresh token: import fails, exit code says so
  const bad = await b.ctl(['import', 'bad', '--provider', 'p', '--timeout', '20'], { input: 'rt-unknown\n' });
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /invalid_grant/);
  // no token on stdin: usage error, nothing created
  const none = await b.ctl(['import', 'none', '--provider', 'p']);
  assert.equal(none.code, 2);
  assert.equal((await b.api('GET', '/v1/connections/none')).status, 404);
});
