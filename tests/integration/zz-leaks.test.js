'use strict';
/*
 * No secrets in logs, events or answers (DESIGN.md, "Storage and
 * security"). A broker at debug log level goes through: authorize (code
 * flow, PKCE, through the fake provider), token, header, invalidate, a
 * min_ttl refresh, refresh, a failing refresh (500, then 400
 * invalid_grant), revoke. Every secret the run used is collected:
 * the client secret (and its Basic form), every authorization code, every
 * code_verifier, every access and refresh token the provider issued, and
 * every raw `state`. None may appear in:
 *  - the daemon's log file (debug level, read after a clean stop);
 *  - the events table, GET /v1/events, tokenctl events;
 *  - the output of every tokenctl verb but `token` and `header` (stdout
 *    and stderr, tables and --json), the stderr of those two too;
 *  - any API answer but the token route's (authorize answers carry the
 *    authorize URL, so the state is allowed there and only there);
 *  - the SQLite files in plain text (tokens are encrypted at rest; the
 *    state is kept only as a hash).
 * No refresh token appears in ANY answer or output, the token route and
 * `tokenctl token` included.
 *
 * zz- so it sorts last; it is self-contained all the same.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const { Broker, httpGet, iniProvider, sleep, waitFor } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const CLIENT_ID = 'fake-client';
const hashOf = (v) => `sha256:${crypto.createHash('sha256').update(v).digest('hex').slice(0, 12)}`;

test('no token, code, verifier, state or client secret in logs, events or answers', { timeout: 120000 }, async (t) => {
  const clientSecret = `cs-${crypto.randomBytes(24).toString('base64url')}`;
  const fp = await startFakeProvider({ expiresIn: 3600 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': clientSecret },
    logLevel: 'debug',
  });
  let stopped = false;
  t.after(async () => {
    if (!stopped) await b.stop();
    await fp.close();
  });

  const outputs = [];   // {what, text, mayHoldToken, mayHoldState}
  const answers = [];   // {what, text, tokenRoute, mayHoldState}
  const states = [];
  const codes = [];

  async function ctl(args, { mayHoldState = false, expect = 0 } = {}) {
    const r = await b.ctl(args);
    const verb = args.find((a) => !a.startsWith('-'));
    const tokenVerb = verb === 'token' || verb === 'header';
    outputs.push({ what: `tokenctl ${args.join(' ')} (stdout)`, text: r.stdout, mayHoldToken: tokenVerb, mayHoldState });
    outputs.push({ what: `tokenctl ${args.join(' ')} (stderr)`, text: r.stderr, mayHoldToken: false, mayHoldState });
    if (expect !== null) assert.equal(r.code, expect, `tokenctl ${args.join(' ')}: ${r.stderr}`);
    return r;
  }
  async function api(method, url, body, { mayHoldState = false } = {}) {
    const r = await b.api(method, url, body);
    const tokenRoute = /^\/v1\/connections\/[^/]+\/(token|invalidate)(\?|$)/.test(url);
    answers.push({ what: `${method} ${url} (${r.status})`, text: JSON.stringify(r.headers) + r.text, tokenRoute, mayHoldState });
    return r;
  }
  /** Everything an admin can look at, in every format. */
  async function lookAround(name) {
    for (const json of [[], ['--json']]) {
      await ctl([...json, 'list']);
      await ctl([...json, 'status']);
      await ctl([...json, 'providers']);
      await ctl([...json, 'events']);
      if (name) {
        await ctl([...json, 'show', name], { expect: null });
        await ctl([...json, 'events', name]);
      }
    }
    await api('GET', '/v1/connections');
    await api('GET', '/v1/status');
    await api('GET', '/v1/providers');
    await api('GET', '/v1/events');
    await api('GET', '/metrics');
    if (name) {
      await api('GET', `/v1/connections/${name}`);
      await api('GET', `/v1/events?connection=${name}`);
    }
  }
  /** Follows an authorize URL through the auto-approving provider to the callback. */
  async function approve(url) {
    states.push(new URL(url).searchParams.get('state'));
    const red = await httpGet(url);
    assert.equal(red.status, 302);
    const cb = new URL(red.headers.location);
    codes.push(cb.searchParams.get('code'));
    const page = await httpGet(cb.toString());
    answers.push({ what: `callback page (${page.status})`, text: JSON.stringify(page.headers) + page.text, tokenRoute: false, mayHoldState: false });
    return page;
  }
  const tokenCalls = () => fp.requests.filter((r) => r.path === '/token').length;

  // 1. Authorize with tokenctl waiting, as an admin would.
  const auth = b.ctlAsync(['authorize', 'leak', '--provider', 'fake', '--timeout', '30']);
  const url = await waitFor(() => (auth.stdout.match(/https?:\/\/\S+\/authorize\?\S+/) || [])[0], { timeoutMs: 10000, what: 'the authorize URL' });
  const page = await approve(url);
  assert.equal(page.status, 200, page.text);
  const done = await auth.done;
  assert.equal(done.code, 0, done.stderr);
  outputs.push({ what: 'tokenctl authorize (stdout)', text: done.stdout, mayHoldToken: false, mayHoldState: true });
  outputs.push({ what: 'tokenctl authorize (stderr)', text: done.stderr, mayHoldToken: false, mayHoldState: true });
  const authorizedAt = Date.now();
  // A second one through the API, --no-wait style, left pending; and a refused one.
  let r = await api('POST', '/v1/connections', { name: 'pend', provider: 'fake' }, { mayHoldState: true });
  assert.equal(r.status, 201);
  states.push(new URL(r.json.authorize_url).searchParams.get('state'));
  r = await ctl(['--json', 'authorize', 'refused', '--provider', 'fake', '--no-wait'], { mayHoldState: true });
  const refusedState = new URL(JSON.parse(r.stdout).authorize_url).searchParams.get('state');
  states.push(refusedState);
  const refusedPage = await httpGet(`${b.publicUrl}/oauth/callback/fake?state=${refusedState}&error=access_denied&error_description=no`);
  assert.equal(refusedPage.status, 400);
  await lookAround('leak');
  await lookAround('pend');

  // 2. Hand out the token.
  const tok = await ctl(['token', 'leak']);
  await ctl(['header', 'leak']);
  await ctl(['--json', 'token', 'leak'], { expect: null });
  r = await api('GET', '/v1/connections/leak/token');
  assert.equal(r.status, 200);
  assert.equal(r.json.access_token, tok.stdout.trim());

  // 3. invalidate (rate limited to once per 5 s per connection: wait that out).
  await sleep(Math.max(0, authorizedAt + 5500 - Date.now()));
  let n = tokenCalls();
  r = await api('POST', '/v1/connections/leak/invalidate');
  assert.equal(r.status, 200, r.text);
  assert.equal(tokenCalls(), n + 1, 'invalidate did not refresh');

  // 4. A min_ttl refresh (the same per-connection limit as invalidate:
  // wait that out again).
  await sleep(5500);
  n = tokenCalls();
  r = await api('GET', '/v1/connections/leak/token?min_ttl=7200');
  assert.equal(r.status, 200, r.text);
  assert.equal(tokenCalls(), n + 1, 'min_ttl did not refresh');
  await ctl(['token', 'leak', '--min-ttl', '7200']);

  // 5. An explicit refresh.
  n = tokenCalls();
  await ctl(['refresh', 'leak']);
  await ctl(['--json', 'refresh', 'leak']);
  assert.equal(tokenCalls(), n + 2);
  await lookAround('leak');

  // 6. A transient failure (500) ...
  let once = { status: 500, body: { error: 'server_error', error_description: 'the token service is down' } };
  fp.respond = (rec) => {
    if (rec.path !== '/token' || !once) return null;
    const o = once;
    once = null;
    return o;
  };
  r = await ctl(['refresh', 'leak'], { expect: null });
  assert.notEqual(r.code, 0, 'a refresh the provider answered 500 succeeded');
  await lookAround('leak');
  // ... and a permanent one (invalid_grant): needs_reauth.
  await waitFor(async () => {
    const s = JSON.parse((await b.ctl(['--json', 'show', 'leak'])).stdout);
    return !s.refreshing;
  }, { timeoutMs: 15000, what: 'no refresh in flight' });
  // The daemon's own backoff retry after the 500 may reach the provider
  // before the refresh asked for here: every token request is refused
  // until the connection needs re-authorization, so whichever comes first
  // meets invalid_grant and the other cannot repair the grant in between.
  let refused = 0;
  fp.respond = (rec) => {
    if (rec.path !== '/token') return null;
    refused++;
    return { status: 400, body: { error: 'invalid_grant', error_description: 'the grant was revoked' } };
  };
  r = await ctl(['refresh', 'leak'], { expect: null });
  await waitFor(async () => JSON.parse((await b.ctl(['--json', 'show', 'leak'])).stdout).state === 'needs_reauth',
    { timeoutMs: 15000, what: 'leak to need re-authorization' });
  assert.ok(refused >= 1, 'the invalid_grant answer was never asked for');
  fp.respond = null;
  await ctl(['token', 'leak'], { expect: 5 });
  await ctl(['header', 'leak'], { expect: null });
  r = await api('GET', '/v1/connections/leak/token');
  assert.equal(r.status, 409);
  await lookAround('leak');

  // 7. Authorize again (a second code and verifier), then revoke.
  const again = await ctl(['--json', 'authorize', 'leak', '--provider', 'fake', '--no-wait'], { mayHoldState: true });
  assert.equal((await approve(JSON.parse(again.stdout).authorize_url)).status, 200);
  await ctl(['token', 'leak']);
  await lookAround('leak');
  await ctl(['revoke', 'leak']);
  await ctl(['--json', 'revoke', 'pend']);
  assert.ok(fp.requests.some((q) => q.path === '/revoke'), 'no revocation at the provider');
  await lookAround(null);

  // The secrets of the run.
  const tokenReqs = fp.requests.filter((q) => q.path === '/token');
  const verifiers = tokenReqs.map((q) => q.params.code_verifier).filter(Boolean);
  const sentCodes = tokenReqs.map((q) => q.params.code).filter(Boolean);
  const accessTokens = fp.issued.map((i) => i.access_token);
  const refreshTokens = fp.issued.map((i) => i.refresh_token).filter(Boolean);
  const basic = Buffer.from(`${CLIENT_ID}:${clientSecret}`).toString('base64');
  assert.equal(codes.length, 2);
  assert.deepEqual(sentCodes, codes, 'the codes sent to the token endpoint are not the ones the provider issued');
  assert.equal(verifiers.length, 2, 'PKCE code_verifier missing from a code exchange');
  assert.ok(accessTokens.length >= 6 && refreshTokens.length >= 6, `issued ${accessTokens.length} tokens`);
  assert.equal(states.length, 4);
  assert.ok(tokenReqs.every((q) => q.headers.authorization === `Basic ${basic}`), 'client_auth basic not used');
  const secrets = [
    ...[clientSecret, basic].map((v) => ['client secret', v]),
    ...codes.map((v) => ['authorization code', v]),
    ...verifiers.map((v) => ['code_verifier', v]),
    ...accessTokens.map((v) => ['access token', v]),
    ...refreshTokens.map((v) => ['refresh token', v]),
    ...states.map((v) => ['state', v]),
  ];
  for (const [kind, v] of secrets) assert.ok(v && v.length >= 16, `${kind} too short to search for: ${v}`);

  // Stop cleanly first, so the log is complete.
  const st = await b.stop();   // the folder stays until the harness has checked the test
  stopped = true;
  assert.deepEqual({ code: st.code, signal: st.signal }, { code: 0, signal: null });

  const leaks = [];
  const check = (where, text, { mayHoldToken = false, mayHoldState = false } = {}) => {
    for (const [kind, v] of secrets) {
      if (mayHoldState && kind === 'state') continue;
      if (mayHoldToken && kind === 'access token') continue;
      if (text.includes(v)) leaks.push(`${kind} (${hashOf(v)}) in ${where}`);   // never a part of the secret itself
    }
  };
  const log = b.log();
  assert.ok(log.length > 0 && /debug|refresh/i.test(log), 'the daemon log is empty: nothing was checked');
  check('the daemon log', log);
  const events = b.sql('SELECT * FROM events ORDER BY rowid');
  assert.ok(events.length >= 5, `only ${events.length} events`);
  check('the events table', JSON.stringify(events));
  for (const o of outputs) check(o.what, o.text, o);
  for (const a of answers) {
    if (a.tokenRoute) {
      for (const v of refreshTokens) if (a.text.includes(v)) leaks.push(`refresh token in ${a.what}`);
      for (const v of [...codes, ...verifiers, clientSecret, basic]) if (a.text.includes(v)) leaks.push(`code/verifier/secret in ${a.what}`);
    } else check(`the answer to ${a.what}`, a.text, a);
  }
  // Refresh tokens leave the daemon nowhere, token route and `token` included.
  for (const o of [...outputs, ...answers]) {
    for (const v of refreshTokens) if (o.text.includes(v)) leaks.push(`refresh token in ${o.what}`);
  }
  // At rest: nothing in plain text in the database files.
  const stateDir = path.dirname(b.db);
  for (const f of fs.readdirSync(stateDir)) {
    const bytes = fs.readFileSync(path.join(stateDir, f)).toString('latin1');
    for (const [kind, v] of secrets) if (bytes.includes(v)) leaks.push(`${kind} in plain text in ${f}`);
  }
  // The search itself works: the token verbs and the token route do show
  // access tokens, and authorize shows its state.
  assert.ok(outputs.some((o) => o.mayHoldToken && accessTokens.some((v) => o.text.includes(v))), 'self-check: no access token found where one must be');
  assert.ok(answers.some((a) => a.tokenRoute && accessTokens.some((v) => a.text.includes(v))), 'self-check: no access token in a token answer');
  assert.ok(outputs.some((o) => o.mayHoldState && states.some((v) => o.text.includes(v))), 'self-check: no state in authorize output');
  t.diagnostic(`checked ${secrets.length} secrets against ${log.length} bytes of log, ${events.length} events, ` +
    `${outputs.length} tokenctl outputs, ${answers.length} API answers`);
  assert.deepEqual([...new Set(leaks)], [], 'secrets leaked');
});

test('a provider that echoes the secrets it was sent in its error text: they are not repeated', { timeout: 120000 }, async (t) => {
  // Providers that bend the standard sometimes quote the request in
  // error_description ("invalid refresh token rt-..."). The broker logs
  // and stores that text (last_error, events, the callback page), so it
  // must take the secrets it sent out of it first.
  const clientSecret = `cs-${crypto.randomBytes(24).toString('base64url')}`;
  const fp = await startFakeProvider();
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf({ client_auth: 'post' })) },
    secrets: { 'fake.secret': clientSecret },
    logLevel: 'debug',
  });
  let stopped = false;
  t.after(async () => { if (!stopped) await b.stop(); await fp.close(); });

  // Authorize, then let every refresh fail with an echo of the request.
  let r = await b.ctl(['--json', 'authorize', 'echo', '--provider', 'fake', '--no-wait']);
  let red = await httpGet(JSON.parse(r.stdout).authorize_url);
  assert.equal((await httpGet(red.headers.location)).status, 200);
  fp.respond = (rec) => {
    if (rec.path !== '/token') return null;
    const p = rec.params;
    return {
      status: 400,
      body: {
        error: 'invalid_grant',
        error_description: p.grant_type === 'refresh_token'
          ? `refresh token ${p.refresh_token} is not valid for client_secret=${p.client_secret}`
          : `code ${p.code} already used (verifier ${p.code_verifier}, secret ${p.client_secret})`,
      },
    };
  };
  r = await b.ctl(['refresh', 'echo']);
  assert.equal(r.code, 5, r.stderr);
  const outputs = [['tokenctl refresh (stderr)', r.stderr]];
  // And a code exchange that fails the same way: the browser sees an error page.
  r = await b.ctl(['--json', 'authorize', 'echo2', '--provider', 'fake', '--no-wait']);
  const state = new URL(JSON.parse(r.stdout).authorize_url).searchParams.get('state');
  red = await httpGet(JSON.parse(r.stdout).authorize_url);
  const page = await httpGet(red.headers.location);
  assert.equal(page.status, 502, page.text);
  outputs.push(['the callback page', page.text]);
  for (const args of [['show', 'echo'], ['--json', 'show', 'echo'], ['show', 'echo2'], ['--json', 'list'], ['list'],
    ['events'], ['--json', 'events'], ['token', 'echo']]) {
    const o = await b.ctl(args);
    outputs.push([`tokenctl ${args.join(' ')}`, o.stdout + o.stderr]);
  }
  for (const u of ['/v1/connections', '/v1/connections/echo', '/v1/connections/echo2', '/v1/events', '/v1/connections/echo/token']) {
    outputs.push([`GET ${u}`, (await b.api('GET', u)).text]);
  }
  await b.stop();   // the folder stays until the harness has checked the test
  stopped = true;

  const tokenReqs = fp.requests.filter((q) => q.path === '/token');
  const secrets = [
    ['client secret', clientSecret],
    ...fp.issued.map((i) => ['refresh token', i.refresh_token]),
    ...tokenReqs.map((q) => ['authorization code', q.params.code]).filter(([, v]) => v),
    ...tokenReqs.map((q) => ['code_verifier', q.params.code_verifier]).filter(([, v]) => v),
    ['state', state],
  ];
  assert.ok(tokenReqs.some((q) => q.params.grant_type === 'refresh_token'), 'no refresh was attempted');
  const leaks = [];
  const check = (where, text) => {
    for (const [kind, v] of secrets) if (text.includes(v)) leaks.push(`${kind} in ${where}`);
  };
  check('the daemon log', b.log());
  check('the events table', JSON.stringify(b.sql('SELECT * FROM events')));
  check('the connections table (last_error)', JSON.stringify(b.sql('SELECT name, last_error FROM connections')));
  for (const [where, text] of outputs) check(where, text);
  assert.deepEqual([...new Set(leaks)], [],
    'BUG (daemon/oauth.c oauth_parse_token_response): the provider\'s error_description is logged, stored as ' +
    'last_error, recorded in events and shown on the callback page verbatim (sanitize() only strips control ' +
    'characters), so a provider that quotes the request leaks the refresh token, code, verifier or client secret');
});
