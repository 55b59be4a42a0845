'use strict';
/*
 * tokenctl proxy NAME --listen 127.0.0.1:PORT (issue 13): a loopback HTTP
 * port in front of one connection's proxy route on the broker's socket.
 *
 * The daemon's proxy route is built on another branch; until it is merged
 * a small Unix-socket HTTP server in this test stands in for the broker
 * and records what reaches it. One test talks to the real daemon to check
 * that its answers come back through the forwarder.
 *
 *  - the path and query land under /v1/connections/NAME/proxy, Host is
 *    localhost, the client's Authorization and hop-by-hop headers never
 *    reach the broker, the answer is streamed back with Connection: close;
 *  - bodies with Content-Length and chunked arrive whole; a 256 MiB
 *    download passes with the forwarder's RSS growing less than 16 MiB;
 *  - a pipelined second request never reaches the broker;
 *  - absolute URLs, dot segments (also encoded), bad framing, an
 *    oversized head are answered by the forwarder with 4xx/5xx and
 *    nothing is forwarded; the broker unreachable is 502;
 *  - --listen refuses addresses that are not loopback.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

const { Broker, waitFor, BUILD } = require('../lib/broker.js');

const TIMEOUT = 180000;
const CTL = path.join(BUILD, 'tokenctl');

let tmp, stub, stubSock, seen = [];
const procs = [];

/* The stand-in broker: records each request (method, url, headers, body
 * size and hash); /download streams N MiB; anything else echoes JSON. */
function startStub(sock) {
  const server = http.createServer((req, res) => {
    const h = crypto.createHash('sha256');
    let bytes = 0;
    req.on('data', (d) => { h.update(d); bytes += d.length; });
    req.on('end', () => {
      const rec = { method: req.method, url: req.url, headers: req.headers, bytes, sha: h.digest('hex') };
      seen.push(rec);
      const m = /\/download\/(\d+)$/.exec(req.url);
      if (m) {
        const total = Number(m[1]) * 1024 * 1024;
        const chunk = Buffer.alloc(1024 * 1024, 0x61);
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
        let sent = 0;
        const pump = () => {
          while (sent < total) {
            sent += chunk.length;
            if (!res.write(chunk)) { res.once('drain', pump); return; }
          }
          res.end();
        };
        pump();
        return;
      }
      res.writeHead(201, { 'content-type': 'application/json', 'x-upstream': 'stub' });
      res.end(JSON.stringify(rec));
    });
  });
  return new Promise((resolve) => server.listen(sock, () => resolve(server)));
}

/* tokenctl proxy on an ephemeral port; resolves {proc, port, out}. */
async function startProxy(sock, name = 'gh', listen = '127.0.0.1:0') {
  const p = spawn(CTL, ['--socket', sock, 'proxy', name, '--listen', listen], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(p);
  const out = { stdout: '', stderr: '', code: null, signal: null };
  p.stdout.on('data', (d) => { out.stdout += d; });
  p.stderr.on('data', (d) => { out.stderr += d; });
  out.exited = new Promise((resolve) => p.on('exit', (code, signal) => { out.code = code; out.signal = signal; resolve(); }));
  const port = await waitFor(() => (/forwarding http:\/\/127\.0\.0\.1:(\d+)\//.exec(out.stdout) || [])[1],
    { what: 'the proxy to listen', timeoutMs: 30000 });
  return { proc: p, port: Number(port), out };
}

async function stopProxy(px) {
  px.proc.kill('SIGTERM');
  await Promise.race([px.out.exited, new Promise((r) => setTimeout(r, 10000))]);
  if (px.out.code === null && px.out.signal === null) px.proc.kill('SIGKILL');
}

/* One request; resolves {status, headers, body(Buffer)}. */
function request(port, { method = 'GET', urlPath = '/', headers = {}, body, stream } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers, timeout: 120000, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: timed out`)));
    req.on('error', reject);
    if (stream) stream(req);
    else { if (body) req.write(body); req.end(); }
  });
}

/* Raw bytes in, everything the forwarder answers until it closes. */
function raw(port, bytes, { timeoutMs = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks = [];
    const timer = setTimeout(() => { s.destroy(); reject(new Error('raw: timed out')); }, timeoutMs);
    s.on('connect', () => s.write(bytes));
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(chunks).toString('latin1')); });
  });
}

function rssKiB(pid) {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

let px;

test.before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-proxy-'));
  stubSock = path.join(tmp, 'broker.sock');
  stub = await startStub(stubSock);
  px = await startProxy(stubSock);
});

test.after(async () => {
  if (px) {
    await stopProxy(px);
    assert.equal(px.out.code, 0, `the forwarder ended with ${px.out.code ?? px.out.signal}: ${px.out.stderr.slice(-2000)}`);
    assert.doesNotMatch(px.out.stderr, /Sanitizer|runtime error/);
  }
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  if (stub) await new Promise((r) => stub.close(r));
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('proxy: path and query under the connection\'s proxy route; Host, Authorization, hop-by-hop dropped', { timeout: TIMEOUT }, async () => {
  seen = [];
  const r = await request(px.port, {
    urlPath: '/user/repos?per_page=5&q=a%2Fb',
    headers: { authorization: 'Bearer client-own', connection: 'keep-alive', 'keep-alive': 'timeout=5',
      'proxy-authorization': 'Basic eA==', accept: 'application/json', 'x-custom': 'kept' },
  });
  assert.equal(r.status, 201);
  assert.equal(r.headers['x-upstream'], 'stub', 'the broker\'s own headers come back');
  assert.equal(r.headers.connection, 'close');
  const rec = JSON.parse(r.body);
  assert.equal(seen.length, 1);
  assert.equal(rec.method, 'GET');
  assert.equal(rec.url, '/v1/connections/gh/proxy/user/repos?per_page=5&q=a%2Fb');
  assert.equal(rec.headers.host, 'localhost');
  assert.equal(rec.headers.connection, 'close');
  assert.equal(rec.headers.authorization, undefined);
  assert.equal(rec.headers['proxy-authorization'], undefined);
  assert.equal(rec.headers['keep-alive'], undefined);
  assert.equal(rec.headers.accept, 'application/json');
  assert.equal(rec.headers['x-custom'], 'kept');
  // the root and HEAD
  const h = await request(px.port, { method: 'HEAD', urlPath: '/' });
  assert.equal(h.status, 201);
  assert.equal(seen[1].url, '/v1/connections/gh/proxy/');
});

test('proxy: request bodies with Content-Length and chunked arrive whole', { timeout: TIMEOUT }, async () => {
  seen = [];
  const body = crypto.randomBytes(20 * 1024 * 1024 + 17);
  const sha = crypto.createHash('sha256').update(body).digest('hex');
  let r = await request(px.port, { method: 'POST', urlPath: '/upload', body, headers: { 'content-length': body.length } });
  assert.equal(r.status, 201);
  assert.equal(seen[0].bytes, body.length);
  assert.equal(seen[0].sha, sha);
  r = await request(px.port, {
    method: 'PUT', urlPath: '/upload-chunked', headers: { 'transfer-encoding': 'chunked' },
    stream: (req) => {
      let off = 0;
      const next = () => {
        while (off < body.length) {
          const piece = body.subarray(off, off + 300007);
          off += piece.length;
          if (!req.write(piece)) { req.once('drain', next); return; }
        }
        req.end();
      };
      next();
    },
  });
  assert.equal(r.status, 201);
  assert.equal(seen[1].headers['transfer-encoding'], 'chunked');
  assert.equal(seen[1].bytes, body.length);
  assert.equal(seen[1].sha, sha);
});

test('proxy: a 256 MiB download streams through in constant memory', { timeout: 300000 }, async (t) => {
  const t0 = Date.now();
  const before = rssKiB(px.proc.pid);
  let peak = before, bytes = 0;
  const status = await new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: px.port, path: '/download/256', agent: false, timeout: 240000 }, (res) => {
      res.on('data', (d) => {
        bytes += d.length;
        if ((bytes & 0xffffff) < d.length) peak = Math.max(peak, rssKiB(px.proc.pid));
      });
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('download timed out')));
    req.on('error', reject);
  });
  assert.equal(status, 200);
  assert.equal(bytes, 256 * 1024 * 1024);
  t.diagnostic(`256 MiB in ${Date.now() - t0} ms; the forwarder's RSS ${before} KiB, peak ${peak} KiB`);
  assert.ok(peak - before < 16 * 1024, `the forwarder's RSS grew by ${peak - before} KiB`);
});

test('proxy: a pipelined second request never reaches the broker', { timeout: TIMEOUT }, async () => {
  seen = [];
  const out = await raw(px.port,
    'POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.match(out, /^HTTP\/1\.1 201 /);
  assert.equal((out.match(/HTTP\/1\.1 /g) || []).length, 1, 'one answer');
  assert.deepEqual(seen.map((s) => s.url), ['/v1/connections/gh/proxy/first']);
  assert.equal(seen[0].bytes, 3);
  // the same after a chunked body
  seen = [];
  await raw(px.port, 'POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /v1/connections HTTP/1.1\r\n\r\n');
  assert.deepEqual(seen.map((s) => s.url), ['/v1/connections/gh/proxy/c']);
});

test('proxy: requests that could leave the route or break the framing are refused, nothing forwarded', { timeout: TIMEOUT }, async () => {
  seen = [];
  const cases = [
    ['GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n', 400],
    ['GET /../../status HTTP/1.1\r\n\r\n', 400],
    ['GET /a/%2e%2E/b HTTP/1.1\r\n\r\n', 400],
    ['GET /a/./b HTTP/1.1\r\n\r\n', 400],
    ['GET /a%5c..%5cb HTTP/1.1\r\n\r\n', 400],
    ['GET * HTTP/1.1\r\n\r\n', 400],
    ['CONNECT evil.example:443 HTTP/1.1\r\n\r\n', 400],
    ['POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n', 400],
    ['POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n', 400],
    ['POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n', 501],
    ['GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n', 400],
    ['GET / HTTP/2.0\r\n\r\n', 505],
    ['\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n', 400],
    [`GET / HTTP/1.1\r\nX-Big: ${'a'.repeat(70000)}\r\n\r\n`, 431],
  ];
  for (const [req, status] of cases) {
    const out = await raw(px.port, req);
    assert.match(out, new RegExp(`^HTTP/1\\.1 ${status} `), JSON.stringify(req.slice(0, 60)));
    assert.match(out, /tokenctl proxy: /);
  }
  assert.deepEqual(seen, [], 'nothing reached the broker');
});

test('proxy: many clients at once each get their own answer', { timeout: TIMEOUT }, async () => {
  const rs = await Promise.all(Array.from({ length: 40 }, (_, i) => request(px.port, { urlPath: `/n/${i}` })));
  rs.forEach((r, i) => {
    assert.equal(r.status, 201);
    assert.equal(JSON.parse(r.body).url, `/v1/connections/gh/proxy/n/${i}`);
  });
});

test('proxy: the broker unreachable is a 502 naming the socket', { timeout: TIMEOUT }, async () => {
  const p2 = await startProxy(path.join(tmp, 'nobody.sock'));
  try {
    const r = await request(p2.port, { urlPath: '/x' });
    assert.equal(r.status, 502);
    assert.match(r.body.toString(), /cannot reach tokenbrokerd at .*nobody\.sock: No such file or directory/);
  } finally {
    await stopProxy(p2);
  }
  assert.equal(p2.out.code, 0, 'SIGTERM ends the forwarder with 0');
});

test('proxy: --listen is loopback only; clear usage errors', { timeout: TIMEOUT }, async () => {
  const runCtl = (args) => new Promise((resolve) => {
    const p = spawn(CTL, ['--socket', stubSock, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = { stdout: '', stderr: '' };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 20000);
    p.on('exit', (code) => { clearTimeout(timer); out.code = code; resolve(out); });
  });
  for (const l of ['0.0.0.0:0', '192.0.2.1:8080', '[::]:0', '10.0.0.1:80']) {
    const r = await runCtl(['proxy', 'gh', '--listen', l]);
    assert.equal(r.code, 2, l);
    assert.match(r.stderr, /not a loopback address; the proxy listens on loopback only/, l);
    assert.equal(r.stdout, '');
  }
  let r = await runCtl(['proxy', 'gh', '--listen', 'example.com:80']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /is not a numeric address/);
  r = await runCtl(['proxy', 'gh', '--listen', '127.0.0.1']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--listen takes ADDRESS:PORT/);
  r = await runCtl(['proxy', 'gh']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /usage: tokenctl proxy NAME --listen ADDRESS:PORT/);
  r = await runCtl(['proxy', 'bad/name', '--listen', '127.0.0.1:0']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /invalid connection name/);
});

test('proxy: the real daemon\'s answers come back through the forwarder', { timeout: TIMEOUT }, async () => {
  const b = await Broker.start({});
  let p2;
  try {
    // no such connection: whether or not the daemon has the proxy route
    // yet, it answers 404 with its JSON error, and that is what arrives
    p2 = await startProxy(b.socket, 'nosuch');
    const r = await request(p2.port, { urlPath: '/user?x=1' });
    assert.equal(r.status, 404);
    const j = JSON.parse(r.body);
    assert.equal(j.error, 'not_found');
  } finally {
    if (p2) await stopProxy(p2);
    const st = await b.stop();
    assert.deepEqual({ code: st.code, signal: st.signal }, { code: 0, signal: null });
  }
});
