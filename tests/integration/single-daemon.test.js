'use strict';
/*
 * One daemon per store, and a socket that belongs to whoever listens on it.
 * A second tokenbrokerd on the same state_dir (same or another socket, same
 * or another callback port) exits non-zero naming the first one's PID,
 * before it binds anything, while the first keeps serving; a socket left by
 * a SIGKILLed daemon is replaced at the next start; a daemon on another
 * state_dir never unlinks a live socket, nor a path that is not a socket;
 * the socket goes at a clean stop, but not one passed by systemd.
 *
 * The second daemons are started here (not through Broker.launch), with
 * their output captured, checked for sanitizer reports and archived for
 * the suite's leak scan.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const broker = require('../lib/broker.js');
const { Broker, BUILD, followAuthorize, freePort, sleep, waitFor, unixRequest, iniProvider } = broker;
const { startFakeProvider } = require('../lib/fake-provider.js');
const { archive } = require('../lib/suite.js');

const SANITIZER = /Sanitizer|runtime error:/;

function tail(text, n = 40) { return text.split('\n').slice(-n).join('\n'); }

async function withLog(logOf, fn) {
  try {
    return await fn();
  } catch (e) {
    e.message += `\n--- first tokenbrokerd log tail ---\n${tail(logOf())}`;
    throw e;
  }
}

/** Keeps its output for the leak scan and the sanitizer check. */
function noteOutput(dir, label, text) {
  if (typeof broker.noteRun === 'function') { broker.noteRun(label, text); return; }
  const f = path.join(dir, `${label}.out`);
  fs.writeFileSync(f, text);
  archive(dir, f, path.join(dir, 'no-such.db'));
}

/** Runs a tokenbrokerd that is expected to give up; resolves {code, signal, out}. */
function runDaemon(confPath, { timeoutMs = 15000, env = {} } = {}) {
  return new Promise((resolve) => {
    const e = { ...process.env, TOKENBROKER_LOG_LEVEL: 'debug', ...env };
    for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'WATCHDOG_USEC']) delete e[k];
    const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', confPath], { stdio: ['ignore', 'pipe', 'pipe'], env: e });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out, pid: p.pid }); });
  });
}

/** The config of the first broker with some keys changed, written beside it. */
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

function listening(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

/**
 * Asks the first daemon for a token every 20 ms until `attempt` (a second
 * daemon's run) is over, at least once however fast it ends, and once more
 * after it; every answer must be a 200 with a token. Resolves the attempt.
 */
async function serveDuring(b, st, attempt) {
  let over = false;
  attempt.then(() => { over = true; });
  const once = async () => {
    const r = await b.api('GET', '/v1/connections/one/token', undefined, { timeoutMs: 5000 }).catch((e) => ({ status: 0, text: e.message }));
    if (r.status === 200 && r.json && r.json.access_token) st.ok++;
    else st.bad.push(`${r.status} ${String(r.text).slice(0, 120)}`);
  };
  do {
    await once();
    await sleep(20);
  } while (!over);
  const result = await attempt;
  await once();
  return result;
}

async function firstBroker(t, extra = {}) {
  const fp = await startFakeProvider({ expiresIn: 3600 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'single-daemon-secret' },
    ...extra,
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  const r = await b.api('POST', '/v1/connections', { name: 'one', provider: 'fake' });
  assert.equal(r.status, 201, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  await waitFor(async () => (await b.api('GET', '/v1/connections/one/token')).status === 200, { what: 'a token' });
  return { b, fp };
}

test('a second daemon on the same state_dir exits non-zero naming the first one, which keeps serving', { timeout: 120000 }, async (t) => {
  const { b } = await firstBroker(t);
  await withLog(() => b.log(), async () => {
    const pid = b.proc.pid;
    const sock0 = fs.statSync(b.socket);
    const lock = fs.readFileSync(path.join(b.dir, 'state', 'lock'), 'utf8');
    assert.equal(lock.trim(), String(pid), 'state_dir/lock holds the PID of the daemon');

    const otherPort = await freePort();
    const cases = [
      ['same socket, same port', b.confPath, null, null],
      ['same socket, another port', variant(b, 'same-sock-other-port', { callback_listen: `127.0.0.1:${otherPort}`, public_url: `http://127.0.0.1:${otherPort}` }), null, otherPort],
      ['another socket, same port', variant(b, 'other-sock-same-port', { socket: 'other1.sock' }), 'other1.sock', null],
      ['another socket, another port', variant(b, 'other-sock-other-port', { socket: 'other2.sock', callback_listen: `127.0.0.1:${otherPort}`, public_url: `http://127.0.0.1:${otherPort}` }), 'other2.sock', otherPort],
    ];
    const poll = { ok: 0, bad: [] };
    {
      for (const [what, conf, sock, port] of cases) {
        const r = await serveDuring(b, poll, runDaemon(conf));
        noteOutput(b.dir, `second-daemon-${what.replace(/\W+/g, '-')}`, r.out);
        assert.doesNotMatch(r.out, SANITIZER, `${what}: sanitizer report:\n${r.out}`);
        assert.ok(r.code !== 0 && r.code !== null, `${what}: the second daemon exited with ${r.code}/${r.signal}:\n${r.out}`);
        assert.match(r.out, new RegExp(`Another tokenbrokerd \\(PID ${pid}\\) is running on the store`), `${what}: the first daemon's PID is not named:\n${r.out}`);
        // It gave up before binding or opening anything.
        assert.doesNotMatch(r.out, /Loaded \d+ connections|tokenbrokerd ready|Failed to listen/, `${what}: it went on after the lock:\n${r.out}`);
        if (sock) assert.equal(fs.existsSync(path.join(b.dir, sock)), false, `${what}: it created ${sock}`);
        if (port) assert.equal(await listening(port), false, `${what}: something listens on the second port`);
        // The first one's socket is the same socket, and it still answers.
        const st = fs.statSync(b.socket);
        assert.ok(st.isSocket() && st.ino === sock0.ino, `${what}: the first daemon's socket was replaced`);
        assert.equal(b.proc.exitCode, null, `${what}: the first daemon exited`);
        assert.equal((await b.api('GET', '/v1/status')).status, 200);
        assert.equal(fs.readFileSync(path.join(b.dir, 'state', 'lock'), 'utf8').trim(), String(pid), `${what}: the lock file lost the PID`);
      }
    }
    assert.deepEqual(poll.bad, [], 'the first daemon failed token requests while the others tried to start');
    assert.ok(poll.ok >= 2 * cases.length, `only ${poll.ok} tokens served during and after the attempts`);
    console.log(`# 4 second daemons refused; the first served ${poll.ok} tokens during and after the attempts, none refused`);
  });
});

test('a stale socket from a SIGKILLed daemon is replaced; the socket goes at SIGTERM', { timeout: 120000 }, async (t) => {
  const { b } = await firstBroker(t);
  await withLog(() => b.log(), async () => {
    await b.kill('SIGKILL');
    const st = fs.lstatSync(b.socket);
    assert.ok(st.isSocket(), 'a SIGKILLed daemon leaves its socket behind');
    await b.launch();   // the lock died with the first one, and the socket is replaced
    // (the new socket may get the old inode number: the log says what happened)
    assert.match(b.log(), /Replacing '.*tb\.sock', a stale socket nobody listens on/);
    assert.equal((await b.api('GET', '/v1/connections/one/token')).status, 200);
    assert.equal(fs.readFileSync(path.join(b.dir, 'state', 'lock'), 'utf8').trim(), String(b.proc.pid));

    const last = await b.stop({ keep: true });
    assert.deepEqual([last.code, last.signal], [0, null], `exit after SIGTERM: ${JSON.stringify(last)}`);
    assert.equal(fs.existsSync(b.socket), false, 'the socket is still there after a clean stop');
  });
});

test('a daemon on another state_dir never unlinks a live socket, nor a path that is not a socket', { timeout: 120000 }, async (t) => {
  const { b } = await firstBroker(t);
  await withLog(() => b.log(), async () => {
    const pid = b.proc.pid;
    const sock0 = fs.statSync(b.socket);
    const poll = { ok: 0, bad: [] };
    let r;
    {
      const port = await freePort();
      r = await serveDuring(b, poll, runDaemon(variant(b, 'other-state', { state_dir: 'state2', callback_listen: `127.0.0.1:${port}`, public_url: `http://127.0.0.1:${port}` })));
      noteOutput(b.dir, 'other-state-same-socket', r.out);
      assert.doesNotMatch(r.out, SANITIZER, r.out);
      assert.ok(r.code !== 0 && r.code !== null, `exited with ${r.code}/${r.signal}:\n${r.out}`);
      assert.match(r.out, new RegExp(`'[^']*tb\\.sock' is the socket of a running process \\(PID ${pid}\\)`), r.out);
      assert.ok(fs.existsSync(path.join(b.dir, 'state2', 'lock')), 'the lock of the other store comes first');
      const st = fs.statSync(b.socket);
      assert.ok(st.isSocket() && st.ino === sock0.ino, 'the live socket was unlinked');
      assert.equal((await b.api('GET', '/v1/status')).status, 200);
    }
    assert.deepEqual(poll.bad, [], 'the first daemon failed token requests meanwhile');
    assert.ok(poll.ok >= 2, `only ${poll.ok} tokens served during and after the attempt`);

    // A regular file where the socket should be: an error, and the file stays.
    const plain = path.join(b.dir, 'not-a-socket');
    fs.writeFileSync(plain, 'keep me\n');
    const port = await freePort();
    r = await runDaemon(variant(b, 'plain-file', { state_dir: 'state3', socket: 'not-a-socket', callback_listen: `127.0.0.1:${port}`, public_url: `http://127.0.0.1:${port}` }));
    noteOutput(b.dir, 'socket-path-is-a-file', r.out);
    assert.doesNotMatch(r.out, SANITIZER, r.out);
    assert.ok(r.code !== 0 && r.code !== null, `exited with ${r.code}/${r.signal}:\n${r.out}`);
    assert.match(r.out, /'[^']*not-a-socket' exists and is not a socket/, r.out);
    assert.equal(fs.readFileSync(plain, 'utf8'), 'keep me\n');
  });
});

test('socket activation: the lock holds, and the passed socket stays after SIGTERM', { timeout: 120000 }, async (t) => {
  const b = await Broker.prepare();
  b.opts = { providers: {}, broker: { socket: 'own.sock' } };
  b.writeConfig();
  const activated = path.join(b.dir, 'activated.sock');
  const port = await freePort();
  const log = fs.openSync(b.logPath, 'a');
  const env = { ...process.env, TOKENBROKER_LOG_LEVEL: 'debug' };
  for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'WATCHDOG_USEC']) delete env[k];
  // systemd-socket-activate execs the daemon in its own process: p.pid is tokenbrokerd's.
  const p = spawn('systemd-socket-activate', ['-l', activated, '-l', `127.0.0.1:${port}`, '--fdname=api:callback',
    path.join(BUILD, 'tokenbrokerd'), '-c', b.confPath], { stdio: ['ignore', log, log], env });
  fs.closeSync(log);
  const exited = new Promise((resolve) => p.on('exit', (code, signal) => resolve({ code, signal })));
  t.after(async () => {
    if (p.exitCode === null && p.signalCode === null) { p.kill('SIGKILL'); await Promise.race([exited, sleep(5000)]); }
    archive(b.dir, b.logPath, b.db);
    if (!process.env.TB_KEEP) fs.rmSync(b.dir, { recursive: true, force: true });
  });
  await withLog(() => b.log(), async () => {
    await waitFor(() => fs.existsSync(activated), { what: 'the activated socket' });
    assert.equal((await unixRequest(activated, 'GET', '/v1/status', undefined, { timeoutMs: 15000 })).status, 200);
    await waitFor(() => /tokenbrokerd ready/.test(b.log()), { what: 'the daemon to be ready' });

    const r = await runDaemon(b.confPath);
    noteOutput(b.dir, 'second-daemon-beside-activated', r.out);
    assert.doesNotMatch(r.out, SANITIZER, r.out);
    assert.ok(r.code !== 0 && r.code !== null, `exited with ${r.code}/${r.signal}:\n${r.out}`);
    assert.match(r.out, new RegExp(`Another tokenbrokerd \\(PID ${p.pid}\\) is running on the store`), r.out);
    assert.equal(fs.existsSync(path.join(b.dir, 'own.sock')), false);

    p.kill('SIGTERM');
    const st = await Promise.race([exited, sleep(15000).then(() => null)]);
    assert.deepEqual(st, { code: 0, signal: null }, `exit after SIGTERM: ${JSON.stringify(st)}`);
    assert.ok(fs.lstatSync(activated).isSocket(), 'the daemon removed the socket systemd passed it');
    assert.doesNotMatch(b.log(), SANITIZER);
  });
});
