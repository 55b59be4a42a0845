'use strict';
/*
 * The PostgreSQL side of the store (issue 10) against a real PostgreSQL 15:
 * a throwaway cluster (tests/lib/pg.js) for each C test binary of
 * tests/pg/, built into the build folder under test (plain and ASan+UBSan).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const { BUILD, noteRun } = require('../lib/broker.js');
const { Postgres } = require('../lib/pg.js');

function runBinary(bin, env, timeoutMs) {
  return new Promise((resolve) => {
    const p = spawn(bin, [], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out });
    });
  });
}

const BINARIES = [
  ['test-pg-db', 'daemon/pg.c: connect errors, migrations under the advisory lock, binary values, lost sessions', 7],
  ['test-store-pg', 'the store on PostgreSQL: every field, sealed at rest, the key, the writer, lost sessions, nodes opening at once', 9],
  ['test-store-matrix', 'the store matrix: tests/unit/test-store.c\'s tests of the store\'s behaviour, each on a fresh PostgreSQL database', 12],
  ['test-lease', 'leases and fencing: the loser of a takeover commits nothing, a node without the lease keeps the tokens, shares spread, two nodes racing never share a lease', 4],
  ['test-ids', 'several nodes: ids in blocks never shared (2,000 each at once, with and without a writer reserving ahead), tombstones by version, pruned, compared', 4],
];

for (const [name, what, atLeast] of BINARIES) {
  test(`${what} (PostgreSQL 15)`, { timeout: 180000 }, async (t) => {
    const pg = await Postgres.start({ fsync: false });
    t.after(() => pg.destroy());
    const bin = path.join(BUILD, 'pg-tests', name);
    assert.ok(fs.existsSync(bin), `${bin} is not built (make)`);
    const r = await runBinary(bin, {
      TB_PG_URI: `postgresql://tokenbroker@127.0.0.1:${pg.port}/`,
      TB_PG_PASSWORD_FILE: pg.passwordFile,
    }, 150000);
    noteRun(name, r.out);
    const last = r.out.trim().split('\n').pop();
    const m = /^(\d+) passed, (\d+) failed$/.exec(last);
    assert.ok(m, `no summary line from ${name} (exit ${r.code ?? r.signal}):\n${r.out.slice(-3000)}`);
    assert.equal(Number(m[2]), 0, `${name} failed:\n${r.out.slice(-3000)}`);
    assert.ok(Number(m[1]) >= atLeast, `only ${m[1]} tests ran`);
    assert.equal(r.code, 0, r.out.slice(-3000));
  });
}

const { Broker, followAuthorize, iniProvider, waitFor, sleep } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

function runDaemon(confPath, timeoutMs = 30000) {
  return new Promise((resolve) => {
    const env = { ...process.env, TOKENBROKER_LOG_LEVEL: 'debug' };
    for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'WATCHDOG_USEC']) delete env[k];
    const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', confPath], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out }); });
  });
}

/** The broker's config with other keys, and a state_dir and socket of its own. */
function variant(b, name, changes) {
  let text = fs.readFileSync(b.confPath, 'utf8');
  for (const [k, v] of Object.entries(changes)) {
    const re = new RegExp(`^${k} = .*$`, 'm');
    text = re.test(text) ? text.replace(re, `${k} = ${v}`) : text.replace('[broker]\n', `[broker]\n${k} = ${v}\n`);
  }
  const p = path.join(b.dir, `${name}.conf`);
  fs.writeFileSync(p, text);
  return p;
}

test('a daemon on PostgreSQL: grant, handout, refresh and events from the database, a SIGKILL and a restart keep everything; a second node with the same node_name and a wrong password are refused, another node_name joins', { timeout: 180000 }, async (t) => {
  const pg = await Postgres.start({ fsync: true });
  const fp = await startFakeProvider({ expiresIn: 5 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'store-pg-daemon-secret' },
    broker: { store: pg.uri(), store_password_file: pg.passwordFile, node_name: 'node-a' },
  });
  t.after(async () => { await b.stop(); await fp.close(); await pg.destroy(); });

  const r = await b.api('POST', '/v1/connections', { name: 'one', provider: 'fake' });
  assert.equal(r.status, 201, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  await waitFor(async () => (await b.api('GET', '/v1/connections/one/token')).status === 200, { what: 'a token' });
  const first = (await b.api('GET', '/v1/connections/one/token')).json.access_token;

  // In PostgreSQL, sealed; no SQLite file beside the daemon.
  assert.equal((await pg.psql("SELECT count(*) FROM connections WHERE name = 'one' AND state = 'active'")).trim(), '1');
  assert.equal((await pg.psql(`SELECT count(*) FROM connections WHERE position(convert_to('${first}', 'UTF8') in access_token) > 0`)).trim(), '0');
  assert.equal(fs.existsSync(b.db), false, 'a SQLite file was made beside a PostgreSQL store');
  assert.match(b.log(), /127\.0\.0\.1/);

  // Refreshed ahead of expiry (5 s tokens), written to the database.
  await waitFor(async () => Number((await pg.psql("SELECT refreshes FROM connections WHERE name = 'one'")).trim()) >= 1,
    { timeoutMs: 20000, what: 'a refresh committed to PostgreSQL' });
  const second = (await b.api('GET', '/v1/connections/one/token')).json.access_token;
  assert.notEqual(second, first);

  // Events come from the database (read off the loop).
  const ev = await b.api('GET', '/v1/events?connection=one&limit=50');
  assert.equal(ev.status, 200, ev.text);
  assert.ok(ev.json.events.length >= 1, ev.text);

  // The node's heartbeat: status and metrics from memory.
  await waitFor(async () => {
    const st = (await b.api('GET', '/v1/status')).json;
    return st.store && st.store.engine === 'postgresql' && st.store.reachable === true &&
      Array.isArray(st.nodes) && st.nodes.some((n) => n.name === 'node-a' && n.self && n.alive && n.holds === 1);
  }, { timeoutMs: 15000, what: 'status to list node-a' });
  const text = (await b.ctl(['status'])).stdout;
  assert.match(text, /store: postgresql, node node-a/, text);
  assert.match(text, /node-a\s+yes\s+\S+\s+\S+\s+1 \(this node\)/, text);
  const metrics = (await b.api('GET', '/metrics')).text;
  assert.match(metrics, /^tokenbroker_store_reachable 1$/m);
  assert.match(metrics, /^tokenbroker_nodes\{state="alive"\} 1$/m);

  // PostgreSQL away: tokens are still served, status says so; back: it resumes by itself.
  const held = (await b.api('GET', '/v1/connections/one/token')).json.access_token;
  await pg.stop();
  await waitFor(async () => (await b.api('GET', '/v1/status')).json.store.reachable === false,
    { timeoutMs: 30000, what: 'status to say the database is unreachable' });
  const away = await b.api('GET', '/v1/connections/one/token');
  assert.equal(away.status, 200, away.text);
  assert.equal(away.json.access_token, held);
  assert.match((await b.ctl(['status'])).stdout, /UNREACHABLE since/);
  assert.match((await b.api('GET', '/metrics')).text, /^tokenbroker_store_reachable 0$/m);
  // Longer than a token's life: no refresh token goes to the provider
  // while its answer could not be committed.
  const refreshesAt = () => fp.requests.filter((q) => q.path === '/token' && q.params.grant_type === 'refresh_token').length;
  const sentBefore = refreshesAt();
  await sleep(8000);
  assert.equal(refreshesAt(), sentBefore, 'a refresh token was sent while the database was unreachable');
  assert.equal((await b.api('GET', '/v1/status')).json.store.reachable, false);
  await pg.startPostmaster();
  await waitFor(async () => (await b.api('GET', '/v1/status')).json.store.reachable === true,
    { timeoutMs: 30000, what: 'status to say the database is reachable again' });
  const before = Number((await pg.psql("SELECT refreshes FROM connections WHERE name = 'one'")).trim());
  await waitFor(async () => Number((await pg.psql("SELECT refreshes FROM connections WHERE name = 'one'")).trim()) > before,
    { timeoutMs: 30000, what: 'a refresh committed after the database came back' });

  // A SIGKILL, and the next daemon serves the newest token from the database.
  await b.restart();
  await waitFor(async () => (await b.api('GET', '/v1/connections/one/token')).status === 200, { what: 'a token after the restart' });
  const after = (await b.api('GET', '/v1/connections/one/token')).json.access_token;
  const newest = fp.issued[fp.issued.length - 1].access_token;
  assert.ok(after === newest || fp.issued.some((i) => i.access_token === after), 'the token after the restart was never issued');
  assert.notEqual(after, first, 'the restarted daemon served the first token again');

  // A daemon with another key (its own state_dir makes its own) is refused.
  const other = await runDaemon(variant(b, 'otherkey', { state_dir: 'state4', socket: 'tb4.sock' }));
  noteRun('other-key-on-pg', other.out);
  assert.notEqual(other.code, 0, other.out);
  assert.match(other.out, /was sealed with another key/, other.out);
  assert.equal(fs.existsSync(path.join(b.dir, 'state4', 'tokenbroker.key')), false, 'the new key was left behind');

  // A second daemon on the same database with the same key and the same
  // node_name (its own state_dir and socket) is refused; the first serves on.
  const key = path.join(b.dir, 'state', 'tokenbroker.key');
  const second2 = await runDaemon(variant(b, 'second', { state_dir: 'state2', key_file: key, socket: 'tb2.sock', callback_listen: '127.0.0.1:1', public_url: 'http://127.0.0.1:1' }));
  noteRun('second-daemon-on-pg', second2.out);
  assert.notEqual(second2.code, 0, second2.out);
  assert.match(second2.out, /Cannot join the cluster on 'postgresql:\/\/tokenbroker@127\.0\.0\.1.*as node 'node-a': a running node already has node_name 'node-a'/, second2.out);
  assert.equal((await b.api('GET', '/v1/connections/one/token')).status, 200);

  // Another node_name joins the cluster and serves the same connection.
  const nb = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'store-pg-daemon-secret' },
    broker: { store: pg.uri(), store_password_file: pg.passwordFile, node_name: 'node-b', key_file: key },
  });
  t.after(() => nb.stop());
  const joined = await nb.api('GET', '/v1/connections/one/token');
  assert.equal(joined.status, 200, joined.text);
  await waitFor(async () => {
    const st = await nb.api('GET', '/v1/status');
    return (st.json.nodes ?? []).filter((n) => n.alive).length === 2;
  }, { what: 'two live nodes in /v1/status' });
  await nb.stop();

  // A wrong password: a clear error, and the password is not repeated.
  const wrong = path.join(b.dir, 'wrong.password');
  fs.writeFileSync(wrong, 'not-the-pg-password-7731\n', { mode: 0o600 });
  const bad = await runDaemon(variant(b, 'badpw', { state_dir: 'state3', key_file: key, socket: 'tb3.sock', store_password_file: wrong }));
  noteRun('wrong-password-on-pg', bad.out);
  assert.notEqual(bad.code, 0, bad.out);
  assert.match(bad.out, /password authentication failed/, bad.out);
  assert.doesNotMatch(bad.out, /not-the-pg-password-7731/);
  assert.ok(!bad.out.includes(pg.password), 'the real password is in the output');
});

function runCopy(confPath, from, to) {
  return new Promise((resolve) => {
    const env = { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' };
    const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', confPath, '--copy-store', from, to], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 60000);
    p.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out }); });
  });
}

async function connectionsOf(b) {
  const r = await b.api('GET', '/v1/connections?limit=100');
  assert.equal(r.status, 200, r.text);
  const list = r.json.connections ?? r.json;
  return Object.fromEntries(list.map((c) => [c.name, c.state]));
}

test('--copy-store: SQLite with connections in every state to PostgreSQL and back; a node on the copy serves the same tokens; a non-empty target, a wrong key and an unreachable target are refused and change nothing', { timeout: 240000 }, async (t) => {
  const fp = await startFakeProvider({ expiresIn: 3600 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'copy-store-secret' },
  });
  const pg = await Postgres.start({ fsync: false });
  t.after(async () => { await b.stop(); await fp.close(); await pg.destroy(); });

  // active, pending, needs_reauth
  for (const name of ['live', 'gone']) {
    const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
    assert.equal(r.status, 201, r.text);
    assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  }
  assert.equal((await b.api('POST', '/v1/connections', { name: 'waiting', provider: 'fake' })).status, 201);
  await waitFor(async () => (await b.api('GET', '/v1/connections/live/token')).status === 200, { what: 'a token' });
  fp.respond = (req) => (req.path === '/token' && req.params.grant_type === 'refresh_token'
    ? { status: 400, body: { error: 'invalid_grant', error_description: 'revoked' } } : null);
  await b.ctl(['refresh', 'gone']).catch(() => {});
  await waitFor(async () => (await connectionsOf(b)).gone === 'needs_reauth', { what: 'gone to need re-authorization' });
  fp.respond = null;
  const states = await connectionsOf(b);
  assert.deepEqual(states, { gone: 'needs_reauth', live: 'active', waiting: 'pending' });
  const token = (await b.api('GET', '/v1/connections/live/token')).json.access_token;
  await b.stop({ keep: true });

  const sqlite = b.db;
  const uri = pg.uri();
  // Unreachable target: a clear error.
  const down = await runCopy(b.confPath, sqlite, 'postgresql://tokenbroker@127.0.0.1:1/nothing?connect_timeout=5');
  noteRun('copy-store-unreachable', down.out);
  assert.notEqual(down.code, 0, down.out);
  assert.match(down.out, /Failed to open the target 'postgresql:\/\/tokenbroker@127\.0\.0\.1:1\/nothing/, down.out);

  // A wrong key: refused before the target is touched.
  const otherKey = path.join(b.dir, 'other.key');
  fs.writeFileSync(otherKey, crypto.randomBytes(32), { mode: 0o600 });
  const wrongConf = variant(b, 'wrongkey', { key_file: otherKey, store_password_file: pg.passwordFile, store: uri });
  const wrong = await runCopy(wrongConf, sqlite, uri);
  noteRun('copy-store-wrong-key', wrong.out);
  assert.notEqual(wrong.code, 0, wrong.out);
  assert.match(wrong.out, /was sealed with another key/, wrong.out);
  assert.equal((await pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'connections'")).trim(), '0',
    'the target was touched');

  // The copy.
  const key = path.join(b.dir, 'state', 'tokenbroker.key');
  const pgConf = variant(b, 'onpg', { key_file: key, store: uri, store_password_file: pg.passwordFile, state_dir: 'state-pg', socket: 'tb-pg.sock' });
  const ok = await runCopy(pgConf, sqlite, uri);
  noteRun('copy-store-ok', ok.out);
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /Copied 3 connections and \d+ events from '.*tokenbroker\.db' \(sqlite\) to 'postgresql:\/\/tokenbroker@127\.0\.0\.1:\d+\/tokenbroker' \(postgresql\)/, ok.out);
  assert.ok(!ok.out.includes(pg.password));
  const eventsBefore = (await pg.psql('SELECT count(*) FROM events')).trim();

  // Again: the target is not empty now.
  const again = await runCopy(pgConf, sqlite, uri);
  noteRun('copy-store-again', again.out);
  assert.notEqual(again.code, 0, again.out);
  assert.match(again.out, /is not empty/, again.out);
  assert.equal((await pg.psql('SELECT count(*) FROM connections')).trim(), '3');
  assert.equal((await pg.psql('SELECT count(*) FROM events')).trim(), eventsBefore);

  // A node on the copy serves the same token and the same states.
  b.confPath = pgConf;
  b.socket = path.join(b.dir, 'tb-pg.sock');
  await b.launch();
  assert.deepEqual(await connectionsOf(b), states);
  assert.equal((await b.api('GET', '/v1/connections/live/token')).json.access_token, token);
  await b.kill('SIGTERM');

  // And back to a new SQLite file.
  const back = path.join(b.dir, 'back.db');
  const backOk = await runCopy(pgConf, uri, back);
  noteRun('copy-store-back', backOk.out);
  assert.equal(backOk.code, 0, backOk.out);
  assert.match(backOk.out, /Copied 3 connections/, backOk.out);
  fs.mkdirSync(path.join(b.dir, 'state-back'), { mode: 0o700 });
  fs.renameSync(back, path.join(b.dir, 'state-back', 'tokenbroker.db'));
  b.confPath = variant(b, 'back', { key_file: key, state_dir: 'state-back', socket: 'tb-back.sock' });
  b.socket = path.join(b.dir, 'tb-back.sock');
  await b.launch();
  assert.deepEqual(await connectionsOf(b), states);
  assert.equal((await b.api('GET', '/v1/connections/live/token')).json.access_token, token);
});
