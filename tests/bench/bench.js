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
 * Rounds alternate floor and broker; the best round of each is reported.
 */
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');

const { Broker, waitFor, httpGet, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const BUILD = process.env.TOKENBROKER_BUILD || path.join(__dirname, '..', '..', 'build');
const N = Number(process.env.BENCH_CONNECTIONS || 5000);
const SECONDS = Number(process.env.BENCH_SECONDS || 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS || 2);

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
  try {
    // 1. N connections through the real code flow (auto-approving provider).
    const t0 = Date.now();
    const names = Array.from({ length: N }, (_, i) => `bench-${String(i).padStart(5, '0')}`);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    await pool(names, 16, async (name) => {
      const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
      if (r.status !== 201) throw new Error(`create ${name}: ${r.status} ${r.text}`);
      const loc = await new Promise((resolve, reject) => {
        http.get(r.json.authorize_url, { agent }, (res) => { res.resume(); resolve(res.headers.location); }).on('error', reject);
      });
      const cb = await httpGet(loc);
      if (cb.status !== 200) throw new Error(`callback ${name}: ${cb.status}`);
    });
    agent.destroy();
    const setupS = (Date.now() - t0) / 1000;

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

    const results = {};
    for (let round = 0; round < ROUNDS; round++) {
      for (const conns of [1, 16]) {
        for (const [label, sock, extra] of [['floor', floorSock, ['--path', '/v1/connections/x/token', '--expect', '"access_token"']],
          ['broker', b.socket, ['--expect-file', pathFile, '--random']]]) {
          const r = await run(path.join(BUILD, 'bench', 'loadgen'), ['--socket', sock, '--connections', String(conns),
            '--duration', String(SECONDS), '--warmup', '1', '--max-reconnects', '0', '--json', '--label', label, ...extra]);
          if (r.code !== 0) throw new Error(`loadgen ${label} ${conns}: exit ${r.code}\n${r.err}`);
          const j = JSON.parse(r.out);
          const key = `${label}/${conns}`;
          if (!results[key] || j.req_s > results[key].req_s) results[key] = j;
        }
      }
    }

    const st = await b.api('GET', '/v1/status');
    console.log(`\ntoken handout over the Unix socket: ${N} active connections held (set up in ${setupS.toFixed(1)} s through the code flow),`);
    console.log(`answers of ${bodyBytes} bytes, every one checked to be the current token of the connection named; best of ${ROUNDS} rounds of ${SECONDS} s.\n`);
    console.log('| clients | server | req/s | p50 ms | p99 ms | errors | mismatches | reconnects | broker/floor |');
    console.log('|---:|---|---:|---:|---:|---:|---:|---:|---:|');
    let ok = true;
    for (const conns of [1, 16]) {
      const f = results[`floor/${conns}`], br = results[`broker/${conns}`];
      for (const [label, j] of [['floor', f], ['tokenbroker', br]]) {
        const ratio = label === 'floor' ? '' : `${(100 * br.req_s / f.req_s).toFixed(0)} %`;
        console.log(`| ${conns} | ${label} | ${Math.round(j.req_s)} | ${j.p50_ms.toFixed(3)} | ${j.p99_ms.toFixed(3)} | ${j.errors} | ${j.mismatches} | ${j.reconnects} | ${ratio} |`);
        if (j.errors || j.mismatches || j.reconnects) ok = false;
      }
    }
    console.log(`\nbroker status: ${st.json.connections.active} active, tokens served ${st.json.tokens_served}, refreshes ok ${st.json.refreshes_ok}`);
    if (!ok) process.exitCode = 1;
  } finally {
    if (floor) { floor.kill('SIGTERM'); }
    await b.stop();
    await fp.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(`bench: ${e.stack || e}`); process.exit(1); });
