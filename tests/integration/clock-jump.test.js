'use strict';
/*
 * Wall-clock jumps. The daemon's CLOCK_REALTIME alone is moved, by our own
 * LD_PRELOAD shim (tests/tools/realtime-shift.c, built into
 * $BUILD/tools/realtime-shift.so): CLOCK_MONOTONIC, CLOCK_BOOTTIME and
 * every timer stay the kernel's, whatever the machine's uptime. Set back an
 * hour, the broker must not hand out an expired token; set forward an hour,
 * it must not stampede the provider. Deadlines run on CLOCK_BOOTTIME.
 *
 * The second test keeps libfaketime, for what it does to timers: 0.9.10
 * also moves absolute timerfd deadlines on CLOCK_BOOTTIME/CLOCK_MONOTONIC by
 * its offset (DONT_FAKE_MONOTONIC=1 or not), so +1h on a machine booted
 * less than an hour ago asks for a deadline before boot and the kernel says
 * EINVAL. The daemon runs in a time namespace that makes the machine look
 * booted ten minutes ago (unshare -T), so that happens on any machine, and
 * must keep serving: warn once, keep the timers running.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const broker = require('../lib/broker.js');
const { Broker, BUILD, followAuthorize, sleep, waitFor, unixRequest, iniProvider } = broker;
const { startFakeProvider } = require('../lib/fake-provider.js');
const { archive } = require('../lib/suite.js');

const SHIFT = path.join(BUILD, 'tools', 'realtime-shift.so');
const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
const TTL = 4;   // seconds
const SANITIZER = /Sanitizer|runtime error:/;

const asanOptions = () => `${process.env.ASAN_OPTIONS ? `${process.env.ASAN_OPTIONS}:` : ''}verify_asan_link_order=0`;

function tail(text, n = 40) { return text.split('\n').slice(-n).join('\n'); }

/** Runs fn; a failure carries the daemon's log tail. */
async function withLog(logOf, fn) {
  try {
    return await fn();
  } catch (e) {
    e.message += `\n--- tokenbrokerd log tail ---\n${tail(logOf())}`;
    throw e;
  }
}

/**
 * Serves tokens for `seconds`, each one checked against the provider's
 * issue time: never expired, never longer than the lifetime.
 */
async function watch(api, fp, seconds) {
  const issuedAt = (tok) => (fp.issued.find((x) => x.access_token === tok) || {}).at;
  const end = Date.now() + seconds * 1000;
  let served = 0;
  while (Date.now() < end) {
    const a = await api('GET', '/v1/connections/cj/token');
    assert.equal(a.status, 200, a.text);
    const at = issuedAt(a.json.access_token);
    assert.ok(at, 'a token the provider never issued');
    const age = (Date.now() - at) / 1000;
    assert.ok(age < TTL, `an expired token was handed out (issued ${age.toFixed(2)} s ago, lifetime ${TTL} s)`);
    assert.ok(a.json.expires_in <= TTL, `expires_in ${a.json.expires_in} > lifetime`);
    served++;
    await sleep(150);
  }
  return served;
}

const refreshesOf = (fp) => () => fp.requests.filter((x) => x.path === '/token' && x.params.grant_type === 'refresh_token').length;

test('a wall clock set back or forward changes neither expiry nor the refresh rate', { timeout: 90000 }, async (t) => {
  assert.ok(fs.existsSync(SHIFT), `${SHIFT} missing: make builds it`);
  const fp = await startFakeProvider({ expiresIn: TTL });
  const b = await Broker.prepare();
  const clock = path.join(b.dir, 'realtime-shift');
  fs.writeFileSync(clock, '+0\n');
  b.opts = {
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'clock-jump-secret' },
    broker: { refresh_margin: '1s', refresh_ratio: '0.25', refresh_jitter: '0s' },
    env: { LD_PRELOAD: SHIFT, REALTIME_SHIFT_FILE: clock, ASAN_OPTIONS: asanOptions() },
  };
  b.writeConfig();
  await b.launch();
  t.after(async () => { await b.stop(); await fp.close(); });

  await withLog(() => b.log(), async () => {
    const r = await b.api('POST', '/v1/connections', { name: 'cj', provider: 'fake' });
    assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
    const refreshes = refreshesOf(fp);
    const shown = async () => Date.parse((await b.api('GET', '/v1/connections/cj')).json.expires_at);

    // The wall clock goes back an hour: tokens must still expire on time.
    fs.writeFileSync(clock, '-1h\n');
    let n0 = refreshes();
    await watch((...a) => b.api(...a), fp, 10);
    const back = refreshes() - n0;
    // The daemon's wall clock really moved: the expires_at it shows is an hour behind.
    let at = await shown();
    assert.ok(at < Date.now() - 3000 * 1000, `the shim had no effect (expires_at ${new Date(at).toISOString()})`);
    assert.ok(back >= 2 && back <= 5, `${back} refreshes in 10 s with ${TTL} s tokens after the clock went back`);

    // Forward an hour: no stampede, tokens still right.
    fs.writeFileSync(clock, '+1h\n');
    n0 = refreshes();
    await watch((...a) => b.api(...a), fp, 10);
    const fwd = refreshes() - n0;
    at = await shown();
    assert.ok(at > Date.now() + 3000 * 1000, `the shim had no effect going forward (expires_at ${new Date(at).toISOString()})`);
    assert.ok(fwd >= 2 && fwd <= 5, `${fwd} refreshes in 10 s with ${TTL} s tokens after the clock went forward`);
    assert.doesNotMatch(b.log(), /refused to arm a timer/, 'a timer was refused: the shim must leave timers alone');
    console.log(`# refreshes in 10 s: ${back} after the wall clock went back 1 h, ${fwd} after it went forward 1 h`);
  });
});

/**
 * Seconds since boot on CLOCK_BOOTTIME and CLOCK_MONOTONIC, as the host
 * sees them: unshare --boottime/--monotonic set offsets from the host's
 * clocks, not from those of a time namespace this test may already run in
 * (/proc/self/timens_offsets says which).
 */
function uptimes() {
  const off = { boottime: 0, monotonic: 0 };
  try {
    for (const l of fs.readFileSync('/proc/self/timens_offsets', 'utf8').split('\n')) {
      const [k, sec] = l.trim().split(/\s+/);
      if (k in off) off[k] = Number(sec);
    }
  } catch { /* no time namespaces: offsets 0 */ }
  const boot = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) - off.boottime;
  const mono = Number(process.hrtime.bigint() / 1000000n) / 1000 - off.monotonic;   // libuv: CLOCK_MONOTONIC
  return { boot, mono };
}

test('a timer the kernel refuses (libfaketime +1h on a machine booted minutes ago) does not stop the daemon', { timeout: 90000 }, async (t) => {
  assert.ok(fs.existsSync(LIBFAKETIME), `${LIBFAKETIME} missing: make deps installs libfaketime`);
  // The machine looks booted 10 minutes ago; clocks of the namespace, not the host.
  const { boot, mono } = uptimes();
  const offBoot = String(Math.floor(600 - boot)), offMono = String(Math.floor(600 - mono));
  const ns = ['-T', '--fork', '--kill-child', '--monotonic', offMono, '--boottime', offBoot];
  const probe = spawnSync('unshare', [...ns, 'cat', '/proc/uptime'], { encoding: 'utf8', timeout: 10000 });
  assert.equal(probe.status, 0, `unshare -T (a time namespace) does not work here: ${probe.stderr}`);
  const seen = Number(probe.stdout.split(' ')[0]);
  assert.ok(seen < 3600, `the namespace still looks up for ${seen} s`);

  const fp = await startFakeProvider({ expiresIn: TTL });
  const b = await Broker.prepare();
  const clock = path.join(b.dir, 'faketime');
  fs.writeFileSync(clock, '+0\n');
  b.opts = {
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'clock-einval-secret' },
    broker: { refresh_margin: '1s', refresh_ratio: '0.25', refresh_jitter: '0s' },
  };
  b.writeConfig();

  // tokenbrokerd under unshare (started here, not by Broker.launch): env(1)
  // puts libfaketime under the daemon only.
  const log = fs.openSync(b.logPath, 'a');
  const env = { ...process.env, TOKENBROKER_LOG_LEVEL: 'debug' };
  for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'WATCHDOG_USEC']) delete env[k];
  const u = spawn('unshare', [...ns, '--', 'env', `LD_PRELOAD=${LIBFAKETIME}`, `FAKETIME_TIMESTAMP_FILE=${clock}`,
    'FAKETIME_NO_CACHE=1', 'DONT_FAKE_MONOTONIC=1', `ASAN_OPTIONS=${asanOptions()}`,
    path.join(BUILD, 'tokenbrokerd'), '-c', b.confPath], { stdio: ['ignore', log, log], env });
  fs.closeSync(log);
  const exited = new Promise((resolve) => u.on('exit', (code, signal) => resolve({ code, signal })));
  let daemonPid = 0;
  t.after(async () => {
    if (u.exitCode === null && u.signalCode === null) {
      if (daemonPid) try { process.kill(daemonPid, 'SIGKILL'); } catch { /* gone */ }
      u.kill('SIGKILL');   // --kill-child: the daemon goes with it
      await Promise.race([exited, sleep(5000)]);
    }
    archive(b.dir, b.logPath, b.db);
    if (!process.env.TB_KEEP) fs.rmSync(b.dir, { recursive: true, force: true });
    await fp.close();
  });

  await withLog(() => b.log(), async () => {
    await waitFor(async () => {
      if (u.exitCode !== null || u.signalCode !== null) throw Object.assign(new Error('tokenbrokerd exited early'), { fatal: true });
      const r = await unixRequest(b.socket, 'GET', '/v1/status').catch(() => null);
      return r && r.status === 200;
    }, { timeoutMs: 15000, what: 'tokenbrokerd to answer on its socket' });
    // unshare --fork has one child: env, which became tokenbrokerd.
    daemonPid = Number(fs.readFileSync(`/proc/${u.pid}/task/${u.pid}/children`, 'utf8').trim());
    assert.ok(daemonPid > 0);
    assert.equal(fs.readFileSync(`/proc/${daemonPid}/comm`, 'utf8').trim(), 'tokenbrokerd');

    const api = (...a) => unixRequest(b.socket, ...a);
    const r = await api('POST', '/v1/connections', { name: 'cj', provider: 'fake' });
    assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
    await watch(api, fp, 3);
    assert.doesNotMatch(b.log(), /refused to arm a timer/, 'a timer was refused before the clock moved');

    // +1h: every absolute deadline libfaketime passes on is now before boot.
    fs.writeFileSync(clock, '+1h\n');
    const refreshes = refreshesOf(fp);
    const n0 = refreshes();
    const served = await watch(api, fp, 10);
    const n = refreshes() - n0;
    assert.equal(u.exitCode, null, 'tokenbrokerd exited after the clock moved');
    // The trap was really sprung, and said once.
    const warnings = b.log().match(/refused to arm a timer/g) || [];
    assert.equal(warnings.length, 1, `${warnings.length} warnings about a refused timer (want exactly 1)`);
    assert.doesNotMatch(b.log(), /Event loop failed/);
    // Timers still fire: refreshes go on at the tokens' pace, without the API waking the loop.
    assert.ok(n >= 2 && n <= 5, `${n} refreshes in 10 s with ${TTL} s tokens after the clock went forward`);
    const m0 = refreshes();
    await sleep(6000);   // nothing but the daemon's own timers
    const idle = refreshes() - m0;
    assert.ok(idle >= 1, `no refresh in 6 s without API traffic (${TTL} s tokens): the timers stopped`);
    console.log(`# after libfaketime +1h at uptime ${seen.toFixed(0)} s: ${served} tokens served and ${n} refreshes in 10 s, ${idle} refreshes in 6 idle s`);

    // A clean stop still works.
    process.kill(daemonPid, 'SIGTERM');
    const st = await Promise.race([exited, sleep(15000).then(() => null)]);
    assert.ok(st, 'tokenbrokerd did not stop within 15 s of SIGTERM');
    assert.deepEqual(st, { code: 0, signal: null }, `exit after SIGTERM: ${JSON.stringify(st)}`);
    assert.doesNotMatch(b.log(), SANITIZER);
  });
});
