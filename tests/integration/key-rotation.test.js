'use strict';
/*
 * Key rotation (issue 11): tokenbrokerd --rotate-key NEW_KEY_FILE -c CONF
 * re-seals every sealed value under the new key in one SQLite transaction,
 * with the daemon stopped:
 *  - refused, clearly, while a daemon holds the store's lock; refused for a
 *    new key file readable by others or holding the current key, and when
 *    the current key does not open the store;
 *  - afterwards the old key is refused and the new one serves the same
 *    tokens, from the store (no provider request);
 *  - SIGKILL just before COMMIT (TOKENBROKER_TEST_ROTATE_STALL holds it
 *    there) leaves a store that opens with the old key, tokens intact; a
 *    second rotation then completes.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');

const { Broker, BUILD, httpGet, iniProvider, waitFor, noteRun } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const CLIENT_SECRET = 'fake-client-secret-for-key-rotation';

async function setup(t) {
  const fp = await startFakeProvider();
  const b = await Broker.prepare();
  b.opts = { providers: { fake: iniProvider(fp.providerConf()) }, secrets: { 'fake.secret': CLIENT_SECRET } };
  b.writeConfig();
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
    assert.doesNotMatch(b.log() || '', /Sanitizer|runtime error/);
  });
  return { b, fp };
}

async function authorize(b, name) {
  const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
  assert.ok(r.status === 200 || r.status === 201, r.text);
  const redirect = await httpGet(r.json.authorize_url);
  assert.equal(redirect.status, 302);
  assert.equal((await httpGet(redirect.headers.location)).status, 200);
  assert.equal((await b.api('GET', `/v1/connections/${name}`)).json.state, 'active');
}

async function token(b, name) {
  const r = await b.api('GET', `/v1/connections/${name}/token`);
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

function keyPath(b) { return path.join(b.dir, 'state', 'tokenbroker.key'); }

function writeKey(p, bytes, mode = 0o600) {
  fs.writeFileSync(p, bytes, { mode });
  fs.chmodSync(p, mode);
}

/** tokenbrokerd with extra args on b's config; bounded. Resolves {code, signal, log}; .proc for kill. */
function runDaemon(b, args, env = {}, onLog = null) {
  const e = { ...process.env, TOKENBROKER_LOG_LEVEL: 'info', ...env };
  for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID']) delete e[k];
  const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', b.confPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: e });
  let log = '';
  const add = (d) => { log += d; if (onLog) onLog(log); };
  p.stdout.on('data', add);
  p.stderr.on('data', add);
  const done = new Promise((resolve) => {
    const timer = setTimeout(() => p.kill('SIGKILL'), 60000);
    p.on('close', (code, signal) => { clearTimeout(timer); noteRun('rotate-key', log); resolve({ code, signal, log }); });
  });
  done.proc = p;
  return done;
}

async function prepareStore(t) {
  const { b, fp } = await setup(t);
  await b.launch();
  const names = ['rot-a', 'rot-b'];
  for (const n of names) await authorize(b, n);
  const pend = await b.api('POST', '/v1/connections', { name: 'rot-pending', provider: 'fake' });
  assert.ok(pend.status === 200 || pend.status === 201, pend.text);
  const before = {};
  for (const n of names) before[n] = await token(b, n);
  return { b, fp, names, before };
}

async function expectServes(b, fp, names, before) {
  const nreq = fp.requests.length;
  await b.launch();
  for (const n of names) assert.equal(await token(b, n), before[n]);
  assert.equal((await b.api('GET', '/v1/connections/rot-pending')).json.state, 'pending');
  assert.equal(fp.requests.length, nreq, 'the tokens came from the provider, not the store');
}

test('--rotate-key: refused while the daemon runs; afterwards the new key serves the same tokens and the old one is refused', { timeout: 180000 }, async (t) => {
  const { b, fp, names, before } = await prepareStore(t);
  const oldKey = fs.readFileSync(keyPath(b));
  const newKey = crypto.randomBytes(32);
  const newPath = path.join(b.dir, 'new.key');
  writeKey(newPath, newKey);

  // The daemon holds the lock: refused, nothing changed.
  const busy = await runDaemon(b, ['--rotate-key', newPath]);
  assert.notEqual(busy.code, 0, busy.log);
  assert.match(busy.log, /is in use \(PID \d+ holds '.*\/lock'\): stop tokenbrokerd before rotating the key/);
  assert.equal(await token(b, names[0]), before[names[0]]);
  await b.kill('SIGTERM');
  const dump = b.dumpStore();

  // A new key readable by others, or the current key again: refused.
  writeKey(path.join(b.dir, 'open.key'), crypto.randomBytes(32), 0o644);
  const open = await runDaemon(b, ['--rotate-key', path.join(b.dir, 'open.key')]);
  assert.notEqual(open.code, 0);
  assert.match(open.log, /is accessible by group or others: refusing to use it/);
  writeKey(path.join(b.dir, 'same.key'), oldKey);
  const same = await runDaemon(b, ['--rotate-key', path.join(b.dir, 'same.key')]);
  assert.notEqual(same.code, 0);
  assert.match(same.log, /holds the current key: nothing to rotate/);
  assert.equal(b.dumpStore(), dump);

  // The rotation.
  const rot = await runDaemon(b, ['--rotate-key', newPath]);
  assert.equal(rot.code, 0, rot.log);
  assert.match(rot.log, /Re-sealed the secrets of 3 connections in '.*' under the key in '.*new\.key'/);
  assert.doesNotMatch(rot.log, /Sanitizer|runtime error/);
  for (const n of names) assert.ok(!rot.log.includes(before[n]));
  const ev = b.sql("SELECT message FROM events WHERE kind = 'key-rotated'");
  assert.equal(ev.length, 1);
  assert.match(ev[0].message, /re-sealed under a new key \(by uid \d+\)/);

  // The old key is refused now, clearly.
  const stale = await runDaemon(b, []);
  assert.notEqual(stale.code, 0, stale.log);
  assert.ok(stale.log.includes(`${b.storeName} was sealed with another key (key file ${keyPath(b)}): refusing to start`), stale.log);

  // Nor does a rotation start from the wrong current key.
  writeKey(path.join(b.dir, 'third.key'), crypto.randomBytes(32));
  const wrong = await runDaemon(b, ['--rotate-key', path.join(b.dir, 'third.key')]);
  assert.notEqual(wrong.code, 0, wrong.log);
  assert.ok(wrong.log.includes(`${b.storeName} was sealed with another key than the current one (key file ${keyPath(b)}): refusing to rotate`), wrong.log);

  // Swap the key file: the same tokens, from the store.
  writeKey(keyPath(b), newKey);
  await expectServes(b, fp, names, before);
});

test('--rotate-key killed before COMMIT leaves a store that opens with the old key', { timeout: 180000 }, async (t) => {
  const { b, fp, names, before } = await prepareStore(t);
  await b.kill('SIGTERM');
  const newKey = crypto.randomBytes(32);
  const newPath = path.join(b.dir, 'new.key');
  writeKey(newPath, newKey);
  const stall = path.join(b.dir, 'stall');
  fs.writeFileSync(stall, '');

  let held = false;
  const run = runDaemon(b, ['--rotate-key', newPath], { TOKENBROKER_TEST_ROTATE_STALL: stall },
    (log) => { held = held || /holding the rotation before COMMIT/.test(log); });
  await waitFor(async () => held, { timeoutMs: 20000, what: 'the rotation to reach COMMIT' });
  run.proc.kill('SIGKILL');
  const r = await run;
  assert.equal(r.signal, 'SIGKILL', r.log);
  fs.unlinkSync(stall);

  // The old key still opens it; nothing was re-sealed, no event.
  await expectServes(b, fp, names, before);
  assert.equal(b.sql("SELECT count(*) AS n FROM events WHERE kind = 'key-rotated'")[0].n, 0);
  await b.kill('SIGTERM');

  // A rotation run to the end then works.
  const again = await runDaemon(b, ['--rotate-key', newPath]);
  assert.equal(again.code, 0, again.log);
  writeKey(keyPath(b), newKey);
  await expectServes(b, fp, names, before);
});
