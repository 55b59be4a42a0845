'use strict';
/*
 * tokenctl says what is wrong, with the documented exit codes (issue 8,
 * "Broken" 3 and 4 and "Confusing"): each test pins one thing a new user
 * met, against the real daemon and the fake provider.
 *
 *  - authorize --timeout gives up with exit 9 ("gave up waiting"), not 0;
 *  - revoking a pending connection says it held no tokens, not that the
 *    provider has no revocation endpoint;
 *  - list: names sorted, a summary line; --json a sorted array;
 *  - unknown names: "no connection named 'alcie' (did you mean 'alice'?)",
 *    an unknown provider lists the configured ones, events NAME exits 4;
 *  - --json and --socket after the verb;
 *  - --min-ttl beyond the provider's lifetime warns; its limit is stated;
 *  - --username / --device that the provider cannot do: exit 10, a reason;
 *  - show prints the ACL (names), requested scope and username; the code
 *    exchange is not a refresh;
 *  - re-authorizing as another account warns and records identity-changed;
 *  - no socket / not a socket / stale socket / permission denied differ;
 *  - a failed import leaves no connection behind, and says why.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, waitFor, followAuthorize, iniProvider, BUILD } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

const SECRET = 'fake-secret-ux-Q7';
const PASSWORD = 'pw-ux-Hq3!x';
recordSecret(PASSWORD);

/* tokenctl with exactly these arguments (no --socket added). */
function ctlRaw(args, { uid, timeoutMs = 30000 } = {}) {
  return new Promise((resolve) => {
    const p = spawn(path.join(BUILD, 'tokenctl'), args, {
      stdio: ['ignore', 'pipe', 'pipe'], uid, gid: uid, env: { ...process.env, TOKENBROKER_SOCKET: '' },
    });
    const out = { stdout: '', stderr: '', code: null };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code) => { clearTimeout(timer); out.code = code; resolve(out); });
  });
}

let fp, b, who = 'alice@example.org';

test.before(async () => {
  fp = await startFakeProvider({
    expiresIn: 3600,
    respond: (rec) => (rec.path === '/userinfo' ? { status: 200, body: { email: who, sub: 'u-1' } } : null),
  });
  b = await Broker.start({
    providers: {
      fake: iniProvider({ ...fp.providerConf(), userinfo_url: fp.url('/userinfo') }),
      norevoke: iniProvider({ ...fp.providerConf(), revoke_url: undefined }),
      pw: iniProvider({ ...fp.providerConf({ grant: 'password', authorize_url: undefined, client_auth: 'post' }) }),
    },
    secrets: { 'fake.secret': SECRET },
  });
});

test.after(async () => {
  const st = b && await b.stop();
  if (fp) await fp.close();
  assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
});

/* The code flow through the auto-approving fake provider, waited for. */
async function authorizeActive(name, provider = 'fake', extra = []) {
  const auth = b.ctlAsync(['authorize', name, '--provider', provider, '--timeout', '30', ...extra]);
  const url = await waitFor(() => (auth.stdout.match(/^\s+(http\S+)$/m) || [])[1], { what: `authorize URL of ${name}` });
  await followAuthorize(url);
  await auth.done;
  assert.equal(auth.code, 0, auth.stderr);
  return auth;
}

async function pending(name, provider = 'fake') {
  const r = await b.ctl(['authorize', name, '--provider', provider, '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
}

test('authorize --timeout 3 gives up with exit 9 and says so', { timeout: 120000 }, async () => {
  const t0 = Date.now();
  const r = await b.ctl(['authorize', 'slow', '--provider', 'fake', '--timeout', '3']);
  assert.equal(r.code, 9, `exit ${r.code}: ${r.stderr}`);
  assert.match(r.stderr, /gave up waiting for the authorization of 'slow'/);
  assert.ok(Date.now() - t0 >= 2900, 'gave up before the timeout');
  // The pending authorization stays (it expires on its own).
  assert.equal((await b.api('GET', '/v1/connections/slow')).json.state, 'pending');
  assert.equal((await b.ctl(['revoke', 'slow'])).code, 0);
});

test('revoking a pending connection: no tokens to revoke, deleted (the provider has a revocation endpoint)', { timeout: 120000 }, async () => {
  await pending('pend');
  const n = fp.requests.filter((x) => x.path === '/revoke').length;
  const r = await b.ctl(['revoke', 'pend']);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /no revocation endpoint/);
  assert.match(r.stdout, /^pend: deleted \(it held no tokens to revoke at the provider/);
  assert.equal(fp.requests.filter((x) => x.path === '/revoke').length, n, 'nothing to revoke, yet the provider was asked');
  assert.equal((await b.api('GET', '/v1/connections/pend')).status, 404);
  // --json says which case it was
  await pending('pend2');
  const j = JSON.parse((await b.ctl(['revoke', 'pend2', '--json'])).stdout);
  assert.deepEqual(j, { name: 'pend2', revoked_at_provider: false, revocation: 'no_tokens' });
  // An active connection at a provider without an endpoint: that reason.
  await authorizeActive('nr', 'norevoke');
  const nr = await b.ctl(['revoke', 'nr']);
  assert.equal(nr.code, 0, nr.stderr);
  assert.match(nr.stdout, /^nr: deleted \(the provider has no revocation endpoint\)/);
  // And one that has tokens and an endpoint: revoked there.
  await authorizeActive('rv');
  assert.match((await b.ctl(['revoke', 'rv'])).stdout, /^rv: revoked at the provider and deleted/);
});

test('list: names sorted, a summary line; --json a sorted array; options after the verb', { timeout: 120000 }, async () => {
  for (const n of ['l-zed', 'l-kilo', 'l-bravo']) await pending(n);
  await authorizeActive('l-mike');
  await authorizeActive('l-alpha');
  // l-mike needs re-authorization: its refresh token is refused.
  const orig = fp.respond;
  fp.respond = (rec) => (rec.params.grant_type === 'refresh_token' ? { status: 400, body: { error: 'invalid_grant' } } : orig(rec));
  try {
    assert.equal((await b.ctl(['refresh', 'l-mike'])).code, 5);
  } finally { fp.respond = orig; }

  const r = await b.ctl(['list']);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  assert.match(lines[0], /^NAME\s+PROVIDER\s+STATE/);
  const rows = lines.slice(1, -1).map((l) => l.split(/\s+/));
  const names = rows.map((x) => x[0]);
  assert.deepEqual(names, [...names].sort(), `not sorted: ${names.join(' ')}`);
  assert.ok(names.includes('l-zed') && names.includes('l-alpha'));
  const count = (s) => rows.filter((x) => x[2] === s).length;
  const parts = [['active', count('active')], ['pending', count('pending')], ['needs_reauth', count('needs_reauth')]]
    .filter(([, k]) => k > 0).map(([s, k]) => `${k} ${s}`);
  assert.equal(lines[lines.length - 1], `${rows.length} connections: ${parts.join(', ')}`);
  assert.ok(count('needs_reauth') >= 1 && count('pending') >= 3 && count('active') >= 1, lines.join('\n'));

  // --json after the verb (and before): a sorted array, same as the table
  for (const args of [['list', '--json'], ['--json', 'list']]) {
    const j = await b.ctl(args);
    assert.equal(j.code, 0, j.stderr);
    const arr = JSON.parse(j.stdout);
    assert.ok(Array.isArray(arr));
    assert.deepEqual(arr.map((c) => c.name), names);
  }
  // show NAME --json; --socket after the verb, in both spellings
  const s = await b.ctl(['show', 'l-alpha', '--json']);
  assert.equal(s.code, 0, s.stderr);
  assert.equal(JSON.parse(s.stdout).name, 'l-alpha');
  const s2 = await ctlRaw(['show', 'l-alpha', '--socket', b.socket, '--json']);
  assert.equal(s2.code, 0, s2.stderr);
  assert.equal(JSON.parse(s2.stdout).state, 'active');
  const s3 = await ctlRaw(['list', `--socket=${b.socket}`]);
  assert.equal(s3.code, 0, s3.stderr);
  assert.match(s3.stdout, /^\d+ connections: /m);
  assert.equal((await ctlRaw(['list', '--socket'])).code, 2);
  // a verb option still works beside a global one
  const tk = await b.ctl(['token', '--json', 'l-alpha', '--min-ttl', '10']);
  assert.equal(tk.code, 0, tk.stderr);
  assert.equal(JSON.parse(tk.stdout).min_ttl_met, true);
});

test('unknown names: did you mean, the configured providers, events exits 4', { timeout: 120000 }, async () => {
  await authorizeActive('alice');
  const r = await b.ctl(['show', 'alcie']);
  assert.equal(r.code, 4);
  assert.equal(r.stderr, "tokenctl: no connection named 'alcie' (did you mean 'alice'?)\n");
  const far = await b.ctl(['token', 'zzzzzzzz']);
  assert.equal(far.code, 4);
  assert.equal(far.stderr, "tokenctl: no connection named 'zzzzzzzz' (tokenctl list shows them all)\n");
  for (const verb of ['refresh', 'revoke', 'header', 'test']) {
    const v = await b.ctl([verb, 'alcie']);
    assert.equal(v.code, 4, `${verb}: ${v.stderr}`);
    assert.match(v.stderr, /did you mean 'alice'/, verb);
  }
  const p = await b.ctl(['authorize', 'x', '--provider', 'faek', '--no-wait']);
  assert.equal(p.code, 4);
  assert.equal(p.stderr, "tokenctl: no provider named 'faek' (did you mean 'fake'?); configured providers: fake, norevoke, pw\n");
  assert.equal((await b.api('GET', '/v1/connections/x')).status, 404);
  const api = await b.api('POST', '/v1/connections', { name: 'x', provider: 'nope' });
  assert.equal(api.status, 404);
  assert.match(api.json.error_description, /unknown provider 'nope'; configured providers: fake, norevoke, pw/);
  const ev = await b.ctl(['events', 'alcie']);
  assert.equal(ev.code, 4, ev.stderr);
  assert.match(ev.stderr, /no connection named 'alcie' \(did you mean 'alice'\?\)/);
  assert.equal((await b.ctl(['events', 'alice'])).code, 0);
});

test('--min-ttl: warns when the provider gives less; the limit is stated', { timeout: 120000 }, async () => {
  await authorizeActive('ttl');
  const r = await b.ctl(['token', 'ttl', '--min-ttl', '7200']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^at-/);
  assert.match(r.stderr, /^tokenctl: warning: the token expires in \d+ s, less than --min-ttl 7200/);
  const j = await b.ctl(['token', 'ttl', '--min-ttl', '7200', '--json']);
  const body = JSON.parse(j.stdout);
  assert.equal(body.min_ttl_met, false);
  assert.match(body.warning, /less than --min-ttl 7200/);
  assert.ok(body.expires_in < 7200);
  const ok = await b.ctl(['token', 'ttl', '--min-ttl', '60']);
  assert.equal(ok.code, 0);
  assert.equal(ok.stderr, '');
  const big = await b.ctl(['token', 'ttl', '--min-ttl', '99999999999']);
  assert.equal(big.code, 2);
  assert.match(big.stderr, /--min-ttl takes whole seconds from 0 to 31536000 \(365 days\)/);
  assert.doesNotMatch(big.stderr, /must be a number/);
  const api = await b.api('GET', '/v1/connections/ttl/token?min_ttl=99999999999');
  assert.equal(api.status, 400);
  assert.match(api.json.error_description, /from 0 to 31536000 \(365 days\)/);
  assert.equal((await b.ctl(['token', 'ttl', '--min-ttl', '31536000'])).code, 0);
});

test('--username and --device the provider cannot do: exit 10 with the reason, nothing created', { timeout: 120000 }, async () => {
  const u = await b.ctl(['authorize', 'un', '--provider', 'fake', '--username', 'bob', '--no-wait'], { input: `${PASSWORD}\n` });
  assert.equal(u.code, 10, u.stderr);
  assert.match(u.stderr, /provider 'fake' uses the authorization_code grant, which takes no username/);
  const d = await b.ctl(['authorize', 'dv', '--provider', 'fake', '--device', '--no-wait']);
  assert.equal(d.code, 10, d.stderr);
  assert.match(d.stderr, /provider 'fake' has no device_authorization_url/);
  for (const n of ['un', 'dv']) assert.equal((await b.api('GET', `/v1/connections/${n}`)).status, 404);
  const api = await b.api('POST', '/v1/connections', { name: 'dv', provider: 'fake', device: true });
  assert.equal(api.status, 422);
  assert.equal(api.json.error, 'unsupported_by_provider');
  // still a usage error: no --provider at all
  assert.equal((await b.ctl(['authorize', 'dv'])).code, 2);
});

test('show: ACL with names, requested scope, username; the code exchange is no refresh', { timeout: 120000 }, async () => {
  const root = spawnSync('id', ['-nu', '0'], { encoding: 'utf8' }).stdout.trim() || 'root';
  const rootGroup = spawnSync('getent', ['group', '0'], { encoding: 'utf8' }).stdout.split(':')[0] || 'root';
  await authorizeActive('acl', 'fake', ['--allow-user', '0', '--allow-user', '4242420', '--allow-group', '0',
    '--scope', 'read', '--scope', 'write']);
  const s = await b.ctl(['show', 'acl']);
  assert.equal(s.code, 0, s.stderr);
  assert.match(s.stdout, new RegExp(`^allowed users:\\s+${root} \\(0\\), 4242420$`, 'm'));
  assert.match(s.stdout, new RegExp(`^allowed groups:\\s+${rootGroup} \\(0\\)$`, 'm'));
  assert.match(s.stdout, /^requested scope:\s+read write$/m);
  assert.match(s.stdout, /^refreshes:\s+0$/m);
  assert.match(s.stdout, /^identity:\s+alice@example\.org$/m);
  assert.equal((await b.ctl(['refresh', 'acl'])).code, 0);
  assert.match((await b.ctl(['show', 'acl'])).stdout, /^refreshes:\s+1$/m);
  // no ACL: only admins
  await pending('noacl');
  assert.match((await b.ctl(['show', 'noacl'])).stdout, /^readable by:\s+admins only$/m);
  // the password grant's username
  const pw = await b.ctl(['authorize', 'pwc', '--provider', 'pw', '--username', 'bob', '--timeout', '20'], { input: `${PASSWORD}\n` });
  assert.equal(pw.code, 0, pw.stderr);
  const ps = await b.ctl(['show', 'pwc']);
  assert.match(ps.stdout, /^username:\s+bob$/m);
  assert.ok(!ps.stdout.includes(PASSWORD));
});

test('re-authorizing as another account warns and records identity-changed', { timeout: 120000 }, async () => {
  who = 'alice@example.org';
  await authorizeActive('idc');
  assert.equal((await b.api('GET', '/v1/connections/idc')).json.identity, 'alice@example.org');
  // the same account again: no word
  const same = await authorizeActive('idc');
  assert.doesNotMatch(same.stderr, /identity changed/);
  who = 'mallory@example.org';
  try {
    const again = await authorizeActive('idc');
    assert.match(again.stderr, /warning: 'idc' is now authorized by mallory@example\.org, no longer by alice@example\.org/);
    assert.match(again.stdout, /idc: active, authorized by mallory@example\.org/);
  } finally { who = 'alice@example.org'; }
  const ev = (await b.api('GET', '/v1/events?connection=idc')).json.events;
  const changed = ev.filter((e) => e.kind === 'identity-changed');
  assert.equal(changed.length, 1, JSON.stringify(ev.map((e) => e.kind)));
  assert.equal(changed[0].message, 'identity changed from alice@example.org to mallory@example.org');
  assert.match((await b.ctl(['events', 'idc'])).stdout, /identity-changed/);
});

test('a failed import leaves no connection, records why, and says so', { timeout: 120000 }, async () => {
  recordSecret('rt-bogus-import-ux');
  const r = await b.ctl(['import', 'imp', '--provider', 'fake', '--timeout', '20'], { input: 'rt-bogus-import-ux\n' });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /^tokenctl: 'imp': import failed: the provider refused the refresh token: .*invalid_grant.*; connection removed$/m);
  assert.equal((await b.api('GET', '/v1/connections/imp')).status, 404);
  assert.equal(b.sql("SELECT count(*) AS n FROM connections WHERE name = 'imp'")[0].n, 0);
  const ev = (await b.api('GET', '/v1/events?connection=imp')).json.events;
  assert.equal(ev[0].kind, 'authorization-failed');
  // its events stay readable, with a word that it is gone
  const e = await b.ctl(['events', 'imp']);
  assert.equal(e.code, 0, e.stderr);
  assert.match(e.stderr, /'imp' no longer exists/);
  // imported over an existing connection: the refused token is not kept
  await authorizeActive('imp2');
  recordSecret('rt-bogus-import-ux2');
  const over = await b.ctl(['import', 'imp2', '--provider', 'fake', '--timeout', '20'], { input: 'rt-bogus-import-ux2\n' });
  assert.equal(over.code, 1, over.stderr);
  assert.match(over.stderr, /import of 'imp2' failed: .*invalid_grant/);
  const c2 = (await b.api('GET', '/v1/connections/imp2')).json;
  assert.equal(c2.state, 'needs_reauth');
  assert.equal(c2.has_refresh_token, false);
  assert.match((await b.api('GET', '/v1/events?connection=imp2&limit=5')).json.events.map((e) => e.message).join('\n'),
    /import failed: the provider refused the refresh token: .*; token dropped/);
  // a good import still works
  fp.refreshTokens.set('rt-good-import-ux', 'g-ux');
  recordSecret('rt-good-import-ux');
  const ok = await b.ctl(['import', 'imp', '--provider', 'fake', '--timeout', '20'], { input: 'rt-good-import-ux\n' });
  assert.equal(ok.code, 0, ok.stderr);
});

test('unreachable daemon: no socket, not a socket, stale socket, permission denied are told apart', { timeout: 120000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-ux-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  const none = await ctlRaw(['--socket', path.join(dir, 'none.sock'), 'list']);
  assert.equal(none.code, 3);
  assert.match(none.stderr, /^tokenctl: no socket at .*none\.sock: tokenbrokerd is not running/);

  const file = path.join(dir, 'file.sock');
  fs.writeFileSync(file, '');
  const nf = await ctlRaw(['list', '--socket', file]);
  assert.equal(nf.code, 3);
  assert.match(nf.stderr, /is not a socket but a regular file/);

  // A socket nobody listens on: what a killed daemon leaves behind.
  const stale = path.join(dir, 'stale.sock');
  const py = spawnSync('python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])', stale]);
  assert.equal(py.status, 0, String(py.stderr));
  const st = await ctlRaw(['status', '--socket', stale]);
  assert.equal(st.code, 3);
  assert.match(st.stderr, /nothing listens on .*stale\.sock: a stale socket/);
  for (const out of [none, nf, st]) assert.doesNotMatch(out.stderr, /Couldn't connect/);

  // Permission denied needs a user that is not root.
  if (process.getuid() === 0) {
    fs.chmodSync(stale, 0o600);
    const pd = await ctlRaw(['list', '--socket', stale], { uid: 65534 });
    assert.equal(pd.code, 3, pd.stderr);
    assert.match(pd.stderr, /permission denied on .*stale\.sock: run tokenctl as root or as a member/);
  } else {
    t.diagnostic('not root: the permission case is not checked');
  }
});
