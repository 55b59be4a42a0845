'use strict';
/*
 * HA torture (issue 10, must-show item 2): three tokenbrokerd nodes (a, b,
 * c) on one throwaway PostgreSQL 15, HA_CONNECTIONS (200) connections with
 * rotating refresh tokens at tests/lib/fake-provider.js in its graceReuse
 * model (revokeOnReuse: a refresh token presented twice kills the grant),
 * while:
 *  - HA_KILLS (100) SIGKILLs land on random running nodes at random
 *    instants HA_GAP_MIN_MS..HA_GAP_MAX_MS (150..1200) apart; each killed
 *    node is restarted at once in the background (about HA_EARLY_KILLS,
 *    0.1, of the restarts are killed once more while starting: not
 *    counted), so at times two or three nodes are down together;
 *  - after a third of the kills PostgreSQL is restarted (stopped by PID,
 *    started on the same data directory and port);
 *  - after two thirds, node c's database link is cut for HA_CUT_MS (10 s):
 *    c's `store` points at a TCP proxy in this file (node:net) that
 *    forwards to PostgreSQL and, during the cut, destroys every connection
 *    and closes each new one at once (c is not killed during the cut);
 *  - HA_READERS_PER_NODE (2) clients per node fetch tokens of random
 *    connections from every running node the whole time, and one client
 *    per node asks for min_ttl beyond the token's life or reports a 401
 *    (invalidate): both are passed to the lease holder.
 * Access tokens live HA_EXPIRES_MIN_S..+HA_EXPIRES_SPREAD_S-1 (40..43 s)
 * with refresh_margin 20s (the README's advice for a cluster: above the
 * lease time a takeover may take), so each connection refreshes every 20 s
 * or so, plus the readers' min_ttl and invalidate refreshes.
 *
 * At the end: lost = 0 (every connection listed and active on every node,
 * a refresh through a random node answers 200 and the provider accepted
 * it), invalid_grant = 0 (no refresh token presented twice, no grant
 * revoked), no grace reuse that dropped a token a node had served
 * (served-before-commit) or that a live daemon went back from, every
 * node serves for every connection the access token of the grant's
 * newest refresh token, and no node ever served a token past its expiry
 * (the provider's issue time + expires_in, against when the request was
 * sent). The harness checks every daemon's log for sanitizer reports and
 * unexpected exits.
 *
 * Sizing: the defaults meet the issue (>= 200 connections, >= 100 kills)
 * on both builds: 86-100 s on 2 cores plain, about 100 s under ASan (a
 * restart there takes 0.8 s instead of 0.4-0.6 s), so ASan runs the same
 * schedule. HA_QUICK=1 allows fewer than the issue's minimum. HA_SEED
 * fixes the schedule.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');

const { Broker, sleep, waitFor, httpGet, iniProvider, freePort, BUILD } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { Postgres } = require('../lib/pg.js');

function num(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number: ${v}`);
  return n;
}

const QUICK = process.env.HA_QUICK === '1';
const KILLS = num('HA_KILLS', 100);
const CONNS = num('HA_CONNECTIONS', 200);
const GAP_MIN = num('HA_GAP_MIN_MS', 150);
const GAP_MAX = num('HA_GAP_MAX_MS', 1200);
const EARLY = num('HA_EARLY_KILLS', 0.1);
const READERS = num('HA_READERS_PER_NODE', 2);
const CUT_MS = num('HA_CUT_MS', 10000);
const EXPIRES_MIN = num('HA_EXPIRES_MIN_S', 40);
const EXPIRES_SPREAD = Math.max(1, num('HA_EXPIRES_SPREAD_S', 4));
const DELAY_MAX = num('HA_PROVIDER_DELAY_MS', 150);
const SEED = num('HA_SEED', Date.now() % 2147483647);
const SETTLE_MS = 30;

/* mulberry32, as crash-torture: a failing schedule can be replayed. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function pool(items, concurrency, fn) {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (i < items.length) { const k = i++; await fn(items[k], k); }
  }));
}

/*
 * A TCP proxy in front of PostgreSQL whose link can be cut: cut() destroys
 * every open connection and, until restore(), closes each new one at once.
 */
async function startCutProxy(targetPort) {
  const socks = new Set();
  let cut = false;
  const stats = { accepted: 0, refused: 0, dropped: 0 };
  const server = net.createServer((down) => {
    if (cut) { stats.refused++; down.destroy(); return; }
    stats.accepted++;
    const up = net.connect(targetPort, '127.0.0.1');
    const pair = [down, up];
    const end = () => { for (const s of pair) { s.destroy(); socks.delete(s); } };
    for (const s of pair) { socks.add(s); s.on('error', end); s.on('close', end); }
    down.pipe(up);
    up.pipe(down);
  });
  const port = await freePort();
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(port, '127.0.0.1', resolve); });
  return {
    port,
    stats,
    cut() { cut = true; for (const s of socks) { stats.dropped++; s.destroy(); } socks.clear(); },
    restore() { cut = false; },
    async close() {
      for (const s of socks) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/* Starts a daemon without waiting for it (an early kill while it starts). */
function spawnRaw(b) {
  const { spawn } = require('node:child_process');
  const fs = require('node:fs');
  const log = fs.openSync(b.logPath, 'a');
  const env = { ...process.env, TOKENBROKER_LOG_LEVEL: b.opts.logLevel ?? 'info' };
  delete env.NOTIFY_SOCKET;
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', b.confPath], { stdio: ['ignore', log, log], env });
  fs.closeSync(log);
  return p;
}
async function killRaw(p) {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  let timer;
  await Promise.race([gone, new Promise((r) => { timer = setTimeout(r, 10000); })]);
  clearTimeout(timer);
}

function tail(text, lines = 30) { return text.split('\n').slice(-lines).join('\n'); }

test(`HA torture: ${KILLS} SIGKILLs over three nodes, a PostgreSQL restart and a ${CUT_MS / 1000} s database cut while ${CONNS} rotating connections refresh`,
  { timeout: 180000 + KILLS * 3000 }, async (t) => {
    if (!QUICK) {
      assert.ok(CONNS >= 200 && KILLS >= 100, 'the issue asks for >= 200 connections and >= 100 kills (HA_QUICK=1 for less)');
    }
    const rand = prng(SEED);
    const t0 = Date.now();
    const life = new Map();   // grant -> expires_in, s
    const fp = await startFakeProvider({
      graceReuse: true,
      revokeOnReuse: true,
      record: false,
      expiresIn: (grant) => {
        if (!life.has(grant)) life.set(grant, EXPIRES_MIN + Math.floor(rand() * EXPIRES_SPREAD));
        return life.get(grant);
      },
      tokenDelayMs: () => Math.floor(rand() * DELAY_MAX),
    });
    const pg = await Postgres.start({ fsync: false });
    const proxy = await startCutProxy(pg.port);
    const names = ['a', 'b', 'c'];
    const nodes = [];
    for (let i = 0; i < 3; i++) nodes.push(await Broker.prepare());
    let readersOn = false;
    const readerTasks = [];
    const pending = new Map();   // node index -> its restart in the background
    let stray = null;
    let passed = false;
    // Registered before any launch: a node that fails to start still
    // leaves nothing running.
    t.after(async () => {
      readersOn = false;
      await Promise.all(readerTasks);
      await Promise.allSettled([...pending.values()]);
      if (stray) await killRaw(stray).catch(() => {});
      for (const b of nodes) await b.stop({ keep: !passed }).catch(() => {});
      await proxy.close();
      await pg.destroy();
      await fp.close();
    });

    const key = path.join(nodes[0].dir, 'state', 'tokenbroker.key');
    for (let i = 0; i < 3; i++) {
      nodes[i].opts = {
        providers: { fake: iniProvider(fp.providerConf()) },
        secrets: { 'fake.secret': 'ha-torture-client-secret' },
        broker: {
          // c reaches the database through the proxy whose link is cut
          store: i === 2 ? `postgresql://tokenbroker@127.0.0.1:${proxy.port}/tokenbroker` : pg.uri(),
          store_password_file: pg.passwordFile,
          node_name: names[i],
          refresh_margin: '20s',
          refresh_ratio: '0.1',
          refresh_jitter: '2s',
          max_parallel_refreshes: '64',
          ...(i > 0 ? { key_file: key } : {}),
        },
        logLevel: 'info',
      };
      nodes[i].writeConfig();
      await nodes[i].launch();   // a first: it makes the key the others share
    }
    // 1. CONNS connections through the code flow, on node a.
    const a = nodes[0];
    const conns = Array.from({ length: CONNS }, (_, i) => `ha-${String(i).padStart(4, '0')}`);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    await pool(conns, 8, async (name) => {
      const r = await a.api('POST', '/v1/connections', { name, provider: 'fake' });
      assert.equal(r.status, 201, `create ${name}: ${r.text}`);
      const loc = await new Promise((resolve, reject) => {
        const req = http.get(r.json.authorize_url, { agent, timeout: 10000 }, (res) => { res.resume(); resolve(res.headers.location); });
        req.on('timeout', () => req.destroy(new Error('authorize: timed out')));
        req.on('error', reject);
      });
      assert.ok(loc, `no redirect for ${name}`);
      const cb = await httpGet(loc);
      assert.equal(cb.status, 200, `callback ${name}: ${cb.status} ${cb.text.slice(0, 200)}`);
    });
    agent.destroy();

    const grantOf = new Map();
    await pool(conns, 16, async (name) => {
      const r = await a.api('GET', `/v1/connections/${name}/token`);
      assert.equal(r.status, 200, `token ${name}: ${r.text}`);
      const iss = fp.markSeen(r.json.access_token);
      assert.ok(iss, `${name}: the provider never issued the access token it serves`);
      grantOf.set(name, iss.grant);
    });
    assert.equal(new Set(grantOf.values()).size, CONNS, 'two connections share a grant');
    // Every node has every connection, and three live nodes.
    await waitFor(async () => {
      for (const n of nodes) {
        const st = await n.api('GET', '/v1/status');
        if ((st.json.nodes ?? []).filter((x) => x.alive).length !== 3) return false;
        const ok = await Promise.all(conns.map((c) => n.api('GET', `/v1/connections/${c}/token`).then((r) => r.status === 200)));
        if (!ok.every(Boolean)) return false;
      }
      return true;
    }, { timeoutMs: 60000, intervalMs: 500, what: 'every connection on every node, three live nodes' });
    const setupS = (Date.now() - t0) / 1000;

    const lost = new Map();
    const lose = (name, why) => { if (!lost.has(name)) lost.set(name, why); };
    const reader = { slowest: {}, ok: 0, mismatch: 0, expired: 0, needsReauth: 0, other: {}, otherSeen: [], down: 0, perNode: [0, 0, 0] };
    const expiredSeen = [];
    let cutOn = false;   // node c's database link is cut
    const up = (i) => nodes[i].running() && !pending.has(i);

    /* One served access token checked: of its grant, not past its expiry. */
    function check(i, name, tok, sentAt) {
      const iss = fp.markSeen(tok);
      if (!iss || iss.grant !== grantOf.get(name)) {
        reader.mismatch++;
        lose(name, `node ${names[i]} served an access token of another or no grant`);
        return;
      }
      const expiry = iss.at + life.get(iss.grant) * 1000;
      if (sentAt > expiry) {
        reader.expired++;
        if (expiredSeen.length < 10) expiredSeen.push(`node ${names[i]} ${name}: ${sentAt - expiry} ms past expiry`);
        return;
      }
      reader.ok++;
      reader.perNode[i]++;
    }

    // 2. Readers on every node.
    readersOn = true;
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j <= READERS; j++) {
        const kind = j < READERS ? 'token' : 'demand';
        readerTasks.push((async () => {
          const r0 = prng(SEED + 100 * i + j + 1);
          let flip = false;
          while (readersOn) {
            if (!up(i)) { await sleep(50); continue; }
            const name = conns[Math.floor(r0() * conns.length)];
            const sentAt = Date.now();
            let r;
            let path2 = `/v1/connections/${name}/token`;
            let method = 'GET';
            if (kind === 'demand') {
              flip = !flip;
              if (flip) path2 += `?min_ttl=${EXPIRES_MIN + EXPIRES_SPREAD}`;
              else { method = 'POST'; path2 = `/v1/connections/${name}/invalidate`; }
            }
            try {
              r = await nodes[i].api(method, path2, undefined, { timeoutMs: 45000 });
            } catch {
              reader.down++;   // killed or restarting meanwhile
              await sleep(20);
              continue;
            }
            const took = Date.now() - sentAt;
            const lk = `${kind}${cutOn && i === 2 ? ' on c during the cut' : ''}`;
            if (!(took <= (reader.slowest[lk]?.ms ?? -1))) reader.slowest[lk] = { ms: took, what: `${names[i]} ${method} ${name} ${r.status}` };
            if (r.status === 200) check(i, name, r.json.access_token, sentAt);
            else if (r.status === 409) { reader.needsReauth++; lose(name, `node ${names[i]}: 409 ${r.json?.error}`); }
            else {
              reader.other[r.status] = (reader.other[r.status] || 0) + 1;
              if (reader.otherSeen.length < 10) reader.otherSeen.push(`${names[i]} ${method} ${name}: ${r.status} ${r.json?.error_description ?? ''}`);
            }
            await sleep(kind === 'token' ? 10 : 150);
          }
        })());
      }
    }

    /* Every connection listed and active on node i. */
    async function checkListed(i, when) {
      const byName = new Map();
      let after = '';
      for (let pages = 0; ; pages++) {
        assert.ok(pages <= CONNS / 1000 + 1, `${when}: the listing did not end`);
        const r = await nodes[i].api('GET', `/v1/connections?limit=1000${after ? `&after=${after}` : ''}`, undefined, { timeoutMs: 30000 });
        assert.equal(r.status, 200, r.text);
        for (const c of r.json.connections) byName.set(c.name, c);
        if (!r.json.next) break;
        after = encodeURIComponent(r.json.next);
      }
      for (const name of conns) {
        const c = byName.get(name);
        if (!c) lose(name, `${when}: missing on node ${names[i]}`);
        else if (c.state !== 'active') lose(name, `${when}: ${c.state} on node ${names[i]} (${c.last_error})`);
      }
    }

    // 3. The torture.
    const PG_AT = Math.max(1, Math.floor(KILLS / 3));
    const CUT_AT = Math.max(2, Math.floor((2 * KILLS) / 3));
    let kills = 0, earlyKills = 0, pgRestartMs = 0, cutDone = null;
    const killsPer = [0, 0, 0];
    const restartMs = [];
    const failures = [];
    const restartOf = (i) => (async () => {
      const b = nodes[i];
      const r0 = Date.now();
      await sleep(SETTLE_MS);
      if (rand() < EARLY) {
        fp.newGeneration();
        stray = spawnRaw(b);
        await sleep(2 + rand() * 80);
        await killRaw(stray);
        stray = null;
        earlyKills++;
        await sleep(SETTLE_MS);
      }
      fp.newGeneration();
      await b.launch();
      restartMs.push(Date.now() - r0);
    })().catch((e) => { failures.push(`restart of node ${names[i]}: ${e.message}`); })
      .finally(() => pending.delete(i));

    const tLoop = Date.now();
    while (kills < KILLS && !failures.length) {
      await sleep(GAP_MIN + rand() * (GAP_MAX - GAP_MIN));
      if (kills === PG_AT && !pgRestartMs) {
        // PostgreSQL restarted: no node may start meanwhile (a start needs it).
        await Promise.all([...pending.values()]);
        const p0 = Date.now();
        await pg.restart();
        pgRestartMs = Date.now() - p0;
      }
      if (kills === CUT_AT && !cutDone) {
        await pending.get(2);
        proxy.cut();
        cutOn = true;
        cutDone = sleep(CUT_MS).then(() => { proxy.restore(); cutOn = false; });
      }
      const cand = [0, 1, 2].filter((i) => up(i) && !(cutOn && i === 2));
      if (!cand.length) continue;
      const i = cand[Math.floor(rand() * cand.length)];
      for (let n = 0; n < 3; n++) {
        if (nodes[n].running() || pending.has(n)) continue;
        failures.push(`node ${names[n]} died on its own: ${JSON.stringify(nodes[n].exits.at(-1))}\n${tail(nodes[n].log())}`);
      }
      await nodes[i].kill('SIGKILL');
      assert.equal(nodes[i].exits.at(-1)?.signal, 'SIGKILL', `kill ${kills + 1}: ${JSON.stringify(nodes[i].exits.at(-1))}`);
      kills++;
      killsPer[i]++;
      pending.set(i, restartOf(i));
      if (kills % 10 === 0) {
        const j = [0, 1, 2].find(up);
        if (j !== undefined) await checkListed(j, `after kill ${kills}`);
      }
      if (fp.stats.invalidGrant > 0 || fp.stats.graceAfterSeen > 0 || fp.stats.graceSameGeneration > 0 || lost.size > 0) {
        failures.push(`stopped after kill ${kills}`);
      }
    }
    await Promise.all([...pending.values()]);
    if (cutDone) await cutDone;
    const loopS = (Date.now() - tLoop) / 1000;
    // A few more seconds of readers with every node up after the cut.
    await sleep(3000);
    readersOn = false;
    await Promise.all(readerTasks);

    // 4. Final verification: every node lists every connection active; a
    // refresh through a random node is accepted by the provider; every node
    // then serves the access token of the grant's newest refresh token.
    for (let i = 0; i < 3; i++) {
      assert.ok(nodes[i].running(), `node ${names[i]} is not running at the end: ${JSON.stringify(nodes[i].exits.at(-1))}`);
    }
    await waitFor(async () => {
      const st = await nodes[0].api('GET', '/v1/status');
      return st.json.store?.reachable && (st.json.nodes ?? []).filter((x) => x.alive).length === 3;
    }, { timeoutMs: 30000, intervalMs: 200, what: 'three live nodes after the torture' });
    const tVerify = Date.now();
    if (!failures.length) {
      await pool(conns, 32, async (name) => {
        const i = Math.floor(Math.random() * 3);
        const r = await nodes[i].api('POST', `/v1/connections/${name}/refresh`, undefined, { timeoutMs: 60000 });
        const g = fp.grants.get(grantOf.get(name));
        if (r.status !== 200) return lose(name, `final refresh on ${names[i]}: ${r.status} ${r.text.slice(0, 200)}`);
        if (r.json.state !== 'active') return lose(name, `final refresh on ${names[i]}: state ${r.json.state}`);
        if (g.revoked) return lose(name, 'grant revoked at the provider');
        if (!g.lastOk || g.lastOk.time < tVerify) return lose(name, `final refresh on ${names[i]} answered 200, the provider accepted nothing`);
        return undefined;
      });
    }
    for (let i = 0; i < 3; i++) await checkListed(i, 'at the end');
    const stale = new Map();
    await waitFor(async () => {
      stale.clear();
      await pool(conns, 16, async (name) => {
        const g = fp.grants.get(grantOf.get(name));
        const want = fp.tokens.get(g.current)?.access_token;
        for (let i = 0; i < 3; i++) {
          const sentAt = Date.now();
          const r = await nodes[i].api('GET', `/v1/connections/${name}/token`);
          if (r.status !== 200) { stale.set(`${names[i]}/${name}`, `${r.status}`); continue; }
          check(i, name, r.json.access_token, sentAt);
          if (r.json.access_token !== want) stale.set(`${names[i]}/${name}`, 'not the newest token');
        }
      });
      return stale.size === 0;
    }, { timeoutMs: 20000, intervalMs: 500, what: 'every node serving every connection\'s newest token' }).catch((e) => failures.push(e.message));

    const s = fp.stats;
    const perGrant = [...grantOf.values()].map((gid) => fp.grants.get(gid).refreshes);
    const runtimeS = (Date.now() - t0) / 1000;
    const avg = (x) => (x.length ? x.reduce((p, q) => p + q, 0) / x.length : 0);
    const logs = nodes.map((n) => n.log());
    const logCount = (re) => logs.map((l) => l.split('\n').filter((x) => re.test(x)).length).join('/');
    console.log(`HA torture: ${kills} kills (a/b/c ${killsPer.join('/')}), ${CONNS} connections, lost=${lost.size}, invalid_grant=${s.invalidGrant}, ` +
      `refreshes=${s.refreshed}, grace reuses=${s.graceAccepted}, expired served=${reader.expired}, runtime=${runtimeS.toFixed(1)} s`);
    console.log(`  seed=${SEED} build=${BUILD} setup ${setupS.toFixed(1)} s, kill loop ${loopS.toFixed(1)} s, ` +
      `PostgreSQL restart ${pgRestartMs} ms, cut ${CUT_MS} ms of node c (proxy: ${JSON.stringify(proxy.stats)})`);
    console.log(`  kills also during startup: ${earlyKills}; restart to answering: avg ${avg(restartMs).toFixed(0)} ms, max ${Math.max(0, ...restartMs)} ms`);
    console.log(`  provider: backwards ${s.graceSameGeneration}, served-before-commit ${s.graceAfterSeen}, reuse refused ${s.reuseRefused}, ` +
      `unknown ${s.unknownToken}, revoked ${s.revokedGrant}; refreshes per connection min ${Math.min(...perGrant)} max ${Math.max(...perGrant)}`);
    console.log(`  readers: ${reader.ok} tokens checked (a/b/c ${reader.perNode.join('/')}), ${reader.mismatch} mismatches, ` +
      `${reader.expired} expired, ${reader.needsReauth} needs_reauth, other ${JSON.stringify(reader.other)}, ${reader.down} while down`);
    console.log(`  slowest answers: ${Object.entries(reader.slowest).map(([k, v]) => `${k}: ${v.ms} ms (${v.what})`).join('; ')}`);
    console.log(`  daemon logs a/b/c: lease-lost ${logCount(/lease-lost|lease lost/i)}, store errors ${logCount(/failed to (store|commit)|store unreachable|database unreachable/i)}`);
    for (const o of reader.otherSeen) console.log(`  reader answer: ${o}`);
    for (const e of expiredSeen) console.log(`  EXPIRED ${e}`);
    for (const [name, why] of [...lost].slice(0, 20)) console.log(`  LOST ${name}: ${why}`);
    for (const [k, why] of [...stale].slice(0, 10)) console.log(`  STALE ${k}: ${why}`);
    for (const rj of fp.rejections.slice(0, 20)) console.log(`  REJECTED grant ${rj.grant}: ${rj.reason} at +${rj.time - t0} ms`);
    if (failures.length) console.log(`  ${failures.join('; ')}`);

    assert.deepEqual(failures, []);
    assert.equal(lost.size, 0, `lost connections: ${[...lost].slice(0, 5).map(([n, w]) => `${n}: ${w}`).join('; ')}`);
    assert.equal(s.invalidGrant, 0, 'a refresh token the provider considers dead was presented');
    assert.equal(s.revokedGrant, 0);
    assert.ok([...grantOf.values()].every((gid) => !fp.grants.get(gid).revoked), 'a grant was revoked');
    assert.equal(s.graceSameGeneration, 0, 'a live node went back to an older refresh token');
    assert.equal(s.graceAfterSeen, 0, 'an access token was served before its refresh token was committed');
    assert.equal(reader.mismatch, 0);
    assert.equal(reader.needsReauth, 0);
    assert.equal(reader.expired, 0, `tokens served past their expiry: ${expiredSeen.join('; ')}`);
    // Every answer of a running node is a token: a 404, 500, 503 or 504
    // means a node lost a connection or could not serve it for a while.
    assert.deepEqual(reader.other, {}, `readers got answers other than 200: ${reader.otherSeen.join('; ')}`);
    assert.equal(stale.size, 0);
    assert.ok(reader.ok > 1000 && reader.perNode.every((x) => x > 0), `readers checked ${reader.ok} tokens`);
    assert.ok(kills >= KILLS && killsPer.every((x) => x > 0), `kills ${killsPer.join('/')}`);
    assert.ok(pgRestartMs > 0 && proxy.stats.dropped > 0, 'the PostgreSQL restart or the cut did not happen');
    assert.ok(Math.min(...perGrant) >= 3, 'a connection refreshed fewer than 3 times');
    passed = true;
  });
