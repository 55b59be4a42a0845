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
 *
 * A second broker on a throwaway PostgreSQL 15 (tests/lib/pg.js; fsync on)
 * holds the same number of connections and runs in the same rounds: the
 * handout is served from memory, so its column must match SQLite's. Then
 * both brokers refresh every connection at once (POST .../refresh, 16 at
 * a time) and the durable refreshes/s of each engine are reported, from
 * /v1/status's refreshes_ok (it moves only once a refresh is committed).
 * BENCH_PG=0 leaves PostgreSQL out.
 *
 * BENCH_BASELINE_BUILD=DIR adds a third broker, DIR/tokenbrokerd (another
 * build, e.g. main's), on SQLite with the same connections, in the same
 * rounds: a change's effect measured side by side with what it changes.
 */
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');

const { Broker, waitFor, followAuthorize, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { Postgres } = require('../lib/pg.js');

const BUILD = process.env.TOKENBROKER_BUILD || path.join(__dirname, '..', '..', 'build');
const N = Number(process.env.BENCH_CONNECTIONS || 5000);
const SECONDS = Number(process.env.BENCH_SECONDS || 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS || 5);
const WITH_PG = process.env.BENCH_PG !== '0';
const BASELINE = process.env.BENCH_BASELINE_BUILD || null;

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
  const pg = WITH_PG ? await Postgres.start({ fsync: true }) : null;
  const start = (extra = {}) => Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'bench-client-secret' },
    broker: { refresh_margin: '60s', refresh_ratio: '0.1', max_parallel_refreshes: '64', ...extra },
    logLevel: 'warning',
  });
  const b = await start();
  const bp = pg ? await start({ store: pg.uri(), store_password_file: pg.passwordFile, node_name: 'bench' }) : null;
  const bb = BASELINE ? await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'bench-client-secret' },
    broker: { refresh_margin: '60s', refresh_ratio: '0.1', max_parallel_refreshes: '64' },
    logLevel: 'warning', build: BASELINE,
  }) : null;
  let floor = null;
  const rss0 = rssKiB(b.proc.pid);
  const names = Array.from({ length: N }, (_, i) => `bench-${String(i).padStart(5, '0')}`);
  try {
    // 1. N connections through the real code flow (auto-approving provider).
    const setup = async (br) => {
      const t0 = Date.now();
      const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
      await pool(names, 16, async (name) => {
        const r = await br.api('POST', '/v1/connections', { name, provider: 'fake' });
        if (r.status !== 201) throw new Error(`create ${name}: ${r.status} ${r.text}`);
        const cb = await followAuthorize(r.json.authorize_url, { agent });
        if (cb.status !== 200) throw new Error(`callback ${name}: ${cb.status}`);
      });
      agent.destroy();
      return (Date.now() - t0) / 1000;
    };
    const setupS = await setup(b);
    const rss1 = rssKiB(b.proc.pid);
    const setupPgS = bp ? await setup(bp) : 0;
    if (bb) await setup(bb);

    // 2. The expected token of each connection, as each broker answers it.
    let bodyBytes = 0;
    const expected = async (br, file) => {
      const lines = [];
      await pool(names, 16, async (name) => {
        const r = await br.api('GET', `/v1/connections/${name}/token`);
        if (r.status !== 200) throw new Error(`token ${name}: ${r.status}`);
        bodyBytes = Math.max(bodyBytes, Buffer.byteLength(r.text));
        lines.push(`/v1/connections/${name}/token "access_token":"${r.json.access_token}"`);
      });
      fs.writeFileSync(file, lines.join('\n') + '\n', { mode: 0o600 });
      return file;
    };
    const pathFile = await expected(b, path.join(tmp, 'paths.txt'));
    const pathFilePg = bp ? await expected(bp, path.join(tmp, 'paths-pg.txt')) : null;
    const pathFileBase = bb ? await expected(bb, path.join(tmp, 'paths-base.txt')) : null;

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
        const servers = [['floor', floorSock, ['--path', '/v1/connections/x/token', '--expect', '"access_token"']],
          ['broker', b.socket, ['--expect-file', pathFile, '--random']]];
        if (bp) servers.push(['broker-pg', bp.socket, ['--expect-file', pathFilePg, '--random']]);
        if (bb) servers.push(['broker-base', bb.socket, ['--expect-file', pathFileBase, '--random']]);
        for (const [label, sock, extra] of servers) {
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
      const shown = { floor: 'floor', broker: 'tokenbroker (SQLite)', 'broker-pg': 'tokenbroker (PostgreSQL)',
        'broker-base': `baseline ${BASELINE} (SQLite)` };
      for (const label of ['floor', 'broker', ...(bp ? ['broker-pg'] : []), ...(bb ? ['broker-base'] : [])]) {
        const errs = rs.reduce((n, p) => n + p[label].errors, 0), mm = rs.reduce((n, p) => n + p[label].mismatches, 0),
          rc = rs.reduce((n, p) => n + p[label].reconnects, 0);
        const r = label === 'floor' ? '' : `${(100 * median(rs.map((p) => p[label].req_s / p.floor.req_s))).toFixed(0)} % (rounds: ${rs.map((p) => Math.round(100 * p[label].req_s / p.floor.req_s)).join(', ')})`;
        console.log(`| ${conns} | ${shown[label]} | ${Math.round(med(label, 'req_s'))} | ${med(label, 'p50_ms').toFixed(3)} | ${med(label, 'p99_ms').toFixed(3)} | ${errs} | ${mm} | ${rc} | ${r} |`);
        if (errs || mm || rc) ok = false;
      }

    }
    console.log(`\nbroker status: ${st.json.connections.active} active, tokens served ${st.json.tokens_served}, refreshes ok ${st.json.refreshes_ok}`);

    // 4. Durable refreshes/s: every connection refreshed at once, each engine.
    const storm = async (br) => {
      const before = (await br.api('GET', '/v1/status')).json.refreshes_ok;
      const t0 = Date.now();
      await pool(names, 16, async (name) => {
        const r = await br.api('POST', `/v1/connections/${name}/refresh?wait=0`);
        if (r.status >= 400) throw new Error(`refresh ${name}: ${r.status} ${r.text}`);
      });
      await waitFor(async () => (await br.api('GET', '/v1/status')).json.refreshes_ok >= before + N,
        { timeoutMs: 600000, intervalMs: 20, what: `${N} refreshes committed` });
      return N / ((Date.now() - t0) / 1000);
    };
    const rateSqlite = await storm(b);
    const ratePg = bp ? await storm(bp) : null;
    console.log(`durable refreshes/s, all ${N} connections refreshed at once (16 API clients, max_parallel_refreshes 64): SQLite ${Math.round(rateSqlite)}${bp ? `, PostgreSQL ${Math.round(ratePg)} (fsync on; set up through the code flow in ${setupPgS.toFixed(1)} s)` : ''}`);
    console.log(`broker memory: RSS ${rss0} KiB with no connections, ${rss1} KiB with ${N}: ${Math.round((rss1 - rss0) * 1024 / N)} bytes per connection (tokens ${fp.issued[0].access_token.length}+${fp.issued[0].refresh_token.length} characters)`);
    if (!ok) process.exitCode = 1;
  } finally {
    if (floor) { floor.kill('SIGTERM'); }
    await b.stop();
    if (bp) await bp.stop();
    if (bb) await bb.stop();
    if (pg) await pg.destroy();
    await fp.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(`bench: ${e.stack || e}`); process.exit(1); });
