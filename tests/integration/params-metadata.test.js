'use strict';
/*
 * Connection parameters (`param = NAME`, ${param.NAME}, tokenctl authorize
 * --param, the API's "params") and response metadata (`metadata NAME =
 * /pointer` and `= query:PARAM`, ${metadata.NAME}, "metadata" in the token
 * answer), played by the fake provider:
 *  - a tenant-style provider whose URLs hold ${param.tenant}: two
 *    connections on two tenants, each request on its tenant's URL, across
 *    refreshes, a re-authorization and a restart;
 *  - a Salesforce-shaped instance_url in the token answer and an
 *    Intuit-shaped realmId on the callback query: both in the token
 *    answer's metadata, used by test_url and a usage header, updated on
 *    refresh, kept across a restart;
 *  - bad input: an unknown ${param.x}, a metadata pointer at a token, a
 *    value with a line break or a '/' where a host name goes, a missing or
 *    unknown --param: each a file:line or a clear CLI/API error, and no
 *    request reaches the provider.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, BUILD, waitFor, httpGet, iniProvider, noteRun } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

const SECRET = 'fake-secret-Pm7';

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
  await waitFor(async () => {
    const c = (await b.api('GET', `/v1/connections/${name}`)).json;
    return c.state === 'active' && !c.refreshing;
  }, { what: `${name} active` });
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

async function show(b, name) {
  const r = await b.ctl(['--json', 'show', name]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

test('${param.tenant}: two connections on two tenants, across refresh, re-authorization and restart', { timeout: 180000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    tenant: {
      ...fp.providerConf(),
      param: ['tenant : the directory tenant (contoso.onmicrosoft.com)', 'region'],
      authorize_url: fp.url('/t/${param.tenant}/authorize'),
      token_url: fp.url('/t/${param.tenant}/token?region=${param.region}'),
      revoke_url: fp.url('/t/${param.tenant}/revoke'),
      usage_header: ['Authorization: Bearer ${access_token}', 'X-Tenant: ${param.tenant}'],
    },
  }));
  const ua = await authorize(b, 'a', 'tenant', ['--param', 'tenant=contoso', '--param', 'region=eu west']);
  const ub = await authorize(b, 'b', 'tenant', ['--param', 'tenant=fabrikam.example', '--param', 'region=us']);
  assert.equal(ua.pathname, '/t/contoso/authorize');
  assert.equal(ub.pathname, '/t/fabrikam.example/authorize');

  const tokenReqs = () => fp.requests.filter((q) => q.path.endsWith('/token'));
  let reqs = tokenReqs();
  assert.equal(reqs.length, 2);
  const byTenant = (tenant) => tokenReqs().filter((q) => q.tenant === tenant);
  assert.equal(byTenant('contoso').length, 1);
  assert.equal(byTenant('fabrikam.example').length, 1);
  // in the query: percent-encoded, as any placeholder there
  assert.equal(byTenant('contoso')[0].query.region, 'eu west');
  assert.equal(byTenant('fabrikam.example')[0].query.region, 'us');

  // shown, stored, in the listing and in the usage rule
  const sa = await show(b, 'a');
  assert.deepEqual(sa.params, { tenant: 'contoso', region: 'eu west' });
  const text = await b.ctl(['show', 'a']);
  assert.match(text.stdout, /param tenant:\s+contoso/);
  const list = await b.ctl(['--json', 'list']);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /"params":\{[^}]*"tenant":"fabrikam.example"/);
  assert.equal((await token(b, 'a')).headers['X-Tenant'], 'contoso');
  assert.equal((await token(b, 'b')).headers['X-Tenant'], 'fabrikam.example');
  assert.equal((await token(b, 'a')).metadata, undefined);   // no metadata: the answer is as before

  // refreshes go to each connection's tenant
  await refresh(b, 'a');
  await refresh(b, 'b');
  await refresh(b, 'b');
  assert.equal(byTenant('contoso').length, 2);
  assert.equal(byTenant('fabrikam.example').length, 3);
  assert.equal(byTenant('contoso')[1].params.grant_type, 'refresh_token');

  // a re-authorization without --param keeps the values; with one, changes it
  const ua2 = await authorize(b, 'a', 'tenant');
  assert.equal(ua2.pathname, '/t/contoso/authorize');
  const ub2 = await authorize(b, 'b', 'tenant', ['--param', 'tenant=northwind']);
  assert.equal(ub2.pathname, '/t/northwind/authorize');
  assert.deepEqual((await show(b, 'b')).params, { tenant: 'northwind', region: 'us' });

  // kept across a restart
  await b.restart();
  assert.deepEqual((await show(b, 'a')).params, { tenant: 'contoso', region: 'eu west' });
  const before = byTenant('northwind').length;
  await refresh(b, 'b');
  assert.equal(byTenant('northwind').length, before + 1);
  assert.equal(byTenant('northwind').at(-1).query.region, 'us');

  // revocation too
  const rv = await b.ctl(['revoke', 'a']);
  assert.equal(rv.code, 0, rv.stderr);
  const revokes = fp.requests.filter((q) => q.path.endsWith('/revoke'));
  assert.ok(revokes.length >= 1);
  assert.ok(revokes.every((q) => q.path === '/t/contoso/revoke'), revokes.map((q) => q.path).join(' '));
});

test('metadata: instance_url from the token answer, realmId from the callback, in the answer and test_url', { timeout: 180000 }, async (t) => {
  let gen = 0;
  const { fp, b } = await setup(t, (fp) => ({
    sf: {
      ...fp.providerConf(),
      'metadata instance_url': '/instance_url',
      'metadata org': '/org/id',
      'metadata realm': 'query:realmId',
      'metadata gen': '/gen',
      test_url: '${metadata.instance_url}/api/${metadata.realm}/companyinfo?org=${metadata.org}',
      usage_header: ['Authorization: Bearer ${access_token}', 'X-Instance: ${metadata.instance_url}'],
    },
  }), {
    callbackExtra: { realmId: '9130 355' },
    respond: (rec) => (rec.path.startsWith('/api/') ? { status: 200, body: { ok: true } } : null),
  });
  fp.tokenExtra = () => ({ instance_url: fp.base, org: { id: 'org/42' }, gen: ++gen });

  await authorize(b, 'c', 'sf');
  // the exchange itself could use ${metadata.realm}: it is there before
  let tok = await token(b, 'c');
  assert.deepEqual(tok.metadata, { instance_url: fp.base, org: 'org/42', realm: '9130 355', gen: '1' });
  assert.equal(tok.headers['X-Instance'], fp.base);
  const sc = await show(b, 'c');
  assert.deepEqual(sc.metadata, tok.metadata);
  assert.equal(sc.test_url, `${fp.base}/api/9130%20355/companyinfo?org=org%2F42`);
  assert.match((await b.ctl(['show', 'c'])).stdout, /metadata realm:\s+9130 355/);

  // tokenctl test: the request goes to the expanded test_url
  const r = await b.ctl(['test', 'c']);
  assert.equal(r.code, 0, r.stderr);
  const tr = fp.requests.filter((q) => q.path.startsWith('/api/'));
  assert.equal(tr.length, 1);
  assert.equal(tr[0].method, 'GET');
  assert.equal(tr[0].path, '/api/9130%20355/companyinfo');
  assert.equal(tr[0].query.org, 'org/42');
  assert.equal(tr[0].headers.authorization, `Bearer ${tok.access_token}`);

  // updated on every refresh that has it; kept when an answer lacks it
  await refresh(b, 'c');
  assert.equal((await token(b, 'c')).metadata.gen, '2');
  fp.tokenExtra = () => ({});
  await refresh(b, 'c');
  tok = await token(b, 'c');
  assert.deepEqual(tok.metadata, { instance_url: fp.base, org: 'org/42', realm: '9130 355', gen: '2' });

  // kept across a restart
  await b.restart();
  assert.deepEqual((await token(b, 'c')).metadata, tok.metadata);
  assert.equal((await show(b, 'c')).test_url, `${fp.base}/api/9130%20355/companyinfo?org=org%2F42`);
});

test('bad parameter values, missing and unknown --param: clear errors before any request', { timeout: 120000 }, async (t) => {
  const { fp, b } = await setup(t, (fp) => ({
    host: {
      ...fp.providerConf(),
      param: ['tenant : your tenant subdomain'],
      authorize_url: 'https://${param.tenant}.login.example.com/oauth2/authorize',
      token_url: 'https://${param.tenant}.login.example.com/oauth2/token',
      revoke_url: undefined,
    },
  }));
  const bad = async (args, re, code = 2) => {
    const r = await b.ctl(['authorize', 'x', '--provider', 'host', '--no-wait', ...args]);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, re);
  };
  await bad([], /missing parameter 'tenant' \(your tenant subdomain\).*--param tenant=VALUE/);
  await bad(['--param', 'tenant=a', '--param', 'realm=b'], /unknown parameter 'realm' for provider 'host'; it takes: tenant/);
  await bad(['--param', 'tenant=evil.com/x'], /parameter 'tenant' is not a host name/);
  await bad(['--param', 'tenant=evil.com#'], /parameter 'tenant' is not a host name/);
  await bad(['--param', 'tenant=a@b'], /parameter 'tenant' is not a host name/);
  await bad(['--param', 'tenant=a:1'], /parameter 'tenant' is not a host name/);
  await bad(['--param', 'tenant=line\nbreak'], /parameter 'tenant' holds a control character or line break/);
  await bad(['--param', 'tenant'], /--param takes NAME=VALUE/);
  // the API says the same
  const api = await b.api('POST', '/v1/connections', { name: 'y', provider: 'host', params: { tenant: 'a/b' } });
  assert.equal(api.status, 400);
  assert.match(api.json.error_description, /not a host name/);
  const api2 = await b.api('POST', '/v1/connections', { name: 'y', provider: 'host', params: { tenant: 7 } });
  assert.equal(api2.status, 400);
  assert.match(api2.json.error_description, /must be a string/);
  // nothing was created, nothing was sent
  assert.equal((await b.api('GET', '/v1/connections/x')).status, 404);
  assert.equal((await b.api('GET', '/v1/connections/y')).status, 404);
  assert.equal(fp.requests.length, 0);
  // a good value
  const ok = await b.ctl(['--json', 'authorize', 'x', '--provider', 'host', '--no-wait', '--param', 'tenant=contoso-1']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(new URL(JSON.parse(ok.stdout).authorize_url).host, 'contoso-1.login.example.com');
});

/* --check-config on one provider file: its status and output. */
function checkProvider(t, text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-pm-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'providers.d'));
  fs.writeFileSync(path.join(dir, 'tb.conf'), '[broker]\nstate_dir = state\nsocket = tb.sock\nproviders_dir = providers.d\ncallback_listen = 127.0.0.1:1\n');
  recordSecret('made-up-secret-pm');
  fs.writeFileSync(path.join(dir, 'providers.d', 'p.conf'), text, { mode: 0o600 });
  const r = spawnSync(path.join(BUILD, 'tokenbrokerd'), ['--check-config', '-c', path.join(dir, 'tb.conf')],
    { encoding: 'utf8', timeout: 30000 });
  noteRun('check-config', `${r.stdout ?? ''}${r.stderr ?? ''}`);
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test('provider files: unknown ${param.x}, metadata at a token, misplaced placeholders: file:line', { timeout: 60000 }, (t) => {
  const head = '[provider]\nclient_id = c\nclient_secret = made-up-secret-pm\nauthorize_url = https://a.example.com/auth\n';
  const cases = [
    [`${head}token_url = https://a.example.com/\${param.tenant}/token\n`, /p\.conf:5: Unknown placeholder '\$\{param\.tenant\}' in token_url: no 'param = tenant'/],
    [`${head}param = tenant\ntoken_url = https://a.example.com/t\ntest_url = https://a.example.com/\${param.tenat}\n`, /p\.conf:7: Unknown placeholder '\$\{param\.tenat\}' in test_url/],
    [`${head}token_url = https://a.example.com/t\nusage_header = X-Org: \${metadata.org}\n`, /p\.conf:6: Unknown placeholder '\$\{metadata\.org\}' in usage_header/],
    [`${head}token_url = https://a.example.com/t\nmetadata at = /access_token\n`, /p\.conf:6: metadata at = \/access_token points at a token/],
    [`${head}token_url = https://a.example.com/t\naccess_token_pointer = /data/token\nmetadata d = /data\n`, /p\.conf:7: metadata d = \/data points at a token \(\/data\/token\)/],
    [`${head}token_url = https://a.example.com/t\nmetadata u = /authed_user/refresh_token\n`, /p\.conf:6: .*points at a secret/],
    [`${head}token_url = https://a.example.com/t\nmetadata c = query:code\n`, /p\.conf:6: metadata c: query:code is refused/],
    [`${head}token_url = https://\${client_id}.example.com/t\n`, /p\.conf:5: token_url: no placeholders before the path but \$\{param\.NAME\} and \$\{metadata\.NAME\}/],
    [`${head}param = x\ntoken_url = \${param.x}.example.com/t\n`, /p\.conf:6: token_url: a placeholder at the start stands for the whole origin/],
    [`${head}token_url = https://a.example.com/t\nparam = bad name\n`, /p\.conf:6: param must be 'NAME \[: description\]'/],
    [`${head}param = t\nparam = t\ntoken_url = https://a.example.com/t\n`, /p\.conf:6: param 't' is declared twice \(also at line 5\)/],
    [`[provider]\nclient_id = c\nclient_secret = made-up-secret-pm\nauthorize_url = https://a.example.com/\${metadata.m}\nmetadata m = /m\ntoken_url = https://a.example.com/t\n`, /p\.conf:4: Unknown placeholder 'metadata\.m' in authorize_url/],
  ];
  for (const [text, re] of cases) {
    const r = checkProvider(t, text);
    assert.notEqual(r.status, 0, text);
    assert.match(r.out, re, text);
  }
  // declared after its use, in the host and as a whole origin: fine
  const good = checkProvider(t, `${head}token_url = https://\${param.tenant}.example.com/t\nparam = tenant\n` +
    'metadata api = /api_domain\ntest_url = ${metadata.api}/v1/me\n');
  assert.equal(good.status, 0, good.out);
});
