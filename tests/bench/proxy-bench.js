'use strict';
/*
 * make bench, the proxy row (issue 13): requests/s and p50/p99 through the
 * broker's auth-injecting proxy (GET /v1/connections/NAME/proxy/x over the
 * Unix socket, forwarded with the token to a local HTTP server) beside the
 * same server called directly over loopback TCP. Keep-alive on both sides:
 * loadgen's connections to the socket or the server, the broker's curl
 * connections to the server. The server is tests/bench/floor.c (a bare
 * libmicrohttpd answering a fixed body). Each round runs direct and proxy
 * back to back; medians over the rounds.
 *
 * Targets: the proxy adds <= 50 us at p50 and keeps >= 70 % of the direct
 * throughput. Reported, not enforced (the machine is shared and noisy).
 */
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const { Broker, waitFor, followAuthorize, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const BUILD = process.env.TOKENBROKER_BUILD || path.join(__dirname, '..', '..', 'build');
const SECONDS = Number(process.env.BENCH_SECONDS || 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS || 5);
const BODY = 400;

function run(cmd, args) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function main() {
  const port = await freePort();
  const server = spawn(path.join(BUILD, 'bench', 'floor'), [`tcp:127.0.0.1:${port}`, String(BODY)], { stdio: ['ignore', 'ignore', 'inherit'] });
  const fp = await startFakeProvider({ expiresIn: 86400 });
  let b = null;
  try {
    await waitFor(() => new Promise((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(true); });
      c.on('error', () => resolve(false));
    }), { timeoutMs: 5000, what: 'the local HTTP server' });
    b = await Broker.start({
      providers: { fake: iniProvider(fp.providerConf({ api_url: `http://127.0.0.1:${port}`, api_max_connections: 64 })) },
      secrets: { 'fake.secret': 'proxy-bench-client-secret' },
      logLevel: 'warning',
    });
    const r = await b.api('POST', '/v1/connections', { name: 'px', provider: 'fake' });
    if (r.status !== 201) throw new Error(`create: ${r.status} ${r.text}`);
    if ((await followAuthorize(r.json.authorize_url)).status !== 200) throw new Error('authorization failed');

    const rows = { 1: [], 16: [] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const conns of [1, 16]) {
        const pair = {};
        for (const [label, sock, p] of [['direct', `tcp:127.0.0.1:${port}`, '/x'], ['proxy', b.socket, '/v1/connections/px/proxy/x']]) {
          const o = await run(path.join(BUILD, 'bench', 'loadgen'), ['--socket', sock, '--connections', String(conns),
            '--duration', String(SECONDS), '--warmup', '1', '--max-reconnects', '0', '--json', '--label', label,
            '--path', p, '--expect', '"access_token"']);
          if (o.code !== 0) throw new Error(`loadgen ${label} ${conns}: exit ${o.code}\n${o.err}`);
          pair[label] = JSON.parse(o.out);
        }
        rows[conns].push(pair);
      }
    }
    const median = (xs) => { const s = [...xs].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
    console.log(`\nauth-injecting proxy: GET through /v1/connections/NAME/proxy/x (Unix socket, token added, forwarded over`);
    console.log(`loopback TCP) beside the same HTTP server (bench/floor, ${BODY}-byte answers) called directly; keep-alive both`);
    console.log(`sides; ${ROUNDS} rounds of ${SECONDS} s, direct and proxy back to back in each; medians over the rounds.\n`);
    console.log('| clients | path | req/s | p50 ms | p99 ms | errors | proxy/direct req/s | proxy p50 added |');
    console.log('|---:|---|---:|---:|---:|---:|---:|---:|');
    let ok = true;
    for (const conns of [1, 16]) {
      const rs = rows[conns];
      const med = (label, key) => median(rs.map((x) => x[label][key]));
      const ratio = median(rs.map((x) => x.proxy.req_s / x.direct.req_s));
      const added = median(rs.map((x) => (x.proxy.p50_ms - x.direct.p50_ms) * 1000));
      for (const label of ['direct', 'proxy']) {
        const errs = rs.reduce((n, x) => n + x[label].errors + x[label].mismatches + x[label].reconnects, 0);
        if (errs) ok = false;
        console.log(`| ${conns} | ${label} | ${Math.round(med(label, 'req_s'))} | ${med(label, 'p50_ms').toFixed(3)} | ${med(label, 'p99_ms').toFixed(3)} | ${errs} | ${label === 'proxy' ? `${(100 * ratio).toFixed(0)} % (rounds: ${rs.map((x) => Math.round(100 * x.proxy.req_s / x.direct.req_s)).join(', ')})` : ''} | ${label === 'proxy' ? `${added.toFixed(0)} us` : ''} |`);
      }
    }
    if (!ok) process.exitCode = 1;
  } finally {
    server.kill('SIGTERM');
    if (b) await b.stop();
    await fp.close();
  }
}

main().catch((e) => { console.error(`proxy-bench: ${e.stack || e}`); process.exit(1); });
