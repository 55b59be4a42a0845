'use strict';
/*
 * A contract test per preset (conf/providers.d/NAME.conf): each preset is
 * driven through the real daemon against a fake HTTPS provider that
 * answers as that provider's documentation shows, and what the broker
 * sends is checked against the documentation's requests. The fixtures are
 * tests/fixtures/providers/NAME/contract.json (format in the README there).
 *
 * One throwaway CA and server certificate (openssl(1)) cover every host a
 * fixture names; ONE node:https server on 127.0.0.1 plays every provider;
 * each broker trusts the CA ([broker] ca_file) and sends HOST:443 to the
 * server ([broker] connect_to), so the preset's own https:// URLs are used
 * unchanged. Per preset (one subtest each): the grant (authorize URL, the
 * callback with the documented extra query parameters, the code exchange,
 * userinfo), the identity/metadata/scope, two refreshes, the usage rule
 * (tokenctl test, or the token answer's usage), a permanent error and the
 * state it leaves, and, when the preset revokes, a new grant and its
 * revocation. Every request is matched in order against the fixture; a
 * request the fixture does not expect fails the subtest.
 *
 * Also checked: every preset has a fixture, every fixture a preset, a
 * `source` and a `checked` date.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const { Broker, ROOT, waitFor, httpGet } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

const PRESETS = path.join(ROOT, 'conf', 'providers.d');
const FIXTURES = path.join(ROOT, 'tests', 'fixtures', 'providers');

function presetNames() {
  return fs.readdirSync(PRESETS).filter((f) => f.endsWith('.conf')).map((f) => f.slice(0, -5)).sort();
}

function loadFixtures() {
  const out = {};
  if (!fs.existsSync(FIXTURES)) return out;
  for (const d of fs.readdirSync(FIXTURES).sort()) {
    const f = path.join(FIXTURES, d, 'contract.json');
    if (fs.existsSync(f)) out[d] = JSON.parse(fs.readFileSync(f, 'utf8'));
  }
  return out;
}

const rand = (n = 24) => crypto.randomBytes(n).toString('base64url');
const b64url = (buf) => Buffer.from(buf).toString('base64url');

/* ---- the throwaway CA ---------------------------------------------------- */

function openssl(args, cwd) {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

function makeCerts(dir, hosts) {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=tokenbroker contract test CA'], dir);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr',
    '-subj', '/CN=preset-contracts'], dir);
  fs.writeFileSync(path.join(dir, 'ext.cnf'),
    `subjectAltName=${hosts.map((h) => `DNS:${h}`).join(',')}\nbasicConstraints=CA:FALSE\n` +
    'keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf'], dir);
  return {
    ca: path.join(dir, 'ca.pem'),
    key: fs.readFileSync(path.join(dir, 'server.key')),
    cert: fs.readFileSync(path.join(dir, 'server.pem')),
  };
}

/* Every host a fixture's requests go to. */
function fixtureHosts(fixtures) {
  const hosts = new Set();
  for (const fx of Object.values(fixtures)) {
    for (const x of fx.exchanges ?? []) if (x.request?.url) hosts.add(new URL(x.request.url).hostname);
  }
  return [...hosts].sort();
}

/* ---- placeholders ---------------------------------------------------------- */

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/*
 * Matches an actual value against an expected template: literal text, with
 * ${any} (any non-empty value), ${code_verifier} (checked against the
 * authorize request's code_challenge) and the run's values
 * (${code}, ${redirect_uri}, ${client_id}, ${client_secret},
 * ${refresh_token}, ${access_token}, ${basic_auth}, ${state}). Returns
 * null when it matches, else why not (never a secret's value).
 */
function matchValue(expected, actual, run, what) {
  if (typeof expected !== 'string') expected = JSON.stringify(expected);
  if (actual === undefined || actual === null) return `${what}: missing (expected ${expected})`;
  actual = typeof actual === 'string' ? actual : JSON.stringify(actual);
  let re = '';
  const verifiers = [];
  let last = 0;
  for (const m of expected.matchAll(/\$\{([a-z_]+)\}/g)) {
    re += escapeRe(expected.slice(last, m.index));
    last = m.index + m[0].length;
    const name = m[1];
    if (name === 'any') re += '(.+)';
    else if (name === 'code_verifier') { re += '([A-Za-z0-9._~-]{43,128})'; verifiers.push(true); }
    else if (name in run.values) re += escapeRe(String(run.values[name]));
    else return `${what}: the fixture names an unknown placeholder \${${name}}`;
  }
  re += escapeRe(expected.slice(last));
  const m = new RegExp(`^${re}$`, 's').exec(actual);
  const shown = (s) => (run.secretValues().some((v) => v && s.includes(v)) ? '(a value holding a secret)' : s);
  if (!m) return `${what}: got ${JSON.stringify(shown(actual))}, expected ${JSON.stringify(expected)}`;
  if (verifiers.length > 0) {
    const idx = [...expected.matchAll(/\$\{([a-z_]+)\}/g)].filter((x) => x[1] === 'any' || x[1] === 'code_verifier');
    idx.forEach((x, i) => {
      if (x[1] !== 'code_verifier') return;
      const v = m[i + 1];
      const want = run.challengeMethod === 'plain' ? v : b64url(crypto.createHash('sha256').update(v).digest());
      if (!run.codeChallenge) run.problems.push(`${what}: a code_verifier but the authorize URL had no code_challenge`);
      else if (want !== run.codeChallenge) run.problems.push(`${what}: the code_verifier does not match the code_challenge`);
    });
  }
  return null;
}

/* Fills a response template: ${new_access_token}, ${new_refresh_token}, ${new_id_token} fresh, the rest of run.values. */
function fill(template, run) {
  if (typeof template === 'string') {
    return template.replace(/\$\{([a-z_]+)\}/g, (all, name) => {
      if (name.startsWith('new_')) {
        if (!run.fresh[name]) {
          run.fresh[name] = `${name.slice(4).replace(/_/g, '-')}-${rand(18)}`;
          recordSecret(run.fresh[name]);
        }
        return run.fresh[name];
      }
      return name in run.values ? String(run.values[name]) : all;
    });
  }
  if (Array.isArray(template)) return template.map((x) => fill(x, run));
  if (template && typeof template === 'object') {
    return Object.fromEntries(Object.entries(template).map(([k, v]) => [k, fill(v, run)]));
  }
  return template;
}

/* Checks parameters (query, form, JSON object) against the expected ones. */
function matchParams(expected, actual, allowExtra, run, what, problems) {
  for (const [k, v] of Object.entries(expected ?? {})) {
    const why = matchValue(v, actual[k], run, `${what} ${k}`);
    if (why) problems.push(why);
  }
  if (allowExtra === true) return;
  for (const k of Object.keys(actual)) {
    if (!(k in (expected ?? {})) && !(Array.isArray(allowExtra) && allowExtra.includes(k))) {
      problems.push(`${what}: unexpected parameter ${k}`);
    }
  }
}

function matchRequest(exp, got, run) {
  const problems = [];
  const where = `${exp.method ?? 'GET'} ${exp.url}`;
  if ((exp.method ?? 'GET') !== got.method) problems.push(`method: got ${got.method}, expected ${exp.method}`);
  const eu = new URL(exp.url);
  const gu = new URL(got.url);
  if (eu.protocol !== gu.protocol || eu.host !== gu.host || eu.pathname !== gu.pathname) {
    problems.push(`url: got ${gu.protocol}//${gu.host}${gu.pathname}, expected ${eu.protocol}//${eu.host}${eu.pathname}`);
  }
  const expQuery = { ...Object.fromEntries(eu.searchParams), ...(exp.query ?? {}) };
  matchParams(expQuery, Object.fromEntries(gu.searchParams), exp.allow_extra_query, run, 'query', problems);
  for (const [h, v] of Object.entries(exp.headers ?? {})) {
    let actual = got.headers[h.toLowerCase()];
    if (h.toLowerCase() === 'content-type' && actual && !/[;]/.test(v)) actual = actual.split(';')[0].trim();
    const why = matchValue(v, actual, run, `header ${h}`);
    if (why) problems.push(why);
  }
  for (const h of exp.absent_headers ?? []) {
    if (got.headers[h.toLowerCase()] !== undefined) problems.push(`header ${h}: present, expected absent`);
  }
  if (exp.form) {
    const ct = (got.headers['content-type'] ?? '').split(';')[0].trim();
    if (ct !== 'application/x-www-form-urlencoded') problems.push(`body: content-type ${ct}, expected a form`);
    matchParams(exp.form, Object.fromEntries(new URLSearchParams(got.body)), exp.allow_extra, run, 'form', problems);
  } else if (exp.json) {
    let body;
    try { body = JSON.parse(got.body); } catch { problems.push('body: not JSON'); }
    if (body) matchParams(exp.json, body, exp.allow_extra, run, 'json', problems);
  } else if (exp.text !== undefined) {
    const why = matchValue(exp.text, got.body, run, 'body');
    if (why) problems.push(why);
  } else if (got.body.length > 0 && exp.body_allowed !== true) {
    problems.push(`body: expected none, got ${got.body.length} bytes`);
  }
  return problems.map((p) => `${where}: ${p}`);
}

/* ---- the fake provider ------------------------------------------------------ */

function startServer(tls) {
  const server = {
    queue: [],        // [{step, exchange}] expected next, in order
    seen: [],         // [{step, problems}] as they came
    unexpected: [],   // requests nobody expected
    run: null,
  };
  server.https = https.createServer({ key: tls.key, cert: tls.cert }, (req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const got = {
        method: req.method,
        url: `https://${req.headers.host}${req.url}`,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      };
      const next = server.queue.shift();
      if (!next || !server.run) {
        server.unexpected.push(`${got.method} ${got.url.split('?')[0]}`);
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end('{"error":"not_expected_by_the_fixture"}');
        return;
      }
      const run = server.run;
      const problems = matchRequest(next.exchange.request, got, run);
      server.seen.push({ step: next.step, problems });
      const rsp = next.exchange.response ?? { status: 200 };
      const headers = { ...(rsp.headers ?? {}) };
      let body = '';
      if (rsp.json !== undefined) {
        body = JSON.stringify(fill(rsp.json, run));
        headers['content-type'] ??= 'application/json';
      } else if (rsp.form !== undefined) {
        body = new URLSearchParams(fill(rsp.form, run)).toString();
        headers['content-type'] ??= 'application/x-www-form-urlencoded';
      } else if (rsp.text !== undefined) {
        body = fill(rsp.text, run);
      }
      if (next.onResponse) next.onResponse(rsp, body);
      res.writeHead(rsp.status ?? 200, headers);
      res.end(body);
    });
  });
  return new Promise((resolve) => server.https.listen(0, '127.0.0.1', () => {
    server.port = server.https.address().port;
    resolve(server);
  }));
}

/* ---- one preset ------------------------------------------------------------- */

function stepsOf(fx, name) {
  return (fx.exchanges ?? []).filter((x) => x.step === name);
}

/* Values the response gave: the run's current tokens. */
function absorb(run, rsp) {
  if (!rsp || rsp.json === undefined) return;
  const j = fill(rsp.json, run);
  const at = run.fixture.access_token_path ? pick(j, run.fixture.access_token_path) : j.access_token;
  const rt = run.fixture.refresh_token_path ? pick(j, run.fixture.refresh_token_path) : j.refresh_token;
  if (typeof at === 'string') run.values.access_token = at;
  if (typeof rt === 'string') run.values.refresh_token = rt;
}

function pick(obj, pointer) {
  return pointer.split('/').slice(1).reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), obj);
}

async function expectExchange(server, step, exchange, action) {
  server.seen = [];
  server.queue.push({ step, exchange, onResponse: (rsp) => absorb(server.run, rsp) });
  const result = await action();
  await waitFor(() => server.queue.length === 0, { timeoutMs: 30000, what: `the ${step} request` });
  return result;
}

function assertClean(server, run, what) {
  const problems = [...server.seen.flatMap((s) => s.problems), ...run.problems];
  const unexpected = server.unexpected.splice(0);
  run.problems = [];
  assert.deepEqual(problems, [], `${what}: the broker's request differs from the documentation`);
  assert.deepEqual(unexpected, [], `${what}: requests the fixture does not expect`);
}

async function runPreset(t, server, tls, name, fx) {
  const clientSecret = fx.client_secret ?? `sec-${crypto.randomBytes(16).toString('hex')}`;
  const code = `code-${rand(12)}`;
  recordSecret(code);
  const config = [...(fx.config ?? [])];
  const clientId = (config.find((l) => /^client_id\s*=/.test(l)) ?? '').replace(/^client_id\s*=\s*/, '');
  assert.ok(clientId, `${name}: the fixture's config must set client_id`);
  const connectTo = fixtureHosts({ [name]: fx }).map((h) => `${h}:443:127.0.0.1:${server.port}`);
  const b = await Broker.prepare({ broker: { presets_dir: PRESETS, ca_file: tls.ca } });
  b.opts.providers = { [name]: `[provider]\npreset = ${name}\n${config.join('\n')}\nclient_secret_file = ${name}.secret\n` };
  b.opts.secrets = { [`${name}.secret`]: clientSecret };
  b.writeConfig();
  // connect_to repeats, one line per host: appended (the harness's broker keys are unique)
  fs.appendFileSync(b.confPath, connectTo.map((c) => `connect_to = ${c}\n`).join(''));
  await b.launch();
  t.after(async () => {
    server.run = null;
    server.queue = [];
    const st = await b.stop();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });

  const provs = (await b.api('GET', '/v1/providers')).json.providers;
  const prov = provs.find((p) => p.name === name);
  assert.ok(prov, `${name}: loaded`);
  const redirectUri = prov.redirect_uri;
  const run = {
    fixture: fx,
    values: {
      code, redirect_uri: redirectUri, client_id: clientId, client_secret: clientSecret,
      basic_auth: Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64'),
    },
    fresh: {},
    problems: [],
    secretValues() {
      return [clientSecret, code, this.values.basic_auth, this.values.state, this.values.access_token, this.values.refresh_token,
        ...Object.values(this.fresh)];
    },
  };
  server.run = run;
  server.unexpected = [];
  const conn = `c-${name}`;
  const params = Object.entries(fx.params ?? {}).flatMap(([k, v]) => ['--param', `${k}=${v}`]);
  const grantStep = stepsOf(fx, 'code')[0] ?? stepsOf(fx, 'grant')[0];
  assert.ok(grantStep, `${name}: the fixture needs a "code" (or "grant") exchange`);
  const userinfo = stepsOf(fx, 'userinfo')[0];
  if (prov.userinfo_url) assert.ok(userinfo, `${name}: the preset has a userinfo_url: the fixture needs a "userinfo" exchange`);

  /* a. + b.: the grant */
  const grant = async () => {
    run.fresh = {};
    if (prov.grant === 'client_credentials') {
      const done = expectExchange(server, 'grant', grantStep.exchange ?? grantStep, async () => {
        const r = await b.ctl(['authorize', conn, '--provider', name, ...params]);
        assert.equal(r.code, 0, r.stderr);
      });
      await done;
    } else {
      const r = await b.ctl(['--json', 'authorize', conn, '--provider', name, '--no-wait', ...params]);
      assert.equal(r.code, 0, r.stderr);
      const au = new URL(JSON.parse(r.stdout).authorize_url);
      const ea = fx.authorize;
      assert.ok(ea && ea.url, `${name}: the fixture needs authorize.url`);
      const eu = new URL(ea.url);
      assert.equal(`${au.protocol}//${au.host}${au.pathname}`, `${eu.protocol}//${eu.host}${eu.pathname}`, 'authorize URL');
      const q = Object.fromEntries(au.searchParams);
      run.codeChallenge = q.code_challenge;
      run.challengeMethod = q.code_challenge_method ?? 'plain';
      run.values.state = q.state;
      const problems = [];
      matchParams({ ...Object.fromEntries(eu.searchParams), ...(ea.query ?? {}) }, q, ea.allow_extra_query, run, 'authorize query', problems);
      assert.deepEqual(problems, [], `${name}: the authorize URL differs from the documentation`);
      const cb = new URL(redirectUri);
      cb.searchParams.set('code', code);
      cb.searchParams.set('state', q.state);
      for (const [k, v] of Object.entries(ea.callback_extra ?? {})) cb.searchParams.set(k, v);
      server.seen = [];
      const queued = [{ step: 'code', exchange: grantStep }];
      if (userinfo) queued.push({ step: 'userinfo', exchange: userinfo });
      for (const x of queued) server.queue.push({ ...x, onResponse: x.step === 'code' ? (rsp) => absorb(run, rsp) : undefined });
      const page = await httpGet(cb.toString());
      assert.ok(page.status < 400, `callback answered ${page.status}: ${page.text}`);
    }
    await waitFor(async () => {
      const c = (await b.api('GET', `/v1/connections/${conn}`)).json;
      return c.state === 'active' && !c.refreshing;
    }, { timeoutMs: 30000, what: `${conn} active` });
    assertClean(server, run, `${name} grant`);
    assert.equal(server.queue.length, 0, `${name}: the broker did not make every grant request (${server.queue.map((x) => x.step)})`);
  };
  await grant();

  /* c.: the connection as shown and the token answer */
  const show = async () => {
    const r = await b.ctl(['--json', 'show', conn]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const token = async () => {
    const r = await b.api('GET', `/v1/connections/${conn}/token`);
    assert.equal(r.status, 200, r.text);
    return r.json;
  };
  const s = await show();
  const exp = fx.expect ?? {};
  if (exp.identity !== undefined) assert.equal(s.identity, exp.identity, 'identity');
  if (exp.scope !== undefined) assert.equal(s.scope, exp.scope, 'scope');
  if (exp.metadata !== undefined) assert.deepEqual(s.metadata, exp.metadata, 'metadata shown');
  if (exp.refresh_token_ends_in !== undefined) {
    // the refresh token's known end (refresh_token_expires_in_pointer, refresh_token_lifetime), within 10 minutes
    assert.ok(Math.abs((s.refresh_token_ends_in ?? -1e12) - exp.refresh_token_ends_in) < 600,
      `refresh_token_ends_in ${s.refresh_token_ends_in}, expected about ${exp.refresh_token_ends_in}`);
  }
  let tk = await token();
  assert.equal(tk.access_token, run.values.access_token, 'the token answer carries the new access token');
  if (exp.metadata !== undefined) assert.deepEqual(tk.metadata, exp.metadata, 'metadata in the token answer');

  /* d.: two refreshes, each presenting the refresh token the last answer gave
   * (none when the fixture says why the preset cannot refresh: no_refresh) */
  const refreshes = stepsOf(fx, 'refresh');
  assert.ok(refreshes.length >= 1 || fx.no_refresh, `${name}: the fixture needs "refresh" exchanges (or "no_refresh": why)`);
  for (let i = 0; i < (fx.no_refresh ? 0 : 2); i++) {
    const x = refreshes[Math.min(i, refreshes.length - 1)];
    run.fresh = {};
    await expectExchange(server, `refresh ${i + 1}`, x, async () => {
      const r = await b.ctl(['refresh', conn]);
      assert.equal(r.code, 0, `refresh ${i + 1}: ${r.stderr}`);
    });
    assertClean(server, run, `${name} refresh ${i + 1}`);
    tk = await token();
    assert.equal(tk.access_token, run.values.access_token, `refresh ${i + 1}: the token answer carries the new access token`);
    if (exp.metadata !== undefined && x.expect_metadata === undefined) assert.deepEqual(tk.metadata, exp.metadata);
    if (x.expect_metadata !== undefined) assert.deepEqual(tk.metadata, x.expect_metadata);
  }

  /* e.: the usage rule */
  const testStep = stepsOf(fx, 'test')[0];
  if (prov.test_url) {
    assert.ok(testStep, `${name}: the preset has a test_url: the fixture needs a "test" exchange`);
    await expectExchange(server, 'test', testStep, async () => {
      const r = await b.ctl(['test', conn]);
      assert.equal(r.code, 0, `tokenctl test: ${r.stdout}${r.stderr}`);
    });
    assertClean(server, run, `${name} test`);
  } else {
    assert.ok(fx.usage, `${name}: no test_url: the fixture needs "usage" (headers or query of the token answer)`);
    const problems = [];
    matchParams(fx.usage.headers, tk.headers ?? {}, true, run, 'usage header', problems);
    matchParams(fx.usage.query, tk.query ?? {}, true, run, 'usage query', problems);
    assert.deepEqual(problems, [], `${name}: the usage rule differs`);
  }

  /* f.: a permanent error */
  const perm = stepsOf(fx, 'permanent-error')[0];
  assert.ok(perm || fx.no_refresh, `${name}: the fixture needs a "permanent-error" exchange`);
  if (perm) {
    await expectExchange(server, 'permanent-error', perm, async () => {
      const r = await b.ctl(['refresh', conn]);
      assert.notEqual(r.code, 0, 'the refresh that meets a permanent error fails');
    });
    assertClean(server, run, `${name} permanent error`);
    const want = perm.expect_state ?? 'needs_reauth';
    await waitFor(async () => (await b.api('GET', `/v1/connections/${conn}`)).json.state === want,
      { timeoutMs: 20000, what: `${conn} ${want}` });
    const shown = await b.ctl(['show', conn]);
    assert.equal(shown.code, 0, shown.stderr);
    const errName = perm.expect_error ?? perm.response?.json?.error;
    if (errName) assert.ok(shown.stdout.includes(errName), `tokenctl show names the error ${errName}:\n${shown.stdout}`);
  }

  /* g.: revocation, after a new grant (the dead one holds no token) */
  const revokes = stepsOf(fx, 'revoke');
  if (prov.revoke_url) assert.ok(revokes.length > 0, `${name}: the preset has a revoke_url: the fixture needs "revoke" exchanges`);
  if (revokes.length > 0) {
    await grant();
    server.seen = [];
    for (const x of revokes) server.queue.push({ step: 'revoke', exchange: x });
    const r = await b.ctl(['revoke', conn]);
    assert.equal(r.code, 0, `tokenctl revoke: ${r.stdout}${r.stderr}`);
    await waitFor(() => server.queue.length === 0, { timeoutMs: 20000, what: 'the revoke requests' });
    assertClean(server, run, `${name} revoke`);
  }
}

/* ---- the tests -------------------------------------------------------------- */

const fixtures = loadFixtures();


test('every preset has a contract fixture naming its sources and the date it was checked', () => {
  const presets = presetNames();
  const missing = presets.filter((p) => !fixtures[p]);
  assert.deepEqual(missing, [], 'presets without tests/fixtures/providers/NAME/contract.json');
  for (const [name, fx] of Object.entries(fixtures)) {
    assert.ok(presets.includes(name), `fixture ${name} has no preset`);
    assert.equal(fx.preset, name, `${name}: "preset" names the folder's preset`);
    assert.ok(Array.isArray(fx.source) && fx.source.length > 0 && fx.source.every((u) => /^https:\/\//.test(u)),
      `${name}: "source" lists the documentation's https:// URLs`);
    assert.match(fx.checked ?? '', /^\d{4}-\d{2}-\d{2}$/, `${name}: "checked" is a date`);
  }
});

test('each preset against its documented contract', { timeout: 1800000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-contracts-'));
  const only = process.env.TB_CONTRACTS ? process.env.TB_CONTRACTS.split(',') : null;
  const chosen = Object.fromEntries(Object.entries(fixtures).filter(([n]) => !only || only.includes(n)));
  const tls = makeCerts(dir, fixtureHosts(chosen));
  const server = await startServer(tls);
  t.after(() => {
    server.https.closeAllConnections?.();
    server.https.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const [name, fx] of Object.entries(chosen)) {
    await t.test(name, { timeout: 120000 }, (st) => runPreset(st, server, tls, name, fx));
  }
});
