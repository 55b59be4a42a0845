'use strict';
/*
 * `tokenctl preview PROVIDER` and `tokenctl trace NAME` (issue 12, "must
 * show" item 3).
 *
 * Preview: the output for three shipped presets (conf/providers.d) is
 * compared byte for byte with golden files in tests/fixtures/preview/
 * (TOKENBROKER_UPDATE_GOLDEN=1 rewrites them after a deliberate preset
 * change); the configured client secret appears nowhere, the placeholders
 * do. Trace: after a grant and a refresh the provider refuses (500, then
 * invalid_grant), the trace shows every exchange with the client secret,
 * the code, the verifier and the tokens replaced by placeholders; a
 * non-admin uid gets 403.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { Broker, BUILD, followAuthorize, iniProvider, waitFor } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { recordSecret } = require('../lib/suite.js');

const ROOT = path.resolve(__dirname, '..', '..');
const PRESETS = path.join(ROOT, 'conf', 'providers.d');
const GOLDEN = path.join(ROOT, 'tests', 'fixtures', 'preview');
const UPDATE = process.env.TOKENBROKER_UPDATE_GOLDEN === '1';

function golden(file, actual) {
  const p = path.join(GOLDEN, file);
  if (UPDATE) fs.writeFileSync(p, actual);
  assert.equal(actual, fs.readFileSync(p, 'utf8'), `${file} differs from the golden file (TOKENBROKER_UPDATE_GOLDEN=1 rewrites it)`);
}

test('tokenctl preview: golden output for three presets, secrets as placeholders', { timeout: 120000 }, async (t) => {
  const names = ['github', 'google', 'microsoft'];
  const all = [...names, 'ms-client-credentials'];
  const secrets = Object.fromEntries(all.map((n) => [n, `preview-secret-${n}-${process.pid}-9f8e7d`]));
  const b = await Broker.prepare({
    // a fixed public URL: the redirect URI is part of the output
    broker: { public_url: 'https://broker.example' },
  });
  t.after(async () => { await b.stop(); });
  b.writeConfig();
  fs.mkdirSync(path.join(b.dir, 'secrets'), { mode: 0o700 });
  for (const n of all) {
    fs.copyFileSync(path.join(PRESETS, `${n}.conf`), path.join(b.dir, 'providers.d', `${n}.conf`));
    recordSecret(secrets[n]);
    fs.writeFileSync(path.join(b.dir, 'secrets', n), `${secrets[n]}\n`, { mode: 0o600 });
  }
  await b.launch();

  for (const n of names) {
    const r = await b.ctl(['preview', n]);
    assert.equal(r.code, 0, r.stderr);
    for (const s of Object.values(secrets)) assert.ok(!r.stdout.includes(s), `${n}: a client secret in the preview`);
    golden(`${n}.txt`, r.stdout);
    assert.match(r.stdout, /client_secret=<client_secret>/);
    assert.match(r.stdout, /code=<code>/);
    assert.match(r.stdout, /refresh_token=<refresh_token>/);
    assert.match(r.stdout, /Authorization: Bearer <access_token>/);

    const m = await b.ctl(['preview', n, '--mermaid']);
    assert.equal(m.code, 0, m.stderr);
    for (const s of Object.values(secrets)) assert.ok(!m.stdout.includes(s));
    golden(`${n}.mmd`, m.stdout);
    assert.match(m.stdout, /^sequenceDiagram\n/);
    assert.doesNotMatch(m.stdout.replaceAll('<br/>', '').replaceAll('->>', ''), /[<>]/, 'angle brackets are entities in Mermaid text');

    const j = await b.ctl(['--json', 'preview', n]);
    assert.equal(j.code, 0, j.stderr);
    const steps = JSON.parse(j.stdout).steps.map((s) => s.step);
    assert.deepEqual(steps.slice(0, 3), ['authorize', 'callback', 'exchange']);
    assert.ok(steps.includes('refresh') && steps.includes('use'), steps.join(','));
  }

  // a client_credentials provider: one token request, no browser, no refresh
  const cc = await b.ctl(['--json', 'preview', 'ms-client-credentials']);
  assert.equal(cc.code, 0, cc.stderr);
  assert.ok(!cc.stdout.includes(secrets['ms-client-credentials']));
  const ccSteps = JSON.parse(cc.stdout).steps;
  assert.deepEqual(ccSteps.map((s) => s.step), ['token', 'use', 'test']);
  assert.equal(ccSteps[0].body, 'grant_type=client_credentials&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default' +
    '&client_id=00000000-0000-0000-0000-000000000000&client_secret=<client_secret>');

  // parameters pass through as a JSON object
  const p = await b.ctl(['--json', 'preview', 'microsoft', '--param', 'tenant=contoso']);
  assert.equal(p.code, 0, p.stderr);
  assert.deepEqual(JSON.parse(p.stdout).params, { tenant: 'contoso' });
  // bad input: clear errors and exit codes
  const bad = await b.ctl(['preview', 'microsoft', '--param', 'novalue']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--param takes NAME=VALUE/);
  const unknown = await b.ctl(['preview', 'githbu']);
  assert.equal(unknown.code, 4);
  assert.match(unknown.stderr, /no provider named 'githbu' \(did you mean 'github'\?\)/);
});

/** tokenctl as another uid, bounded (see acl.test.js and audit.test.js). */
function ctlAs(b, uid, args) {
  return new Promise((resolve) => {
    const p = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--',
      path.join(BUILD, 'tokenctl'), '--socket', b.socket, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH, HOME: '/' },
    });
    const out = { code: null, stdout: '', stderr: '' };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 30000);
    p.on('close', (code) => { clearTimeout(timer); out.code = code; resolve(out); });
  });
}

test('tokenctl trace: a grant and failed refreshes, every secret replaced; admin only', { timeout: 180000 }, async (t) => {
  const fp = await startFakeProvider();
  const clientSecret = `trace-client-secret-${process.pid}-5a4b3c`;
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf({ client_auth: 'post' })) },
    secrets: { 'fake.secret': clientSecret },
    broker: { trace_entries: 4 },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  fs.chmodSync(b.dir, 0o755);

  const r = await b.api('POST', '/v1/connections', { name: 'svc', provider: 'fake' });
  assert.equal(r.status, 201, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  await waitFor(async () => (await b.api('GET', '/v1/connections/svc')).json?.state === 'active', { timeoutMs: 20000, what: 'the grant' });

  // what the exchange carried: the real values, to look for in the trace
  const exchange = fp.requests.find((q) => q.path === '/token' && q.params.grant_type === 'authorization_code');
  const { code, code_verifier: verifier } = exchange.params;
  const tok = await b.api('GET', '/v1/connections/svc/token');
  assert.equal(tok.status, 200);
  const accessToken = tok.json.access_token;
  assert.ok(code && verifier && accessToken);

  // a refresh the provider fails (500, echoing the secrets it got), then one it refuses
  fp.respond = (q) => (q.path === '/token'
    ? { status: 500, headers: { 'set-cookie': 'sid=cookie-value-123456; HttpOnly' }, body: { error: 'server_error', error_description: `cannot refresh ${q.params.refresh_token} for ${q.params.client_secret}` } }
    : null);
  assert.equal((await b.api('POST', '/v1/connections/svc/refresh')).status, 503);
  fp.respond = (q) => (q.path === '/token' ? { status: 400, body: { error: 'invalid_grant' } } : null);
  await waitFor(async () => (await b.api('GET', '/v1/connections/svc')).json?.state === 'needs_reauth',
    { timeoutMs: 30000, what: 'the invalid_grant refresh (backoff retry or ours)' });
  await b.api('POST', '/v1/connections/svc/refresh');
  // the refresh token, as the broker presented it
  const refreshToken = fp.requests.find((q) => q.path === '/token' && q.params.grant_type === 'refresh_token')?.params.refresh_token;
  assert.ok(refreshToken);

  const txt = await b.ctl(['trace', 'svc']);
  assert.equal(txt.code, 0, txt.stderr);
  const json = await b.ctl(['--json', 'trace', 'svc']);
  assert.equal(json.code, 0, json.stderr);
  const entries = JSON.parse(json.stdout).entries;

  for (const out of [txt.stdout, json.stdout]) {
    const names = ['client secret', 'code', 'verifier', 'access token', 'refresh token', 'cookie'];
    [clientSecret, code, verifier, accessToken, refreshToken, 'cookie-value-123456'].forEach((s, i) => {
      assert.ok(!out.includes(s), `the ${names[i]} is in the trace output`);
    });
  }
  const what = entries.map((e) => `${e.what}:${e.response.status}`);
  assert.ok(what.includes('exchange:200'), what.join(','));
  assert.ok(what.includes('refresh:500'), what.join(','));
  assert.ok(what.includes('refresh:400'), what.join(','));
  const ex = entries.find((e) => e.what === 'exchange');
  assert.equal(ex.request.method, 'POST');
  assert.equal(ex.request.url, fp.url('/token'));
  assert.match(ex.request.body, /grant_type=authorization_code&code=<code>&/);
  assert.match(ex.request.body, /code_verifier=<code_verifier>/);
  assert.match(ex.request.body, /client_secret=<client_secret>/);
  assert.match(ex.response.body, /"access_token":"<access_token>"/);
  assert.match(ex.response.body, /"refresh_token":"<refresh_token>"/);
  const failed = entries.find((e) => e.what === 'refresh' && e.response.status === 500);
  assert.match(failed.request.body, /refresh_token=<refresh_token>/);
  assert.match(failed.response.body, /cannot refresh <refresh_token> for <client_secret>/);
  assert.ok(failed.response.headers.includes('Set-Cookie: <cookie>') ||
    failed.response.headers.some((h) => /^set-cookie: <cookie>$/i.test(h)), failed.response.headers.join('\n'));
  assert.ok(entries.length <= 4, 'trace_entries bounds the ring');
  assert.match(txt.stdout, /refresh POST \S+ -> HTTP 500 in \d+ ms/);
  assert.match(txt.stdout, /exchange POST \S+ -> HTTP 200/);

  // --follow: bounded by --timeout, and it shows what came before too
  const f = await b.ctl(['trace', 'svc', '--follow', '--timeout', '2'], { timeoutMs: 30000 });
  assert.equal(f.code, 0, f.stderr);
  assert.match(f.stdout, /exchange POST/);

  // admin only: an unprivileged uid gets 403 (exit 7)
  const uid = Number(spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).stdout);
  assert.ok(uid > 0);
  const denied = await ctlAs(b, uid, ['trace', 'svc']);
  assert.equal(denied.code, 7, denied.stderr);
  assert.match(denied.stderr, /HTTP 403/);
  const prev = await ctlAs(b, uid, ['preview', 'fake']);
  assert.equal(prev.code, 7, prev.stderr);

  // a removed connection takes its trace along
  assert.equal((await b.api('DELETE', '/v1/connections/svc')).status, 200);
  assert.equal((await b.api('GET', '/v1/connections/svc/trace')).status, 404);
});
