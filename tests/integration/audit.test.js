'use strict';
/*
 * The audit trail (issue 11): every mutating admin request on the socket
 * API (authorize, ACL change, import, refresh, revoke) leaves exactly one
 * "admin" event naming the action and the peer's uid and pid, readable with
 * `tokenctl events`. The admin here is tbtest-bob through admin_group, so
 * the uid recorded is not the daemon's; a non-admin's refused request
 * records nothing (any local user could otherwise fill the table).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { Broker, BUILD, httpGet, iniProvider, waitFor } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { recordSecret } = require('../lib/suite.js');

const ALICE = 'tbtest-alice';
const BOB = 'tbtest-bob';
const ADMINS = 'tbtest-admins';

function run(cmd, args) { return spawnSync(cmd, args, { encoding: 'utf8', timeout: 30000 }); }

function ensureGroup(g) {
  if (run('getent', ['group', g]).status === 0) return;
  const r = run('groupadd', ['--system', g]);
  assert.ok(r.status === 0 || r.status === 9, `groupadd ${g}: ${r.stderr}`);
}
function ensureUser(u) {
  if (run('getent', ['passwd', u]).status === 0) return;
  const r = run('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', u]);
  assert.ok(r.status === 0 || r.status === 9, `useradd ${u}: ${r.stderr}`);
}
function members(g) { const m = run('getent', ['group', g]).stdout.trim().split(':')[3]; return m ? m.split(',') : []; }

function setupUsers() {
  ensureGroup(ADMINS);
  for (const u of [ALICE, BOB]) ensureUser(u);
  if (!members(ADMINS).includes(BOB)) assert.equal(run('usermod', ['-aG', ADMINS, BOB]).status, 0);
  if (members(ADMINS).includes(ALICE)) assert.equal(run('gpasswd', ['-d', ALICE, ADMINS]).status, 0);
}

/** tokenctl as user u (with the user's groups); bounded. */
function ctlAs(b, u, args, input) {
  return new Promise((resolve) => {
    const p = spawn('setpriv', [`--reuid=${u}`, `--regid=${u}`, '--init-groups', '--',
      path.join(BUILD, 'tokenctl'), '--socket', b.socket, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH, HOME: '/' },
    });
    const out = { code: null, stdout: '', stderr: '' };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    p.stdin.end(input ?? '');
    const timer = setTimeout(() => p.kill('SIGKILL'), 30000);
    p.on('close', (code) => { clearTimeout(timer); out.code = code; resolve(out); });
  });
}

function adminEvents(b) {
  return b.sql("SELECT id, connection, message FROM events WHERE kind = 'admin' ORDER BY id");
}

test('each admin action leaves one admin event with the peer uid and pid', { timeout: 180000 }, async (t) => {
  setupUsers();
  const bobUid = Number(run('id', ['-u', BOB]).stdout);
  const aliceUid = Number(run('id', ['-u', ALICE]).stdout);
  const fp = await startFakeProvider();
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'audit-test-client-secret' },
    broker: { admin_group: ADMINS },
  });
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  fs.chmodSync(b.dir, 0o755);

  let seen = 0;
  /** The admin events since the last call: exactly one, for this action. */
  async function expectOne(action, name, extra) {
    // events go through the writer: GET /v1/events waits for it
    assert.equal((await b.api('GET', '/v1/events?limit=1')).status, 200);
    const all = adminEvents(b);
    const fresh = all.slice(seen);
    seen = all.length;
    assert.equal(fresh.length, 1, `${action}: ${JSON.stringify(fresh)}`);
    const e = fresh[0];
    assert.equal(e.connection, name);
    const m = /^admin action (\S+) by uid (\d+) pid (\d+)(?:, (.*))?: (.*)$/.exec(e.message);
    assert.ok(m, e.message);
    assert.equal(m[1], action, e.message);
    assert.equal(Number(m[2]), bobUid, e.message);
    assert.ok(Number(m[3]) > 1, e.message);
    if (extra) assert.match(e.message, extra);
    return e;
  }

  // authorize, as bob
  const a = await ctlAs(b, BOB, ['--json', 'authorize', 'svc', '--provider', 'fake', '--no-wait']);
  assert.equal(a.code, 0, a.stderr);
  await expectOne('authorize', 'svc', /: done \(201\)$/);
  const redirect = await httpGet(JSON.parse(a.stdout).authorize_url);
  assert.equal((await httpGet(redirect.headers.location)).status, 200);
  await waitFor(async () => (await b.api('GET', '/v1/connections/svc')).json?.state === 'active', { timeoutMs: 20000 });
  assert.equal(adminEvents(b).length, seen, 'the callback is no admin action');

  // ACL change: a re-authorization with --allow-user
  const acl = await ctlAs(b, BOB, ['--json', 'authorize', 'svc', '--provider', 'fake', '--no-wait', '--allow-user', ALICE]);
  assert.equal(acl.code, 0, acl.stderr);
  await expectOne('authorize', 'svc', new RegExp(`ACL changed to users ${aliceUid} groups none: done \\(200\\)$`));

  // refresh (svc is pending again after the re-authorization: finish it)
  const r2 = await httpGet(JSON.parse(acl.stdout).authorize_url);
  assert.equal((await httpGet(r2.headers.location)).status, 200);
  await waitFor(async () => (await b.api('GET', '/v1/connections/svc')).json?.state === 'active', { timeoutMs: 20000 });
  const ref = await ctlAs(b, BOB, ['refresh', 'svc']);
  assert.equal(ref.code, 0, ref.stderr);
  await expectOne('refresh', 'svc');

  // import (a token the provider refuses: the attempt is recorded all the same)
  recordSecret('rt-audit-import-bogus');
  const imp = await ctlAs(b, BOB, ['import', 'imp', '--provider', 'fake', '--timeout', '20'], 'rt-audit-import-bogus\n');
  assert.equal(imp.code, 1, imp.stderr);
  const ie = await expectOne('import', 'imp');
  assert.ok(!ie.message.includes('rt-audit-import-bogus'));

  // revoke
  const rev = await ctlAs(b, BOB, ['revoke', 'svc']);
  assert.equal(rev.code, 0, rev.stderr);
  await expectOne('revoke', 'svc');

  // a refused admin request (bad body) is recorded too, with its answer
  const bad = await b.api('POST', '/v1/connections', { name: 'x', provider: 'nosuch' });
  assert.equal(bad.status, 404);
  const rootEv = adminEvents(b).slice(seen);
  seen += rootEv.length;
  assert.equal(rootEv.length, 1);
  assert.match(rootEv[0].message, /^admin action authorize by uid 0 pid \d+: refused \(404\)$/);

  // a non-admin's refused request changes nothing, records nothing
  assert.equal((await ctlAs(b, ALICE, ['revoke', 'imp'])).code, 7);
  assert.equal((await ctlAs(b, ALICE, ['authorize', 'evil', '--provider', 'fake', '--no-wait'])).code, 7);
  assert.equal((await b.api('GET', '/v1/events?limit=1')).status, 200);
  assert.equal(adminEvents(b).length, seen);

  // read-only admin routes are not actions
  for (const args of [['list'], ['show', 'imp'], ['status'], ['events']]) await ctlAs(b, BOB, args);
  assert.equal((await b.api('GET', '/v1/events?limit=1')).status, 200);
  assert.equal(adminEvents(b).length, seen);

  // tokenctl events shows them, with the uid
  const ev = await b.ctl(['events', 'svc']);
  assert.equal(ev.code, 0, ev.stderr);
  assert.match(ev.stdout, new RegExp(`admin action revoke by uid ${bobUid} pid \\d+`));
  assert.match(ev.stdout, new RegExp(`admin action authorize by uid ${bobUid} pid \\d+`));
});
