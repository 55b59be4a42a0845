'use strict';
/*
 * Readiness, watchdog, reload and stop, as systemd sees them: the test owns
 * the NOTIFY_SOCKET (tests/tools/notify-listen) and reads every message.
 * Also socket activation: systemd-socket-activate passes named sockets and
 * the daemon binds nothing itself.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const { Broker, BUILD, waitFor, sleep, unixRequest, freePort, iniProvider, httpGet } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

function notifyListener(sockPath) {
  const p = spawn(path.join(BUILD, 'tools', 'notify-listen'), [sockPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const msgs = [];
  let buf = '';
  p.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const m = line.match(/^(\d+) (.*)$/);
      if (m) msgs.push({ t: Number(m[1]), fields: m[2].split('|').filter(Boolean) });
    }
  });
  return { p, msgs, has: (f) => msgs.some((m) => m.fields.includes(f)) };
}

test('READY after the listeners accept, WATCHDOG pings, RELOADING/READY around SIGHUP, STOPPING', { timeout: 90000 }, async (t) => {
  const fp = await startFakeProvider();
  const b = await Broker.prepare();
  const notifyPath = path.join(b.dir, 'notify.sock');
  const nl = notifyListener(notifyPath);
  await waitFor(() => fs.existsSync(notifyPath), { what: 'notify socket' });
  t.after(async () => { await b.stop(); nl.p.kill('SIGTERM'); await fp.close(); });

  b.opts = {
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'notify-test-secret' },
    env: { NOTIFY_SOCKET: notifyPath, WATCHDOG_USEC: '1000000' },
  };
  b.writeConfig();

  // READY=1 must come only once both listeners accept: probe them the
  // moment READY shows up.
  const launched = b.launch();
  const ready = await waitFor(() => nl.msgs.find((m) => m.fields.includes('READY=1')), { timeoutMs: 15000, what: 'READY=1' });
  const api = await unixRequest(b.socket, 'GET', '/v1/status');
  assert.equal(api.status, 200);
  assert.equal((await httpGet(`${b.publicUrl}/healthz`)).status, 200);
  await launched;
  assert.ok(ready.fields.some((f) => f.startsWith('STATUS=')), 'READY=1 came without a STATUS=');

  // Watchdog: WATCHDOG_USEC=1s, the loop pings at half of it.
  const w0 = nl.msgs.filter((m) => m.fields.includes('WATCHDOG=1')).length;
  await sleep(3000);
  const pings = nl.msgs.filter((m) => m.fields.includes('WATCHDOG=1')).length - w0;
  console.log(`# watchdog pings in 3 s with WATCHDOG_USEC=1s: ${pings}`);
  assert.ok(pings >= 3 && pings <= 12, `${pings} watchdog pings in 3 s`);

  // STATUS= follows changes.
  const r = await b.api('POST', '/v1/connections', { name: 'n1', provider: 'fake' });
  assert.equal(r.status, 201);
  await waitFor(() => nl.msgs.some((m) => m.fields.some((f) => /^STATUS=0 active, 1 pending/.test(f))), { timeoutMs: 5000, what: 'STATUS with 1 pending' });

  // SIGHUP with a new provider: RELOADING=1 then READY=1, and it is there.
  fs.writeFileSync(path.join(b.dir, 'providers.d', 'second.conf'), iniProvider(fp.providerConf({ client_id: 'second' })));
  const n0 = nl.msgs.length;
  process.kill(b.proc.pid, 'SIGHUP');
  await waitFor(() => nl.msgs.slice(n0).some((m) => m.fields.includes('READY=1')), { timeoutMs: 5000, what: 'READY=1 after reload' });
  const after = nl.msgs.slice(n0);
  const iRel = after.findIndex((m) => m.fields.includes('RELOADING=1'));
  const iRdy = after.findIndex((m) => m.fields.includes('READY=1'));
  assert.ok(iRel >= 0 && iRel <= iRdy, 'RELOADING=1 must come before READY=1');
  let prov = await b.api('GET', '/v1/providers');
  assert.deepEqual(prov.json.providers.map((p) => p.name), ['fake', 'second']);
  // connections and the socket survived
  assert.equal((await b.api('GET', '/v1/connections/n1')).status, 200);

  // A bad file: reported with file:line, the running config is kept.
  fs.writeFileSync(path.join(b.dir, 'providers.d', 'third.conf'), '[provider]\ntoken_url = https://x.example/token\nbogus_key = 1\n');
  const n1 = nl.msgs.length;
  process.kill(b.proc.pid, 'SIGHUP');
  await waitFor(() => nl.msgs.slice(n1).some((m) => m.fields.includes('READY=1')), { timeoutMs: 5000, what: 'READY=1 after failed reload' });
  await waitFor(() => /third\.conf:3: Unknown key 'bogus_key'/.test(b.log()), { timeoutMs: 5000, what: 'file:line in the log' });
  prov = await b.api('GET', '/v1/providers');
  assert.deepEqual(prov.json.providers.map((p) => p.name), ['fake', 'second']);

  // SIGTERM: STOPPING=1 and a clean exit.
  const st = await b.stop();
  assert.equal(st.code, 0);
  assert.ok(nl.has('STOPPING=1'));
});

test('socket activation: named sockets passed by systemd-socket-activate, nothing bound by the daemon', { timeout: 90000 }, async (t) => {
  const b = await Broker.prepare();
  const port = await freePort();
  const activated = path.join(b.dir, 'activated.sock');
  // The config names other addresses: if the daemon bound its own, they would exist.
  b.opts = { providers: {}, broker: { socket: 'own.sock', callback_listen: `127.0.0.1:${await freePort()}` } };
  b.writeConfig();
  const log = fs.openSync(b.logPath, 'a');
  // systemd-socket-activate execs the daemon in its own process: the
  // harness watches it like a daemon it launched (exit status, sanitizer).
  b.adopt(spawn('systemd-socket-activate', ['-l', activated, '-l', `127.0.0.1:${port}`, '--fdname=api:callback',
    path.join(BUILD, 'tokenbrokerd'), '-c', b.confPath], { stdio: ['ignore', log, log] }));
  fs.closeSync(log);
  t.after(async () => { await b.stop(); });
  await waitFor(() => fs.existsSync(activated), { what: 'the activated socket' });

  // The first client triggers the start and is served, not refused.
  const r = await unixRequest(activated, 'GET', '/v1/status', undefined, { timeoutMs: 15000 });
  assert.equal(r.status, 200, b.log());
  const cb = await httpGet(`http://127.0.0.1:${port}/healthz`);
  assert.equal(cb.status, 200);
  assert.equal(fs.existsSync(path.join(b.dir, 'own.sock')), false, 'the daemon bound its own API socket');
  const own = Number(b.opts.broker.callback_listen.split(':')[1]);
  const refused = await new Promise((resolve) => {
    const s = net.connect(own, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(false); });
    s.on('error', () => resolve(true));
  });
  assert.equal(refused, true, 'the daemon bound its own callback listener');
});

test('passed sockets are taken by name, not by position', { timeout: 90000 }, async (t) => {
  const b = await Broker.prepare();
  b.opts = { providers: {}, broker: { socket: 'own.sock', callback_listen: `127.0.0.1:${await freePort()}` } };
  b.writeConfig();
  const extra = path.join(b.dir, 'extra.sock'), api = path.join(b.dir, 'api.sock');
  const log = fs.openSync(b.logPath, 'a');
  b.adopt(spawn('systemd-socket-activate', ['-l', extra, '-l', api, '--fdname=extra:api',
    path.join(BUILD, 'tokenbrokerd'), '-c', b.confPath], { stdio: ['ignore', log, log] }));
  fs.closeSync(log);
  t.after(async () => { await b.stop(); });
  await waitFor(() => fs.existsSync(api), { what: 'the activated socket' });
  const r = await unixRequest(api, 'GET', '/v1/status', undefined, { timeoutMs: 15000 });
  assert.equal(r.status, 200, b.log());
  await waitFor(() => /Ignoring passed socket 'extra'/.test(b.log()), { timeoutMs: 5000, what: 'the warning about extra' });
  assert.match(b.log(), /API on the socket passed by systemd/);
});
