'use strict';
/*
 * Database outage with three nodes (issue 10, must-show item 3): nodes a,
 * b and c on one throwaway PostgreSQL 15, against tests/lib/fake-provider.js
 * with rotating refresh tokens (graceReuse, revokeOnReuse). OUTAGE_LONG (6)
 * connections have 10-minute access tokens, OUTAGE_SHORT (6) 6-second ones
 * (refreshed every 4 s or so, so refreshes fall due during the outage).
 *
 * PostgreSQL is stopped (by PID) for OUTAGE_MS (30 s). Meanwhile:
 *  - every node says in /v1/status that the store is unreachable (within
 *    5 s of the stop);
 *  - every node serves every long connection's token (200, the token it
 *    had, valid) the whole time, and never a token past its expiry (the
 *    short ones run out: 503, no token);
 *  - tokenctl refresh, min_ttl and invalidate are asked of every node;
 *  - no refresh request reaches the provider from the moment every node
 *    says the store is unreachable until PostgreSQL is back (those sent in
 *    the first moments, before a node has noticed, are counted and
 *    printed: their answers are kept and committed later).
 * PostgreSQL is started again on the same data directory and port, and
 * without any node restarting: every node says reachable again, every
 * short connection is refreshed and committed, a tokenctl refresh of a
 * long one answers a new token, and every node converges on each
 * connection's newest token (the access token of the grant's current
 * refresh token). invalid_grant = 0, no grant revoked, nothing served
 * before its refresh token was committed.
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { sleep, waitFor } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { Cluster } = require('../lib/cluster.js');
const { connectAll } = require('../lib/torture.js');

const OUTAGE_MS = Number(process.env.OUTAGE_MS || 30000);
const LONG = Number(process.env.OUTAGE_LONG || 6);
const SHORT = Number(process.env.OUTAGE_SHORT || 6);
const SHORT_S = 6;
const LONG_S = 600;

test(`database outage: PostgreSQL stopped for ${OUTAGE_MS / 1000} s under three nodes; tokens served, no refresh sent, status says so, all recovers without a restart`,
  { timeout: 300000 }, async (t) => {
    const life = new Map();   // grant -> expires_in
    let nextLife = LONG_S;
    const fp = await startFakeProvider({
      graceReuse: true,
      revokeOnReuse: true,
      expiresIn: (grant) => {
        if (!life.has(grant)) life.set(grant, nextLife);
        return life.get(grant);
      },
    });
    const cl = await Cluster.onFakeProvider(t, fp, { secret: 'ha-outage-client-secret' });
    const { nodes, names, pg } = cl;
    await cl.waitLive({ count: 3, what: 'three live nodes on every node' });

    // Connections through the code flow on node a, one at a time (each
    // grant's lifetime is fixed when its code is exchanged).
    const longs = Array.from({ length: LONG }, (_, i) => `long-${i}`);
    const shorts = Array.from({ length: SHORT }, (_, i) => `short-${i}`);
    const grantOf = new Map();
    for (const name of [...longs, ...shorts]) {
      nextLife = name.startsWith('long') ? LONG_S : SHORT_S;
      await connectAll(nodes[0], [name], 'fake', { concurrency: 1 });
      const tok = await nodes[0].api('GET', `/v1/connections/${name}/token`);
      assert.equal(tok.status, 200, tok.text);
      grantOf.set(name, fp.tokens.get(tok.json.access_token).grant);
    }
    const all = [...longs, ...shorts];
    const newest = (name) => fp.tokens.get(fp.grants.get(grantOf.get(name)).current).access_token;
    async function converged(what, timeoutMs = 15000) {
      await waitFor(async () => {
        for (const name of all) {
          for (const n of nodes) {
            const r = await n.api('GET', `/v1/connections/${name}/token`);
            if (r.status !== 200 || r.json.access_token !== newest(name)) return false;
          }
        }
        return true;
      }, { timeoutMs, intervalMs: 200, what });
    }
    await converged('every node serving every connection\'s newest token before the outage');
    // The short ones refresh on their own: a few rounds before the outage.
    const g0 = fp.grants.get(grantOf.get(shorts[0]));
    await waitFor(() => g0.refreshes >= 2, { timeoutMs: 30000, what: 'short connections refreshing' });
    const pids = nodes.map((n) => n.proc.pid);
    const longTokens = new Map();
    for (const name of longs) longTokens.set(name, (await nodes[1].api('GET', `/v1/connections/${name}/token`)).json.access_token);

    // The outage.
    const refreshReqs = () => fp.requests.filter((r) => r.path === '/token' && r.params.grant_type === 'refresh_token');
    const stopAt = Date.now();
    await pg.stop();
    const stoppedAt = Date.now();
    const unreachableAt = [];
    for (const n of nodes) {
      await waitFor(async () => {
        const st = await n.api('GET', '/v1/status');
        return st.json.store && st.json.store.reachable === false;
      }, { timeoutMs: 15000, intervalMs: 100, what: 'status saying the store is unreachable' });
      unreachableAt.push(Date.now());
    }
    const allKnow = Math.max(...unreachableAt);
    const served = { slow: [], slowDemands: [], long: 0, short: 0, shortGone: {}, expired: [], longMissing: [], demands: {} };
    // Readers on every node, each GET bounded (5 s): a valid token is
    // served from memory, so a long connection answers at once.
    const outageEnd = stoppedAt + OUTAGE_MS;
    const readers = nodes.map((n, i) => (async () => {
      while (Date.now() < outageEnd) {
        for (const name of all) {
          const sentAt = Date.now();
          let r;
          try {
            r = await n.api('GET', `/v1/connections/${name}/token`, undefined, { timeoutMs: 5000 });
          } catch {
            r = { status: 'no answer in 5 s' };
          }
          const took = Date.now() - sentAt;
          if (took > 1000 || typeof r.status === 'string') served.slow.push(`${names[i]} GET ${name}: ${r.status} after ${took} ms at +${sentAt - stoppedAt} ms`);
          if (r.status === 200) {
            const iss = fp.tokens.get(r.json.access_token);
            if (!iss || iss.grant !== grantOf.get(name)) served.expired.push(`${names[i]} ${name}: a token not of its grant`);
            else if (sentAt > iss.at + life.get(iss.grant) * 1000) served.expired.push(`${names[i]} ${name}: ${sentAt - iss.at - life.get(iss.grant) * 1000} ms past expiry`);
            fp.markSeen(r.json.access_token);
            if (name.startsWith('long')) {
              served.long++;
              if (r.json.access_token !== longTokens.get(name)) served.longMissing.push(`${names[i]} ${name}: another token`);
            } else served.short++;
          } else if (name.startsWith('long')) served.longMissing.push(`${names[i]} ${name}: ${r.status}`);
          else served.shortGone[r.status] = (served.shortGone[r.status] || 0) + 1;
        }
        await sleep(100);
      }
    })());
    // Demands on every node, one a second, not waited for in turn: tokenctl
    // refresh, min_ttl beyond the token's life, invalidate (each asks for a
    // refresh; one passed to another node's lease holder may wait).
    const demands = [];
    for (let d = 0; Date.now() < outageEnd - 1000; d++) {
      const i = d % 3;
      const kind = ['refresh', 'min_ttl', 'invalidate'][Math.floor(d / 3) % 3];
      const name = d % 2 ? shorts[d % shorts.length] : longs[d % longs.length];
      const n = nodes[i];
      const o = { timeoutMs: 45000 };
      const sentAt = Date.now();
      demands.push((kind === 'refresh' ? n.api('POST', `/v1/connections/${name}/refresh`, undefined, o)
        : kind === 'min_ttl' ? n.api('GET', `/v1/connections/${name}/token?min_ttl=${LONG_S * 2}`, undefined, o)
          : n.api('POST', `/v1/connections/${name}/invalidate`, undefined, o))
        .catch(() => ({ status: 'no answer in 45 s' }))
        .then((r) => {
          const at = Date.now();
          const k = `${kind} ${r.status}${at > outageEnd ? ' (after the outage)' : ''}`;
          served.demands[k] = (served.demands[k] || 0) + 1;
          if (at - sentAt > 5000) served.slowDemands.push(`${names[i]} ${kind} ${name}: ${r.status} after ${at - sentAt} ms`);
          if (r.status === 200 && r.json.access_token) {
            const iss = fp.tokens.get(r.json.access_token);
            if (iss && sentAt > iss.at + life.get(iss.grant) * 1000) served.expired.push(`${names[i]} ${kind} ${name}: expired`);
            fp.markSeen(r.json.access_token);
          }
        }));
      await sleep(1000);
    }
    await Promise.all(readers);
    // Every node still says unreachable at the end of the outage.
    for (const n of nodes) {
      const st = await n.api('GET', '/v1/status');
      assert.equal(st.json.store.reachable, false, `${JSON.stringify(st.json.store)}`);
    }
    const refreshesBefore = refreshReqs().filter((r) => r.time >= stopAt && r.time < allKnow);
    const refreshesDuring = refreshReqs().filter((r) => r.time >= allKnow);
    const restartAt = Date.now();
    await pg.startPostmaster();
    const backAt = Date.now();

    // Recovery, no restart.
    for (const n of nodes) {
      await waitFor(async () => {
        const st = await n.api('GET', '/v1/status');
        return st.json.store && st.json.store.reachable === true;
      }, { timeoutMs: 30000, intervalMs: 200, what: 'status saying the store is reachable again' });
    }
    const reachableS = (Date.now() - backAt) / 1000;
    await waitFor(() => shorts.every((name) => {
      const g = fp.grants.get(grantOf.get(name));
      return g.lastOk && g.lastOk.time > backAt;
    }), { timeoutMs: 45000, what: 'every short connection refreshed after the outage' });
    await converged('every node serving every connection\'s newest token after the outage', 30000);
    const convergedS = (Date.now() - backAt) / 1000;
    await Promise.all(demands);
    const before = newest(longs[0]);
    const rr = await nodes[2].ctl(['refresh', longs[0]]);
    assert.equal(rr.code, 0, rr.stderr);
    assert.notEqual(newest(longs[0]), before, 'tokenctl refresh after the outage reached no provider');
    await converged('every node serving the new token after a tokenctl refresh', 5000);

    const s = fp.stats;
    console.log(`outage: ${OUTAGE_MS} ms; every node unreachable in status after ${allKnow - stoppedAt} ms; ` +
      `refresh requests at the provider: ${refreshesBefore.length} before every node noticed, ${refreshesDuring.length} after; ` +
      `reachable again ${reachableS.toFixed(1)} s and converged ${convergedS.toFixed(1)} s after the restart (restart took ${backAt - restartAt} ms)`);
    console.log(`  served during the outage: long ${served.long}, short ${served.short}, short without a valid token ${JSON.stringify(served.shortGone)}, ` +
      `demands ${JSON.stringify(served.demands)}; provider: refreshes ${s.refreshed}, grace reuses ${s.graceAccepted}, ` +
      `invalid_grant ${s.invalidGrant}, served-before-commit ${s.graceAfterSeen}`);

    for (const x of served.slow.slice(0, 30)) console.log(`  SLOW ${x}`);
    for (const x of served.slowDemands.slice(0, 30)) console.log(`  SLOW DEMAND ${x}`);
    assert.deepEqual(nodes.map((n) => n.proc.pid), pids, 'a node restarted');
    assert.ok(nodes.every((n) => n.running() && n.exits.length === 0), 'a node exited');
    assert.ok(allKnow - stoppedAt <= 5000, `a node took ${allKnow - stoppedAt} ms to say the store is unreachable`);
    assert.deepEqual(refreshesDuring.map((r) => new Date(r.time).toISOString()), [], 'refresh requests reached the provider during the outage');
    assert.deepEqual(served.expired, [], 'a node served a token past its expiry during the outage');
    assert.deepEqual(served.longMissing, [], 'a node did not serve a valid token during the outage');
    // Every answer during the outage comes at once: a valid token, or 503
    // for one that ran out (no wait for a refresh that cannot happen, nor
    // for a lease holder that cannot be asked).
    assert.deepEqual(served.slow, [], 'token requests waited during the outage');
    assert.deepEqual(served.slowDemands, [], 'refresh demands waited during the outage');
    assert.deepEqual(Object.keys(served.shortGone), ['503'], 'an expired token\'s answer was not 503');
    assert.ok(served.long > 0 && Object.keys(served.shortGone).length > 0, 'the outage outlived no short token: the test checked nothing');
    assert.equal(s.invalidGrant, 0);
    // No node died here: a grace reuse means a refresh token was sent again
    // after its answer had been received (the answer kept through the
    // outage, then dropped): a provider without a grace period revokes
    // the grant for that.
    assert.equal(s.graceAccepted, 0, 'a spent refresh token was presented again after the outage');
    assert.equal(s.graceAfterSeen, 0, 'an access token was served before its refresh token was committed');
    assert.ok([...grantOf.values()].every((gid) => !fp.grants.get(gid).revoked), 'a grant was revoked');
    cl.passed = true;
  });
