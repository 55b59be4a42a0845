'use strict';
/*
 * A local user with no rights on any connection (uid 65534 through
 * setpriv) tries to starve the broker's two listeners (issue 11, findings
 * 1 and 5):
 *  - socket API: 300 idle connections from that uid; the server keeps at
 *    most the per-uid cap (128) of them and shuts the rest at once, and
 *    root's `tokenctl token` still answers promptly;
 *  - a POST to an admin route with a 60,000-byte Content-Length and no
 *    body yet: 403 at once, decided from the route and the peer before the
 *    body is read; 300 such bodies sent in full leave the daemon's memory
 *    about where it was;
 *  - a request trickled a byte a second: shut down after the request
 *    deadline (30 s) although every byte resets MHD's idle timeout;
 *  - callback listener: 100 idle connections from 127.0.0.1 (every local
 *    user's address) held, more opened all the while; /healthz still
 *    answers (the connections that waited longest are closed to make room).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const { Broker, httpGet, iniProvider, sleep } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const PER_UID = 128;           // API_PER_UID_MAX in daemon/api.c
const API_TIMEOUT_S = 30;      // API_REQUEST_TIMEOUT_SEC
const NOBODY = 65534;
const SANITIZER = /AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|SUMMARY: .*Sanitizer/;

async function setup(t) {
  const fp = await startFakeProvider();
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'local-starvation-client-secret' },
  });
  t.after(async () => {
    const alive = b.proc.exitCode === null && b.proc.signalCode === null;
    const st = await b.stop({ keep: true });
    await fp.close();
    const log = b.log();
    fs.rmSync(b.dir, { recursive: true, force: true });
    assert.ok(alive, `tokenbrokerd died during the test:\n${log.slice(-4000)}`);
    assert.doesNotMatch(log, SANITIZER, 'sanitizer report in the daemon log');
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  const r = await b.ctl(['--json', 'authorize', 'act', '--provider', 'fake', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const red = await httpGet(JSON.parse(r.stdout).authorize_url);
  assert.equal((await httpGet(red.headers.location)).status, 200);
  return { b, fp };
}

// The hostile user's side, run as uid 65534: one line of JSON per phase on
// stdout; holds its connections until its stdin closes (or 90 s).
const HOSTILE = String.raw`
const net = require('node:net');
const sock = process.argv[1], n = Number(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const conns = [];
function open() {
  return new Promise((resolve) => {
    const s = net.connect(sock);
    s.info = { closed: false, data: '' };
    s.on('error', () => {});
    s.on('data', (d) => { s.info.data += d; });
    s.on('close', () => { s.info.closed = true; });
    s.on('connect', () => resolve(s));
    setTimeout(() => resolve(s), 5000);
  });
}
(async () => {
  // 1. An admin route, a large body announced, none sent: answered?
  const p = await open();
  const t0 = Date.now();
  p.write('POST /v1/connections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n');
  while (!p.info.data.includes('\r\n\r\n') && !p.info.closed && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
  out({ phase: 'early', head: p.info.data.split('\r\n')[0], ms: Date.now() - t0 });
  p.destroy();
  // 2. n idle connections.
  for (let i = 0; i < n; i++) conns.push(await open());
  await new Promise((r) => setTimeout(r, 2000));
  out({ phase: 'idle', open: conns.filter((s) => !s.info.closed).length });
  // 3. A full 60,000-byte body on every connection still open.
  const body = 'x'.repeat(60000);
  for (const s of conns) if (!s.info.closed) s.write('POST /v1/connections HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n' + body);
  await new Promise((r) => setTimeout(r, 3000));
  out({ phase: 'bodies', open: conns.filter((s) => !s.info.closed).length });
  for (const s of conns) s.destroy();
  conns.length = 0;
  // 4. n idle connections again, held.
  for (let i = 0; i < n; i++) conns.push(await open());
  out({ phase: 'holding', open: conns.filter((s) => !s.info.closed).length });
  const stop = () => { for (const s of conns) s.destroy(); process.exit(0); };
  process.stdin.on('end', stop);
  process.stdin.resume();
  setTimeout(stop, 90000);
})();
`;

/** GET on a fresh TCP connection; resolves the status line ('' if none came). */
function rawGet(port, urlPath, waitMs) {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    let data = '';
    const done = () => { clearTimeout(timer); s.destroy(); resolve(data.split('\r\n')[0]); };
    const timer = setTimeout(done, waitMs);
    s.on('error', done);
    s.on('close', done);
    s.on('data', (d) => { data += d; if (data.includes('\r\n')) done(); });
    s.on('connect', () => s.write(`GET ${urlPath} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`));
  });
}

function rssKiB(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]);
}

test('socket API: one uid cannot starve root (per-uid cap, ACL before the body, request deadline)', { timeout: 180000 }, async (t) => {
  const { b } = await setup(t);
  // The socket's directory must let the hostile user reach the socket.
  fs.chmodSync(b.dir, 0o755);
  fs.chmodSync(path.dirname(b.socket), 0o755);

  // A request trickled a byte a second, from root (the deadline is for
  // everyone): closed after API_TIMEOUT_S.
  const slow = net.connect(b.socket);
  const slowInfo = { closedAt: null, t0: Date.now(), sent: 0 };
  slow.on('error', () => {});
  slow.on('close', () => { slowInfo.closedAt = Date.now(); });
  const partial = `GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ${'a'.repeat(200)}`;
  const trickle = setInterval(() => {
    if (slowInfo.closedAt) return;
    slow.write(partial[slowInfo.sent % partial.length]);
    slowInfo.sent++;
  }, 1000);
  t.after(() => { clearInterval(trickle); slow.destroy(); });

  const rss0 = rssKiB(b.proc.pid);
  const h = spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--',
    process.execPath, '-e', HOSTILE, b.socket, '300'], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH, HOME: '/' } });
  let hostileErr = '';
  h.stderr.on('data', (d) => { hostileErr += d; });
  t.after(() => { if (h.exitCode === null && h.signalCode === null) process.kill(h.pid, 'SIGKILL'); });
  const phases = {};
  let buf = '';
  h.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const o = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      phases[o.phase] = o;
    }
  });
  const until = async (phase, ms) => {
    const t0 = Date.now();
    while (!phases[phase] && Date.now() - t0 < ms && h.exitCode === null) await sleep(100);
    assert.ok(phases[phase], `the hostile user never reached phase ${phase}: ${hostileErr}`);
    return phases[phase];
  };

  const early = await until('early', 20000);
  assert.match(early.head, /^HTTP\/1\.1 403/, `an admin route with an unsent 60,000-byte body was not refused before the body (${early.ms} ms): ${JSON.stringify(early.head)}`);
  assert.ok(early.ms < 3000, `the refusal took ${early.ms} ms`);

  const idle = await until('idle', 60000);
  assert.ok(idle.open <= PER_UID, `uid ${NOBODY} holds ${idle.open} idle connections on the socket, the per-uid cap is ${PER_UID}`);
  assert.ok(idle.open >= PER_UID - 8, `only ${idle.open} of uid ${NOBODY}'s connections were kept (cap ${PER_UID})`);

  const bodies = await until('bodies', 60000);
  assert.equal(bodies.open, 0, 'a non-admin peer posting to an admin route kept its connection');
  const grew = rssKiB(b.proc.pid) - rss0;
  assert.ok(grew < 8 * 1024, `the daemon grew by ${grew} KiB after ${idle.open} refused 60,000-byte bodies`);

  await until('holding', 60000);
  // Root still gets its token at once, repeatedly.
  for (let i = 0; i < 5; i++) {
    const t0 = Date.now();
    const r = await b.ctl(['token', 'act'], { timeoutMs: 10000 });
    assert.equal(r.code, 0, `root's tokenctl token failed while uid ${NOBODY} held its connections: ${r.stderr}`);
    assert.ok(Date.now() - t0 < 3000, `root's tokenctl token took ${Date.now() - t0} ms`);
  }
  h.stdin.end();

  // The trickled request: closed by the server after the deadline.
  const tEnd = slowInfo.t0 + (API_TIMEOUT_S + 8) * 1000;
  while (!slowInfo.closedAt && Date.now() < tEnd) await sleep(250);
  assert.ok(slowInfo.closedAt, `a request trickled a byte a second was still open after ${((Date.now() - slowInfo.t0) / 1000).toFixed(0)} s (${slowInfo.sent} bytes)`);
  const held = slowInfo.closedAt - slowInfo.t0;
  assert.ok(held >= (API_TIMEOUT_S - 1) * 1000, `the trickled request was closed after ${held} ms, before the deadline`);
  await b.api('GET', '/v1/status').then((r) => assert.equal(r.status, 200));
});

test('callback listener: 100 idle connections from 127.0.0.1 do not stop /healthz', { timeout: 120000 }, async (t) => {
  const { b } = await setup(t);
  const socks = [];
  t.after(() => socks.forEach((s) => s.destroy()));
  for (let i = 0; i < 100; i++) {
    socks.push(await new Promise((resolve) => {
      const s = net.connect({ port: b.port, host: '127.0.0.1' });
      s.on('error', () => {});
      s.on('connect', () => resolve(s));
      s.on('close', () => resolve(s));
      setTimeout(() => resolve(s), 3000);
    }));
  }
  await sleep(500);
  for (let i = 0; i < 5; i++) {
    const t0 = Date.now();
    // A new connection each time (no kept-alive one from an agent's pool).
    const head = await rawGet(b.port, '/healthz', 3000);
    assert.match(head, /^HTTP\/1\.1 200/, `/healthz with 100 idle connections held (probe ${i}): ${JSON.stringify(head)}`);
    assert.ok(Date.now() - t0 < 2000, `/healthz took ${Date.now() - t0} ms`);
    // Idle connections opened again in between, as an attacker would.
    socks.push(net.connect({ port: b.port, host: '127.0.0.1' }).on('error', () => {}));
    await sleep(200);
  }
});
