'use strict';
/*
 * The OAuth callback listener (TCP) under abuse, against a running broker
 * with a pending authorization and an active connection (fake provider):
 *  - slowloris: connections that trickle a request a byte a second never
 *    starve /healthz or the socket API, and are closed by the server once
 *    their request has taken longer than the timeout (10 s), trickle or not;
 *    at most 64 wait for a request at a time, whatever their address (each
 *    new connection closes the one that has waited longest);
 *  - a 1 MiB query string, 200 large headers, a 64 KiB header line,
 *    garbage: an error status or a closed connection, never a crash;
 *  - 10,000 bogus callbacks (random state, with code, with error) at a
 *    concurrency of 32: all 400, the daemon stays responsive, and the
 *    store and the events table are unchanged; the real pending
 *    authorization still completes afterwards;
 *  - methods other than GET/HEAD: 405 at once (a body is not read);
 *    paths other than /oauth/callback and /healthz: 404.
 * Every test ends with the daemon alive, no sanitizer report in its log,
 * and a clean SIGTERM exit.
 *
 * Attack traffic comes from several loopback addresses (127.0.0.2 ...):
 * no limit is per address (every local user is 127.0.0.1).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const net = require('node:net');

const { Broker, httpGet, iniProvider, sleep, waitFor } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const TIMEOUT_S = 10;          // CALLBACK_TIMEOUT_SEC in daemon/callback.c
const WAITING_MAX = 64;        // CALLBACK_WAITING_MAX
const SANITIZER = /AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|SUMMARY: .*Sanitizer/;

async function setup(t) {
  const fp = await startFakeProvider();
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'callback-abuse-client-secret' },
  });
  t.after(async () => {
    const alive = b.proc.exitCode === null && b.proc.signalCode === null;
    const st = await b.stop({ keep: true });
    await fp.close();
    const log = b.log();
    require('node:fs').rmSync(b.dir, { recursive: true, force: true });
    assert.ok(alive, `tokenbrokerd died during the test:\n${log.slice(-4000)}`);
    assert.doesNotMatch(log, SANITIZER, 'sanitizer report in the daemon log');
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });

  // An active connection and a pending authorization.
  let r = await b.ctl(['--json', 'authorize', 'act', '--provider', 'fake', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const red = await httpGet(JSON.parse(r.stdout).authorize_url);
  assert.equal((await httpGet(red.headers.location)).status, 200);
  r = await b.ctl(['--json', 'authorize', 'pend', '--provider', 'fake', '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const pendingUrl = JSON.parse(r.stdout).authorize_url;
  const state = new URL(pendingUrl).searchParams.get('state');
  assert.match(b.dumpStore(), /\|act\|fake\|active\|/);
  assert.match(b.dumpStore(), /\|pend\|fake\|pending\|/);
  return { b, fp, pendingUrl, state };
}

function snapshot(b) {
  return { store: b.dumpStore(), events: b.sql('SELECT * FROM events ORDER BY id') };
}

/**
 * Writes `data` on a fresh TCP connection and collects what comes back until
 * the server closes or waitMs passes. Resolves {status, head, closed, ms, error}.
 */
function rawRequest(port, data, { localAddress = '127.0.0.1', waitMs = 10000 } = {}) {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    const chunks = [];
    const t0 = Date.now();
    let error = null;
    const done = (closed) => {
      clearTimeout(timer);
      s.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ status: m ? Number(m[1]) : null, head: text.slice(0, 2000), text, closed, ms: Date.now() - t0, error });
    };
    const timer = setTimeout(() => done(false), waitMs);
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e) => { error = e.code || e.message; });
    s.on('close', () => done(true));
    s.on('connect', () => s.write(data));
  });
}

/** GET /healthz from 127.0.0.1 on a new connection; resolves the time taken, or throws. */
async function healthz(b, timeoutMs = 2000) {
  const t0 = Date.now();
  // agent: false: Node's global agent keeps connections alive, and an idle
  // kept-alive one is what the listener closes first when it is full.
  const r = await new Promise((resolve, reject) => {
    const req = http.get(`${b.publicUrl}/healthz`, { timeout: timeoutMs, agent: false }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.on('timeout', () => req.destroy(new Error('GET /healthz: timed out')));
    req.on('error', reject);
  });
  assert.equal(r.status, 200);
  assert.equal(r.text, 'ok\n');
  return Date.now() - t0;
}

async function apiStatus(b, timeoutMs = 2000) {
  const t0 = Date.now();
  const r = await b.api('GET', '/v1/status', undefined, { timeoutMs });
  assert.equal(r.status, 200);
  return Date.now() - t0;
}

/** Still serving: /healthz and the socket API answer quickly. */
async function assertResponsive(b, what) {
  assert.equal(b.proc.exitCode, null, `tokenbrokerd exited ${what}:\n${b.log().slice(-3000)}`);
  await healthz(b).catch((e) => assert.fail(`/healthz ${what}: ${e.message}`));
  await apiStatus(b).catch((e) => assert.fail(`socket API ${what}: ${e.message}`));
}

test('slowloris: trickling connections are closed after the timeout; /healthz keeps answering', { timeout: 120000 }, async (t) => {
  const { b, state } = await setup(t);
  const before = snapshot(b);

  // 40 from one address and 200 spread over 8 others (240 in all, under
  // the global limit of 256, over the 64 that may wait for a request).
  const sources = [];
  for (let i = 0; i < 40; i++) sources.push('127.0.0.2');
  for (let i = 0; i < 200; i++) sources.push(`127.0.0.${10 + (i % 8)}`);
  const partial = `GET /oauth/callback/fake?state=${state}&code=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Slow: ${'a'.repeat(200)}`;
  const socks = await Promise.all(sources.map((localAddress) => new Promise((resolve) => {
    const s = net.connect({ port: b.port, host: '127.0.0.1', localAddress });
    s.info = { localAddress, connectedAt: null, closedAt: null, bytesIn: 0, sent: 0 };
    s.on('error', () => {});
    s.on('data', (d) => { s.info.bytesIn += d.length; });
    s.on('close', () => { s.info.closedAt = Date.now(); resolve(s); });
    s.on('connect', () => { s.info.connectedAt = Date.now(); resolve(s); });
    setTimeout(() => resolve(s), 5000);
  })));
  t.after(() => socks.forEach((s) => s.destroy()));
  const t0 = Date.now();
  const trickle = setInterval(() => {
    for (const s of socks) {
      if (s.info.closedAt || !s.info.connectedAt) continue;
      s.write(partial[s.info.sent % partial.length]);
      s.info.sent++;
    }
  }, 1000);
  t.after(() => clearInterval(trickle));

  // While they trickle (the first 6 s): /healthz and the socket API answer within 2 s.
  const lat = [];
  for (let i = 0; i < TIMEOUT_S - 4; i++) {
    lat.push(await healthz(b).catch((e) => assert.fail(`/healthz during slowloris (probe ${i}): ${e.message}`)));
    lat.push(await apiStatus(b).catch((e) => assert.fail(`socket API during slowloris (probe ${i}): ${e.message}`)));
    await sleep(Math.max(0, t0 + (i + 1) * 1000 - Date.now()));
  }
  const openAt10 = socks.filter((s) => !s.info.closedAt);
  // The newest ones, each /healthz probe having closed one more.
  assert.ok(openAt10.length <= WAITING_MAX && openAt10.length >= WAITING_MAX - 2 * (TIMEOUT_S - 4),
    `${openAt10.length} trickling connections held, at most ${WAITING_MAX} may wait`);
  assert.ok(openAt10.every((s) => s.info.sent >= TIMEOUT_S - 6), 'a held connection was not trickling');

  // Closed by the server once the request took longer than the timeout,
  // although a byte came every second (observed within 20 s of connecting).
  await waitFor(() => socks.every((s) => s.info.closedAt), { timeoutMs: 12000, what: 'the server to close every slowloris connection' })
    .catch((e) => assert.fail(`${e.message}: ${socks.filter((s) => !s.info.closedAt).length} still open after ` +
      `${((Date.now() - t0) / 1000).toFixed(1)} s (a trickle resets MHD's inactivity timeout)`));
  for (const s of openAt10) {
    const held = s.info.closedAt - s.info.connectedAt;
    assert.ok(held >= (TIMEOUT_S - 1) * 1000 && held <= 20000, `held ${held} ms`);
  }
  clearInterval(trickle);

  await assertResponsive(b, 'after slowloris');
  assert.deepEqual(snapshot(b), before, 'slowloris changed the store or the events');
});

test('oversized requests: 1 MiB query, 200 large headers, a 64 KiB header line, garbage', { timeout: 120000 }, async (t) => {
  const { b, state } = await setup(t);
  const before = snapshot(b);
  const isError = (r) => r.status === null ? r.closed : [400, 413, 414, 431].includes(r.status);

  // A 1 MiB query string: an error status (MHD: 414) or a closed connection.
  const big = await rawRequest(b.port, `GET /oauth/callback/fake?state=${state}&code=${'A'.repeat(1 << 20)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  assert.ok(isError(big), `1 MiB query: ${big.status} closed=${big.closed} ${big.error} ${big.head.slice(0, 200)}`);
  await assertResponsive(b, 'after a 1 MiB query string');
  // The same through an HTTP client.
  const big2 = await httpGet(`${b.publicUrl}/oauth/callback?state=${'s'.repeat(1 << 20)}`).catch((e) => ({ status: null, error: e.message }));
  assert.ok(big2.status === null || [400, 413, 414, 431].includes(big2.status), `1 MiB query (http.get): ${big2.status}`);
  // A state or code over the length limit but within the request limit: 400.
  const long = await httpGet(`${b.publicUrl}/oauth/callback?state=${'s'.repeat(16000)}&code=x`);
  assert.equal(long.status, 400);
  const longCode = await httpGet(`${b.publicUrl}/oauth/callback?state=${crypto.randomBytes(32).toString('base64url')}&code=${'c'.repeat(16000)}`);
  assert.equal(longCode.status, 400);

  // 200 headers of 200 bytes (40 KiB, over the 32 KiB connection memory).
  let hdrs = '';
  for (let i = 0; i < 200; i++) hdrs += `X-Header-${i}: ${'v'.repeat(200)}\r\n`;
  let r = await rawRequest(b.port, `GET /healthz HTTP/1.1\r\nHost: x\r\n${hdrs}\r\n`);
  assert.ok(isError(r), `200 large headers: ${r.status} ${r.head.slice(0, 200)}`);
  r = await rawRequest(b.port, `GET /oauth/callback/fake?state=${state}&code=x HTTP/1.1\r\nHost: x\r\n${hdrs}\r\n`);
  assert.ok(isError(r), `200 large headers on the callback: ${r.status} ${r.head.slice(0, 200)}`);
  // 200 small headers fit in the memory limit: answered normally (the
  // number of headers is not limited by itself, only their size).
  hdrs = '';
  for (let i = 0; i < 200; i++) hdrs += `X-H${i}: v\r\n`;
  r = await rawRequest(b.port, `GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${hdrs}\r\n`);
  assert.ok(r.status === 200 || isError(r), `200 small headers: ${r.status} ${r.head.slice(0, 200)}`);
  // One 64 KiB header line.
  r = await rawRequest(b.port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(64 * 1024)}\r\n\r\n`);
  assert.ok(isError(r), `64 KiB header line: ${r.status} ${r.head.slice(0, 200)}`);
  // A header line that never ends.
  r = await rawRequest(b.port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ${'e'.repeat(256 * 1024)}`);
  assert.ok(isError(r), `unterminated 256 KiB header: ${r.status} closed=${r.closed}`);
  await assertResponsive(b, 'after oversized headers');

  // A NUL (%00) in the state or the code is refused, not cut short: the
  // real state followed by %00 and junk must not pass for the real state.
  for (const q of [`state=${state}%00x&code=abc`, `state=${state}%00&code=abc`, `state=${state}&code=ab%00cd`]) {
    r = await rawRequest(b.port, `GET /oauth/callback?${q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    assert.equal(r.status, 400, `${q}: ${r.head.slice(0, 300)}`);
    assert.match(b.dumpStore(), /\|pend\|fake\|pending\|/, `${q} completed the pending authorization`);
  }

  // Garbage and malformed request lines.
  for (const junk of [
    crypto.randomBytes(8192),
    'GARBAGE\r\n\r\n',
    'GET\r\n\r\n',
    'GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n',
    'GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n',
    'GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n',
    `GET /oauth/callback?state=${state.slice(0, 10)}%00&code=%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    'GET /oauth/callback?state&code&state=&error HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    `GET /healthz HTTP/1.1\r\n${'Host: x\r\n'.repeat(50)}Connection: close\r\n\r\n`,
  ]) {
    r = await rawRequest(b.port, junk, { waitMs: 5000 });
    t.diagnostic(`${JSON.stringify(String(junk).slice(0, 40))}: ${r.status} closed=${r.closed} ${r.ms} ms`);
    assert.ok(r.closed || r.status !== null, `no answer and still open for ${JSON.stringify(String(junk).slice(0, 60))}`);
    assert.ok(r.status === null || r.status >= 400 || r.status === 200, `${r.status} for ${JSON.stringify(String(junk).slice(0, 60))}`);
  }
  await assertResponsive(b, 'after garbage');
  assert.deepEqual(snapshot(b), before, 'oversized requests changed the store or the events');
  assert.match(b.dumpStore(), /\|pend\|fake\|pending\|/);
});

test('10,000 bogus callbacks: all 400, daemon responsive, store unchanged', { timeout: 240000 }, async (t) => {
  const { b, fp, pendingUrl } = await setup(t);
  const before = snapshot(b);
  const N = 10000;
  const CONCURRENCY = 32;

  // Each worker one keep-alive connection, from two addresses (16 each).
  const agents = [];
  for (let i = 0; i < CONCURRENCY; i++) {
    agents.push(new http.Agent({ keepAlive: true, maxSockets: 1, localAddress: `127.0.0.${3 + (i % 2)}` }));
  }
  t.after(() => agents.forEach((a) => a.destroy()));
  const rnd = (n) => crypto.randomBytes(n).toString('base64url');
  function bogusPath(i) {
    const state = rnd(32);
    switch (i % 6) {
      case 0: return `/oauth/callback/fake?state=${state}&code=${rnd(16)}`;
      case 1: return `/oauth/callback/fake?state=${state}&error=access_denied&error_description=${encodeURIComponent('<b>no</b>')}`;
      case 2: return `/oauth/callback/fake?state=${state}`;
      case 3: return `/oauth/callback?code=${rnd(16)}`;
      case 4: return `/oauth/callback?state=${rnd(3000)}&code=${rnd(8)}&error=server_error`;
      default: return `/oauth/callback?state=${encodeURIComponent(rnd(8) + '"<>&\'')}&code=${rnd(16)}&iss=x`;
    }
  }
  function get(agent, p) {
    return new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port: b.port, path: p, agent, timeout: 10000 }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString() }));
      });
      req.on('timeout', () => req.destroy(new Error(`GET ${p.slice(0, 80)}: timed out`)));
      req.on('error', reject);
    });
  }

  // Meanwhile, probes of /healthz and the socket API every 100 ms.
  let flooding = true;
  const probeLat = [];
  const probes = (async () => {
    while (flooding) {
      probeLat.push(await apiStatus(b, 5000));
      probeLat.push(await healthz(b, 5000));
      await sleep(100);
    }
  })();

  const statuses = new Map();
  const bad = [];
  let next = 0;
  const t0 = Date.now();
  await Promise.all(agents.map(async (agent) => {
    while (next < N) {
      const i = next++;
      const p = bogusPath(i);
      let r;
      try { r = await get(agent, p); } catch (e) { r = { status: `error ${e.code || e.message}`, text: '' }; }
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      if (r.status !== 400 && bad.length < 5) bad.push(`${p.slice(0, 100)} -> ${r.status} ${r.text.slice(0, 200)}`);
      if (r.status === 400 && /<b>|"<>/.test(r.text)) bad.push(`unescaped echo for ${p.slice(0, 100)}`);
    }
  }));
  const elapsed = Date.now() - t0;
  flooding = false;
  await probes;
  t.diagnostic(`${N} bogus callbacks in ${elapsed} ms (${Math.round(N / (elapsed / 1000))}/s); ` +
    `${probeLat.length} probes, max ${Math.max(...probeLat)} ms`);

  assert.deepEqual(Object.fromEntries(statuses), { 400: N }, bad.join('\n'));
  assert.deepEqual(bad, []);
  assert.ok(probeLat.length >= 2, 'no probe ran during the flood');
  assert.ok(Math.max(...probeLat) < 2000, `a probe took ${Math.max(...probeLat)} ms during the flood`);
  await assertResponsive(b, 'after the flood');
  assert.deepEqual(snapshot(b), before, 'bogus callbacks changed the store or the events');
  assert.equal(fp.requests.filter((r) => r.path === '/token').length, 1, 'a bogus callback made the broker call the token endpoint');

  // The real pending authorization is still intact and completes.
  const red = await httpGet(pendingUrl);
  const done = await httpGet(red.headers.location);
  assert.equal(done.status, 200, done.text);
  assert.match(b.dumpStore(), /\|pend\|fake\|active\|/);
});

test('methods other than GET/HEAD answer 405 at once; unknown paths 404', { timeout: 120000 }, async (t) => {
  const { b, state } = await setup(t);
  const before = snapshot(b);

  for (const p of ['/oauth/callback', '/healthz', '/other']) {
    for (const m of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT', 'PROPFIND', 'BREW']) {
      const r = await rawRequest(b.port, `${m} ${p}?state=${state}&code=x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      assert.equal(r.status, 405, `${m} ${p}: ${r.head.slice(0, 200)}`);
    }
  }
  // A POST announcing a huge body is answered without reading it.
  let r = await rawRequest(b.port, `POST /oauth/callback/fake?state=${state}&code=x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\npart`, { waitMs: 5000 });
  assert.equal(r.status, 405, `POST announcing 1 GB: ${r.status} after ${r.ms} ms, closed=${r.closed}: the server waits for (reads) the body instead of answering`);
  assert.ok(r.closed && r.ms < 3000, `the server waited for the body (${r.ms} ms, closed=${r.closed})`);
  r = await rawRequest(b.port, `POST /oauth/callback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n`, { waitMs: 5000 });
  assert.equal(r.status, 405, r.head);
  assert.ok(r.closed && r.ms < 3000, `the server waited for the chunked body (${r.ms} ms)`);
  // Nor does a GET with a body get it read.
  r = await rawRequest(b.port, `GET /oauth/callback/fake?state=${state}&code=x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\npart`, { waitMs: 5000 });
  assert.ok(r.status !== null && r.status >= 400 && r.status < 500, r.head);
  assert.ok(r.closed && r.ms < 3000, `the server waited for a GET body (${r.ms} ms)`);

  // HEAD is a GET without the body.
  r = await rawRequest(b.port, 'HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(r.status, 200, r.head);
  assert.ok(!/\r\n\r\nok/.test(r.text), 'HEAD sent a body');

  for (const p of ['/', '/oauth', '/oauth/', '/oauth/callback/', '/oauth/callbackx', '/oauth/callback/..', '/healthz/',
    '/healthzz', '/HEALTHZ', '/OAUTH/CALLBACK', '//oauth/callback', '/v1/status', '/v1/connections', '/metrics',
    '/favicon.ico', '/robots.txt', `/${'x'.repeat(4000)}`, '/%00', '/..%2f..%2fetc/passwd', '/oauth/callback;x=1']) {
    r = await httpGet(`${b.publicUrl}${p}?state=${state}&code=x`);
    assert.equal(r.status, 404, `GET ${p.slice(0, 60)}: ${r.status}`);
    assert.match(r.headers['content-type'], /^text\/html/);
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.match(r.headers['content-security-policy'] ?? '', /default-src 'none'/);
  }
  await assertResponsive(b, 'after odd methods and paths');
  assert.deepEqual(snapshot(b), before, 'odd methods or paths changed the store or the events');
  assert.match(b.dumpStore(), /\|pend\|fake\|pending\|/);
});
