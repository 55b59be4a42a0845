'use strict';
/*
 * make bench: token handout throughput and latency over the Unix socket,
 * side by side in one run with a floor (a bare libmicrohttpd server that
 * answers every request with a fixed body of the same size, run the way
 * the broker runs MHD), for 1 and 16 keep-alive clients.
 *
 * The broker holds BENCH_CONNECTIONS (default 5000) active connections,
 * authorized through the real flow against the fake provider; every answer
 * is checked to be the current token of the connection named in its path.
 * Each round runs floor and broker back to back; the median of the per-round
 * ratios is reported.
 */
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');

const { Broker, waitFor, followAuthorize, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const BUILD = process.env.TOKENBROKER_BUILD || path.join(__dirname, '..', '..', 'build');
const N = Number(process.env.BENCH_CONNECTIONS || 5000);
const SECONDS = Number(process.env.BENCH_SECONDS || 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS || 5);

function run(cmd, args) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

async function pool(items, concurrency, fn) {
  let i = 0;
  const workers = Array.from({ length: concurrency }, async () => {
    while (i < items.length) { const k = i++; await fn(items[k], k); }
  });
  await Promise.all(workers);
}

function rssKiB(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) : NaN;
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-bench-'));
  const fp = await startFakeProvider({ expiresIn: 86400 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'bench-client-secret' },
    broker: { refresh_margin: '60s', refresh_ratio: '0.1', max_parallel_refreshes: '64' },
    logLevel: 'warning',
  });
  let floor = null;
  const rss0 = rssKiB(b.proc.pid);
  try {
    // 1. N connections through the real code flow (auto-approving provider).
    const t0 = Date.now();
    const names = Array.from({ length: N }, (_, i) => `bench-${String(i).padStart(5, '0')}`);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    await pool(names, 16, async (name) => {
      const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
      if (r.status !== 201) throw new Error(`create ${name}: ${r.status} ${r.text}`);
      const cb = await followAuthorize(r.json.authorize_url, { agent });
      if (cb.status !== 200) throw new Error(`callback ${name}: ${cb.status}`);
    });
    agent.destroy();
    const setupS = (Date.now() - t0) / 1000;
    const rss1 = rssKiB(b.proc.pid);

    // 2. The expected token of each connection, as the broker answers it.
    const lines = [];
    let bodyBytes = 0;
    await pool(names, 16, async (name) => {
      const r = await b.api('GET', `/v1/connections/${name}/token`);
      if (r.status !== 200) throw new Error(`token ${name}: ${r.status}`);
      bodyBytes = Math.max(bodyBytes, Buffer.byteLength(r.text));
      lines.push(`/v1/connections/${name}/token "access_token":"${r.json.access_token}"`);
    });
    const pathFile = path.join(tmp, 'paths.txt');
    fs.writeFileSync(pathFile, lines.join('\n') + '\n', { mode: 0o600 });

    // 3. The floor: same body size, same MHD mode.
    const floorSock = path.join(tmp, 'floor.sock');
    floor = spawn(path.join(BUILD, 'bench', 'floor'), [floorSock, String(bodyBytes)], { stdio: ['ignore', 'ignore', 'ignore'] });
    await waitFor(() => fs.existsSync(floorSock), { timeoutMs: 5000, what: 'the floor socket' });

    // Floor and broker back to back in each round; the ratio of each round
    // is taken, and the median of those is reported (the machine is noisy:
    // absolute figures swing between rounds, paired ratios much less).
    const rounds = { 1: [], 16: [] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const conns of [1, 16]) {
        const pair = {};
        for (const [label, sock, extra] of [['floor', floorSock, ['--path', '/v1/connections/x/token', '--expect', '"access_token"']],
          ['broker', b.socket, ['--expect-file', pathFile, '--random']]]) {
          const r = await run(path.join(BUILD, 'bench', 'loadgen'), ['--socket', sock, '--connections', String(conns),
            '--duration', String(SECONDS), '--warmup', '1', '--max-reconnects', '0', '--json', '--label', label, ...extra]);
          if (r.code !== 0) throw new Error(`loadgen ${label} ${conns}: exit ${r.code}\n${r.err}`);
          pair[label] = JSON.parse(r.out);
        }
        rounds[conns].push(pair);
      }
    }
    const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

    const st = await b.api('GET', '/v1/status');
    console.log(`\ntoken handout over the Unix socket: ${N} active connections held (set up in ${setupS.toFixed(1)} s through the code flow),`);
    console.log(`answers of ${bodyBytes} bytes, every one checked to be the current token of the connection named;`);
    console.log(`${ROUNDS} rounds of ${SECONDS} s, floor and broker back to back in each; medians over the rounds.\n`);
    console.log('| clients | server | req/s | p50 ms | p99 ms | errors | mismatches | reconnects | broker/floor (median of rounds) |');
    console.log('|---:|---|---:|---:|---:|---:|---:|---:|---:|');
    let ok = true;
    for (const conns of [1, 16]) {
      const rs = rounds[conns];
      const med = (label, key) => median(rs.map((p) => p[label][key]));
      const ratio = median(rs.map((p) => p.broker.req_s / p.floor.req_s));
      for (const label of ['floor', 'broker']) {
        const errs = rs.reduce((n, p) => n + p[label].errors, 0), mm = rs.reduce((n, p) => n + p[label].mismatches, 0),
          rc = rs.reduce((n, p) => n + p[label].reconnects, 0);
        console.log(`| ${conns} | ${label === 'floor' ? 'floor' : 'tokenbroker'} | ${Math.round(med(label, 'req_s'))} | ${med(label, 'p50_ms').toFixed(3)} | ${med(label, 'p99_ms').toFixed(3)} | ${errs} | ${mm} | ${rc} | ${label === 'floor' ? '' : `${(100 * ratio).toFixed(0)} % (rounds: ${rs.map((p) => Math.round(100 * p.broker.req_s / p.floor.req_s)).join(', ')})`} |`);
        if (errs || mm || rc) ok = false;
      }
    }
    console.log(`\nbroker status: ${st.json.connections.active} active, tokens served ${st.json.tokens_served}, refreshes ok ${st.json.refreshes_ok}`);
    console.log(`broker memory: RSS ${rss0} KiB with no connections, ${rss1} KiB with ${N}: ${Math.round((rss1 - rss0) * 1024 / N)} bytes per connection (tokens ${fp.issued[0].access_token.length}+${fp.issued[0].refresh_token.length} characters)`);
    if (!ok) process.exitCode = 1;
  } finally {
    if (floor) { floor.kill('SIGTERM'); }
    await b.stop();
    await fp.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(`bench: ${e.stack || e}`); process.exit(1); });
