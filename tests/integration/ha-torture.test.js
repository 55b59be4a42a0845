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

const { sleep, waitFor, BUILD } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { Cluster } = require('../lib/cluster.js');
const { num, prng, pool, killRaw, relaunch, tail, connectAll, Ledger } = require('../lib/torture.js');

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
    let readersOn = false;
    const readerTasks = [];
    const pending = new Map();   // node index -> its restart in the background
    let stray = null;
    // c reaches the database through a proxy whose link is cut; the
    // cleanup is registered before any launch: a node that fails to start
    // still leaves nothing running.
    const cl = await Cluster.onFakeProvider(t, fp, {
      proxied: [2],
      secret: 'ha-torture-client-secret',
      broker: { refresh_margin: '20s', refresh_ratio: '0.1', refresh_jitter: '2s', max_parallel_refreshes: '64' },
      logLevel: 'info',
      cleanup: async () => {
        readersOn = false;
        await Promise.all(readerTasks);
        await Promise.allSettled([...pending.values()]);
        if (stray) await killRaw(stray).catch(() => {});
      },
    });
    const { nodes, names, pg } = cl;
    const proxy = cl.proxies[2];
    // 1. CONNS connections through the code flow, on node a.
    const a = nodes[0];
    const conns = Array.from({ length: CONNS }, (_, i) => `ha-${String(i).padStart(4, '0')}`);
    await connectAll(a, conns, 'fake');

    const ledger = new Ledger(fp, conns, { life, nodeNames: names });
    await ledger.learnGrants(a);
    const { grantOf, reader, lost } = ledger;
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

    let cutOn = false;   // node c's database link is cut
    let cutEndedAt = 0;
    // While c is cut off from the database it cannot refresh (nothing is
    // sent that could not be committed under its lease) nor hear of other
    // nodes' refreshes: a token of c that runs out meanwhile (its holder
    // was killed before refreshing it, and the takeover took the rest of
    // its life) gets 503 "the store's database is unreachable". That is
    // the contract, and accepted here only when it is that: on c, during
    // the cut or until c is back (CUT_BACK_MS after it ends), and c's own
    // view of the connection (the admin route, from memory) holds no valid
    // token. Any other non-200 still fails the ledger.
    const CUT_BACK_MS = 10000;
    const cutExpiredSeen = [];
    const cutExpired = async (i, name, r, sentAt) => {
      if (i !== 2 || r.status !== 503 || !/database is unreachable/.test(r.json?.error_description ?? '')) return false;
      if (!cutOn && !(cutEndedAt && sentAt <= cutEndedAt + CUT_BACK_MS)) return false;
      let v;
      try { v = await nodes[i].api('GET', `/v1/connections/${name}`, undefined, { timeoutMs: 5000 }); } catch { return false; }
      if (v.status !== 200 || v.json.state !== 'active' || v.json.expires_in > 0) return false;
      cutExpiredSeen.push(`${name} ${cutOn ? 'during the cut' : `${sentAt - cutEndedAt} ms after it`}`);
      return true;
    };
    const up = (i) => nodes[i].running() && !pending.has(i);

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
            ledger.took(`${kind}${cutOn && i === 2 ? ' on c during the cut' : ''}`, took, `${names[i]} ${method} ${name} ${r.status}`);
            if (await cutExpired(i, name, r, sentAt)) continue;
            ledger.answer(i, name, r, sentAt, method);
            await sleep(kind === 'token' ? 10 : 150);
          }
        })());
      }
    }

    /* Every connection listed and active on node i. */
    const checkListed = (i, when) => ledger.checkListed(nodes[i], i, when);

    // 3. The torture.
    const PG_AT = Math.max(1, Math.floor(KILLS / 3));
    const CUT_AT = Math.max(2, Math.floor((2 * KILLS) / 3));
    let kills = 0, earlyKills = 0, pgRestartMs = 0, cutDone = null;
    const killsPer = [0, 0, 0];
    const restartMs = [];
    const failures = [];
    const restartOf = (i) => (async () => {
      await sleep(SETTLE_MS);
      const rs = await relaunch(nodes[i], { fp, rand, early: EARLY, settleMs: SETTLE_MS, track: (p) => { stray = p; } });
      restartMs.push(rs.ms);
      if (rs.early) earlyKills++;
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
        cutDone = sleep(CUT_MS).then(() => { proxy.restore(); cutOn = false; cutEndedAt = Date.now(); });
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
      if (ledger.broken()) {
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
    // A refresh asked while one is in flight joins it (single-flight,
    // DESIGN.md), and a follower answers with the holder's next commit:
    // either may come from a request the provider accepted just before
    // tVerify. Such a connection is refreshed once more, through the same
    // node, and that refresh must be accepted after it was asked.
    const tVerify = Date.now();
    const joined = [];
    if (!failures.length) {
      await pool(conns, 32, async (name) => {
        const i = Math.floor(Math.random() * 3);
        const refresh = () => nodes[i].api('POST', `/v1/connections/${name}/refresh`, undefined, { timeoutMs: 60000 });
        let since = tVerify;
        let r = await refresh();
        if (r.status === 200 && r.json.state === 'active' && !ledger.acceptedSince(name, since)) {
          joined.push(`${name} on ${names[i]} (accepted ${since - (ledger.grant(name).lastOk?.time ?? 0)} ms before)`);
          since = Date.now();
          r = await refresh();
        }
        ledger.refreshHeld(name, r, `final refresh on ${names[i]}`, { since });
      });
      if (joined.length) console.log(`  final refreshes that joined an earlier one and were asked again: ${joined.join(', ')}`);
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
          ledger.check(i, name, r.json.access_token, sentAt);
          if (r.json.access_token !== want) stale.set(`${names[i]}/${name}`, 'not the newest token');
        }
      });
      return stale.size === 0;
    }, { timeoutMs: 20000, intervalMs: 500, what: 'every node serving every connection\'s newest token' }).catch((e) => failures.push(e.message));

    const s = fp.stats;
    const per = ledger.refreshesPerGrant();
    const runtimeS = (Date.now() - t0) / 1000;
    const avg = (x) => (x.length ? x.reduce((p, q) => p + q, 0) / x.length : 0);
    const logs = nodes.map((n) => n.log());
    const logCount = (re) => logs.map((l) => l.split('\n').filter((x) => re.test(x)).length).join('/');
    console.log(`HA torture: ${kills} kills (a/b/c ${killsPer.join('/')}), ${CONNS} connections, lost=${lost.size}, invalid_grant=${s.invalidGrant}, ` +
      `refreshes=${s.refreshed}, grace reuses=${s.graceAccepted}, expired served=${reader.expired}, runtime=${runtimeS.toFixed(1)} s`);
    console.log(`  seed=${SEED} build=${BUILD} setup ${setupS.toFixed(1)} s, kill loop ${loopS.toFixed(1)} s, ` +
      `PostgreSQL restart ${pgRestartMs} ms, cut ${CUT_MS} ms of node c (proxy: ${JSON.stringify(proxy.stats)})`);
    console.log(`  kills also during startup: ${earlyKills}; restart to answering: avg ${avg(restartMs).toFixed(0)} ms, max ${Math.max(0, ...restartMs)} ms`);
    console.log(ledger.report(t0));
    if (cutExpiredSeen.length) {
      console.log(`  503 on c while cut off, its token run out (${cutExpiredSeen.length}): ${cutExpiredSeen.slice(0, 10).join('; ')}`);
    }
    console.log(`  daemon logs a/b/c: lease-lost ${logCount(/lease-lost|lease lost/i)}, store errors ${logCount(/failed to (store|commit)|store unreachable|database unreachable/i)}`);
    for (const [k, why] of [...stale].slice(0, 10)) console.log(`  STALE ${k}: ${why}`);
    if (failures.length) console.log(`  ${failures.join('; ')}`);

    assert.deepEqual(failures, []);
    ledger.assertClean();
    assert.equal(s.revokedGrant, 0);
    assert.ok([...grantOf.values()].every((gid) => !fp.grants.get(gid).revoked), 'a grant was revoked');
    assert.equal(stale.size, 0);
    assert.ok(reader.ok > 1000 && reader.perNode.every((x) => x > 0), `readers checked ${reader.ok} tokens`);
    assert.ok(kills >= KILLS && killsPer.every((x) => x > 0), `kills ${killsPer.join('/')}`);
    assert.ok(pgRestartMs > 0 && proxy.stats.dropped > 0, 'the PostgreSQL restart or the cut did not happen');
    assert.ok(per.min >= 3, 'a connection refreshed fewer than 3 times');
    cl.passed = true;
  });
