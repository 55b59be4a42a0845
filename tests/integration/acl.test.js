'use strict';
/*
 * Access control on the socket API, decided by SO_PEERCRED. Clients run as
 * other uids through setpriv(1):
 *  - a connection authorized with --allow-user tbtest-alice: alice reads
 *    its token (the same token root sees); bob gets 403 on the token route
 *    and on every admin route, tokenctl exits 7, and the store is unchanged;
 *    an unknown connection answers bob exactly as a forbidden one does;
 *  - --allow-group tbtest-readers: a member reads the token, a non-member
 *    gets 403; group membership is the peer process's own (supplementary
 *    groups from the kernel), as for file permissions;
 *  - admin_group = tbtest-admins: a member may use the admin routes, a
 *    non-member may not.
 * The daemon's own uid is admin too; here it runs as root, so every root
 * request in these tests (b.api, b.ctl) exercises that rule.
 *
 * The test users and groups are created when missing and left in place
 * (idempotent; other runs may use them at the same time).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { Broker, BUILD, httpGet, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const ALICE = 'tbtest-alice';
const BOB = 'tbtest-bob';
const READERS = 'tbtest-readers';
const ADMINS = 'tbtest-admins';
const CLIENT_SECRET = 'acl-test-client-secret';

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30000 });
  return r;
}

function ensureGroup(g) {
  if (run('getent', ['group', g]).status === 0) return;
  const r = run('groupadd', ['--system', g]);
  // Another test process may have created it meanwhile (exit 9: exists).
  assert.ok(r.status === 0 || r.status === 9, `groupadd ${g}: ${r.stderr}`);
}

function ensureUser(u) {
  if (run('getent', ['passwd', u]).status === 0) return;
  const r = run('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', u]);
  assert.ok(r.status === 0 || r.status === 9, `useradd ${u}: ${r.stderr}`);
}

function groupMembers(g) {
  const line = run('getent', ['group', g]).stdout.trim();
  const m = line.split(':')[3];
  return m ? m.split(',') : [];
}

function ensureMember(u, g) {
  if (groupMembers(g).includes(u)) return;
  const r = run('usermod', ['-aG', g, u]);
  assert.equal(r.status, 0, `usermod -aG ${g} ${u}: ${r.stderr}`);
}

/** Makes sure `u` is not listed as a member of `g` in the group database. */
function ensureNotMember(u, g) {
  if (!groupMembers(g).includes(u)) return;
  const r = run('gpasswd', ['-d', u, g]);
  assert.equal(r.status, 0, `gpasswd -d ${u} ${g}: ${r.stderr}`);
}

function setupUsers() {
  for (const g of [READERS, ADMINS]) ensureGroup(g);
  for (const u of [ALICE, BOB]) ensureUser(u);
  ensureMember(ALICE, READERS);
  ensureNotMember(BOB, READERS);
  ensureMember(BOB, ADMINS);
  ensureNotMember(ALICE, ADMINS);
}

/**
 * setpriv arguments for user `u`. groups: 'init' (the user's groups from
 * the database, as after a login), 'clear' (none), or a list of group names.
 */
function privArgs(u, { groups = 'init', gid } = {}) {
  const a = [`--reuid=${u}`, `--regid=${gid ?? u}`];
  if (groups === 'init') a.push('--init-groups');
  else if (groups === 'clear') a.push('--clear-groups');
  else a.push(`--groups=${groups.join(',')}`);
  return a;
}

/** Runs cmd as another user; resolves {code, stdout, stderr}. Bounded. */
function runAs(u, cmd, args, opts = {}, timeoutMs = 30000) {
  return new Promise((resolve) => {
    const p = spawn('setpriv', [...privArgs(u, opts), '--', cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH, HOME: '/' },
    });
    const out = { code: null, signal: null, stdout: '', stderr: '' };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => { clearTimeout(timer); out.code = code; out.signal = signal; resolve(out); });
  });
}

function ctlAs(b, u, args, opts) {
  return runAs(u, path.join(BUILD, 'tokenctl'), ['--socket', b.socket, ...args], opts);
}

/** One socket API request as user u via curl; resolves {status, json, text}. */
async function apiAs(b, u, method, urlPath, body, opts) {
  const args = ['-q', '-sS', '--max-time', '20', '--unix-socket', b.socket, '-X', method,
    '-o', '-', '-w', '\n%{http_code}'];
  if (body !== undefined) args.push('-H', 'content-type: application/json', '--data-binary', JSON.stringify(body));
  args.push(`http://localhost${urlPath}`);
  const r = await runAs(u, 'curl', args, opts);
  assert.equal(r.code, 0, `curl as ${u} ${method} ${urlPath}: ${r.stderr}`);
  const nl = r.stdout.lastIndexOf('\n');
  const text = r.stdout.slice(0, nl);
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: Number(r.stdout.slice(nl + 1)), text, json };
}

/** A broker on the fake provider whose socket other uids can reach. */
async function setup(t, brokerOpts = {}) {
  const fp = await startFakeProvider();
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': CLIENT_SECRET },
    broker: brokerOpts,
  });
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
    assert.doesNotMatch(b.log() || '', /Sanitizer|runtime error/);
  });
  // mkdtemp made the directory 0700; the socket itself is 0666.
  fs.chmodSync(b.dir, 0o755);
  assert.equal(fs.statSync(b.socket).mode & 0o777, 0o666, 'the socket is not mode 0666');
  return { b, fp };
}

/** Authorizes NAME through the auto-approving fake provider, as root. */
async function authorize(b, name, extra = []) {
  const r = await b.ctl(['--json', 'authorize', name, '--provider', 'fake', '--no-wait', ...extra]);
  assert.equal(r.code, 0, r.stderr);
  const url = JSON.parse(r.stdout).authorize_url;
  const redirect = await httpGet(url);
  assert.equal(redirect.status, 302);
  const page = await httpGet(redirect.headers.location);
  assert.equal(page.status, 200, page.text);
  const show = JSON.parse((await b.ctl(['--json', 'show', name])).stdout);
  assert.equal(show.state, 'active');
  return show;
}

function events(b) { return b.sql('SELECT * FROM events ORDER BY id'); }

function tokenRequests(fp) { return fp.requests.filter((r) => r.path === '/token').length; }

test('--allow-user: alice reads the token; bob is refused everywhere and changes nothing', { timeout: 120000 }, async (t) => {
  setupUsers();
  const { b, fp } = await setup(t);
  const conn = await authorize(b, 'svc', ['--allow-user', ALICE]);
  const aliceUid = Number(run('id', ['-u', ALICE]).stdout);
  assert.deepEqual(conn.allow_users, [aliceUid]);
  await authorize(b, 'other');   // no ACL: admins only

  // Root (the daemon's own uid here) and alice see the same token.
  const root = await b.api('GET', '/v1/connections/svc/token');
  assert.equal(root.status, 200);
  const alice = await apiAs(b, ALICE, 'GET', '/v1/connections/svc/token');
  assert.equal(alice.status, 200, alice.text);
  assert.equal(alice.json.access_token, root.json.access_token);
  assert.equal(alice.json.refresh_token, undefined);
  const aliceCtl = await ctlAs(b, ALICE, ['token', 'svc']);
  assert.equal(aliceCtl.code, 0, aliceCtl.stderr);
  assert.equal(aliceCtl.stdout.trim(), root.json.access_token);
  // Alice still is no admin, and 'other' has no ACL entry for her.
  assert.equal((await apiAs(b, ALICE, 'GET', '/v1/connections')).status, 403);
  assert.equal((await apiAs(b, ALICE, 'GET', '/v1/connections/other/token')).status, 403);
  assert.equal((await ctlAs(b, ALICE, ['token', 'other'])).code, 7);

  const store = b.dumpStore();
  const ev = events(b);
  const nTok = tokenRequests(fp);
  const nReq = fp.requests.length;

  // Bob: the token routes and every admin route answer 403.
  const routes = [
    ['GET', '/v1/connections/svc/token'],
    ['GET', '/v1/connections/svc/token?min_ttl=999999'],
    ['POST', '/v1/connections/svc/invalidate'],
    ['GET', '/v1/connections'],
    ['GET', '/v1/connections/svc'],
    ['GET', '/v1/connections/nosuch'],
    ['POST', '/v1/connections', { name: 'evil', provider: 'fake', allow_users: [BOB] }],
    ['POST', '/v1/connections', { name: 'svc', provider: 'fake', allow_users: [BOB] }],
    ['POST', '/v1/connections/svc/refresh'],
    ['DELETE', '/v1/connections/svc'],
    ['DELETE', '/v1/connections/other'],
    ['GET', '/v1/providers'],
    ['GET', '/v1/status'],
    ['GET', '/v1/events'],
  ];
  for (const [method, url, body] of routes) {
    const r = await apiAs(b, BOB, method, url, body);
    assert.equal(r.status, 403, `bob ${method} ${url}: ${r.status} ${r.text}`);
    assert.equal(r.json?.error, 'forbidden', `bob ${method} ${url}: ${r.text}`);
    assert.ok(!r.text.includes(root.json.access_token), `${method} ${url} leaked the token to bob`);
  }
  // GET /metrics is an admin route too (DESIGN.md, "Admin routes").
  // Checked last (below) so that the rest of the test still runs.
  const metrics = await apiAs(b, BOB, 'GET', '/metrics');

  // tokenctl as bob: exit 7 (permission denied) for every verb.
  for (const args of [
    ['token', 'svc'], ['header', 'svc'], ['token', 'svc', '--min-ttl', '999999'], ['token', 'nosuch'],
    ['list'], ['--json', 'list'], ['show', 'svc'], ['status'], ['providers'],
    ['refresh', 'svc'], ['revoke', 'svc'], ['authorize', 'evil', '--provider', 'fake', '--no-wait'],
  ]) {
    const r = await ctlAs(b, BOB, args);
    assert.equal(r.code, 7, `tokenctl ${args.join(' ')} as bob: exit ${r.code}, ${r.stderr}`);
    assert.ok(!r.stdout.includes(root.json.access_token) && !r.stderr.includes(root.json.access_token));
  }

  // Nothing changed: store, events, and no request reached the provider.
  assert.equal(b.dumpStore(), store);
  assert.deepEqual(events(b), ev);
  assert.equal(tokenRequests(fp), nTok, 'a refused request made the broker call the provider');
  assert.equal(fp.requests.length, nReq);
  assert.equal(b.sql("SELECT count(*) AS n FROM connections WHERE name = 'evil'")[0].n, 0);

  // Unknown and forbidden are indistinguishable to a non-admin, so
  // connection names don't leak (the admin still gets 404 for unknown).
  const forbidden = await apiAs(b, BOB, 'GET', '/v1/connections/svc/token');
  const unknown = await apiAs(b, BOB, 'GET', '/v1/connections/no-such-connection/token');
  assert.equal(unknown.status, 403, 'an unknown connection must answer 403 (not 404) to a non-admin');
  assert.equal((await b.api('GET', '/v1/connections/no-such-connection/token')).status, 404);
  const fInv = await apiAs(b, BOB, 'POST', '/v1/connections/svc/invalidate');
  const uInv = await apiAs(b, BOB, 'POST', '/v1/connections/no-such-connection/invalidate');
  assert.equal(uInv.status, 403);
  // The ACL is kept in the store: the same after a restart (SIGKILL).
  await b.restart();
  const afterRestart = await apiAs(b, ALICE, 'GET', '/v1/connections/svc/token');
  assert.equal(afterRestart.status, 200, afterRestart.text);
  assert.equal(afterRestart.json.access_token, root.json.access_token);
  assert.equal((await apiAs(b, BOB, 'GET', '/v1/connections/svc/token')).status, 403);
  assert.equal((await apiAs(b, BOB, 'GET', '/v1/connections')).status, 403);

  const ctlUnknown = await ctlAs(b, BOB, ['token', 'no-such-connection']);
  const ctlForbidden = await ctlAs(b, BOB, ['token', 'svc']);
  assert.equal(ctlUnknown.code, 7);

  const bugs = [];
  if (JSON.stringify(unknown.json) !== JSON.stringify(forbidden.json) || JSON.stringify(uInv.json) !== JSON.stringify(fInv.json)) {
    bugs.push('BUG (daemon/api.c, route_token vs dispatch): the 403 body for an unknown connection ' +
      `(${unknown.text}) differs from the one for an existing connection the peer may not read ` +
      `(${forbidden.text}), so a non-admin can still tell which connection names exist`);
  }
  if (ctlUnknown.stderr !== ctlForbidden.stderr) {
    bugs.push(`BUG: tokenctl tells unknown (${ctlUnknown.stderr.trim()}) from forbidden (${ctlForbidden.stderr.trim()})`);
  }
  if (metrics.status !== 403) {
    bugs.push('BUG (daemon/api.c dispatch: GET /metrics has no admin check, DESIGN.md lists it among the admin routes): ' +
      `any local user reads the metrics: ${metrics.status} ${metrics.text.slice(0, 120)}...`);
  }
  assert.deepEqual(bugs, []);
});

test('--allow-group: members of the group read the token, others get 403', { timeout: 120000 }, async (t) => {
  setupUsers();
  const { b, fp } = await setup(t);
  const conn = await authorize(b, 'grp', ['--allow-group', READERS]);
  const readersGid = Number(run('getent', ['group', READERS]).stdout.split(':')[2]);
  assert.deepEqual(conn.allow_groups, [readersGid]);
  const root = await b.api('GET', '/v1/connections/grp/token');
  assert.equal(root.status, 200);
  const store = b.dumpStore();
  const nTok = tokenRequests(fp);

  // Alice is a member (usermod -aG); --init-groups gives her process the group.
  const alice = await apiAs(b, ALICE, 'GET', '/v1/connections/grp/token');
  assert.equal(alice.status, 200, alice.text);
  assert.equal(alice.json.access_token, root.json.access_token);
  const aliceCtl = await ctlAs(b, ALICE, ['token', 'grp']);
  assert.equal(aliceCtl.code, 0, aliceCtl.stderr);
  assert.equal(aliceCtl.stdout.trim(), root.json.access_token);
  // The group as the primary gid counts too.
  const aliceGid = await apiAs(b, ALICE, 'GET', '/v1/connections/grp/token', undefined, { gid: READERS, groups: 'clear' });
  assert.equal(aliceGid.status, 200, aliceGid.text);
  // Being in the group is no admin right.
  assert.equal((await apiAs(b, ALICE, 'GET', '/v1/connections/grp')).status, 403);

  // Bob is not a member.
  const bob = await apiAs(b, BOB, 'GET', '/v1/connections/grp/token');
  assert.equal(bob.status, 403, bob.text);
  assert.equal((await ctlAs(b, BOB, ['token', 'grp'])).code, 7);
  assert.equal((await apiAs(b, BOB, 'POST', '/v1/connections/grp/invalidate')).status, 403);

  // Membership is the peer process's, as the kernel reports it (SO_PEERGROUPS),
  // like a file's group permission: a process that holds the group as a
  // supplementary group (systemd SupplementaryGroups=, setpriv --groups) is a
  // member though the group database does not list its user ...
  const bobWithGroup = await apiAs(b, BOB, 'GET', '/v1/connections/grp/token', undefined, { groups: [READERS] });
  assert.equal(bobWithGroup.status, 200,
    `a peer process holding ${READERS} as a supplementary group was refused (groups taken from the user database, not the peer): ${bobWithGroup.text}`);
  // ... and a process that dropped its supplementary groups no longer holds it.
  const aliceDropped = await apiAs(b, ALICE, 'GET', '/v1/connections/grp/token', undefined, { groups: 'clear' });
  assert.equal(aliceDropped.status, 403,
    `a peer process that dropped its supplementary groups still read the token through ${READERS}: ${aliceDropped.text}`);

  assert.equal(b.dumpStore(), store);
  assert.equal(tokenRequests(fp), nTok);
});

test('admin_group: members may use the admin routes, non-members may not', { timeout: 120000 }, async (t) => {
  setupUsers();
  const { b } = await setup(t, { admin_group: ADMINS });
  await authorize(b, 'adm');
  const root = await b.api('GET', '/v1/connections/adm/token');
  assert.equal(root.status, 200);

  // Bob is in tbtest-admins.
  const list = await apiAs(b, BOB, 'GET', '/v1/connections');
  assert.equal(list.status, 200, list.text);
  assert.deepEqual(list.json.connections.map((c) => c.name), ['adm']);
  const ctlList = await ctlAs(b, BOB, ['--json', 'list']);
  assert.equal(ctlList.code, 0, ctlList.stderr);
  for (const verb of [['status'], ['providers'], ['show', 'adm']]) {
    const r = await ctlAs(b, BOB, verb);
    assert.equal(r.code, 0, `tokenctl ${verb.join(' ')} as an admin_group member: ${r.stderr}`);
  }
  // Admins read every token.
  const bobTok = await ctlAs(b, BOB, ['token', 'adm']);
  assert.equal(bobTok.code, 0, bobTok.stderr);
  assert.equal(bobTok.stdout.trim(), root.json.access_token);
  // An admin gets 404 for an unknown connection (nothing to hide from admins).
  assert.equal((await apiAs(b, BOB, 'GET', '/v1/connections/nosuch/token')).status, 404);

  // Alice is not in tbtest-admins.
  const store = b.dumpStore();
  assert.equal((await apiAs(b, ALICE, 'GET', '/v1/connections')).status, 403);
  assert.equal((await apiAs(b, ALICE, 'GET', '/v1/status')).status, 403);
  assert.equal((await apiAs(b, ALICE, 'GET', '/v1/connections/adm/token')).status, 403);
  assert.equal((await ctlAs(b, ALICE, ['list'])).code, 7);
  assert.equal((await ctlAs(b, ALICE, ['revoke', 'adm'])).code, 7);
  // Bob without his supplementary groups is not an admin either.
  assert.equal((await apiAs(b, BOB, 'GET', '/v1/connections', undefined, { groups: 'clear' })).status, 403,
    'a peer process without the admin group was treated as admin (groups taken from the user database)');
  assert.equal(b.dumpStore(), store);

  // An admin may act: bob revokes.
  const rev = await ctlAs(b, BOB, ['revoke', 'adm']);
  assert.equal(rev.code, 0, rev.stderr);
  assert.equal(b.sql("SELECT count(*) AS n FROM connections WHERE name = 'adm'")[0].n, 0);
});
