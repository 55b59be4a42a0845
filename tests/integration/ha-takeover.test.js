'use strict';
/*
 * A refresh demand passed to a lease holder that is then SIGKILLed (issue
 * 10): `tokenctl refresh`, min_ttl and invalidate on a node without the
 * lease are sent to the holder (NOTIFY); a dead holder never answers. The
 * asking node looks at the lease again every heartbeat: once the dead
 * node's lease has lapsed (15 s) and a heartbeat took it over, the node
 * that took it refreshes (the asker itself, or another node the asker
 * asks again), and the demand is answered with the new token: within the
 * lease time plus a few heartbeats of the kill, not with a 503 after the
 * 30 s the asker used to wait.
 *
 * Three nodes on one PostgreSQL, two connections (alice, bob) with
 * rotating refresh tokens (tests/lib/fake-provider.js, graceReuse and
 * revokeOnReuse: a refresh token presented twice kills the grant) and
 * 10-minute access tokens (nothing falls due by itself); the leases spread
 * one a node (a fair share is one), so one node holds none.
 *  - Round 1: alice's holder is killed; `tokenctl refresh alice` on bob's
 *    holder, which is at its share and cannot take alice's lease: the idle
 *    node takes it, and gets the demand only because the asker asks again.
 *  - Round 2: alice's new holder is killed; `tokenctl refresh alice` and
 *    min_ttl on the one node left, which takes the lease and refreshes
 *    itself.
 * Each round: every demand answers a new token within TAKEOVER_BOUND_MS
 * (25 s) of the kill, the live nodes serve it, no refresh token is
 * presented twice, no grant revoked.
 */
const test = require('node:test');
const assert = require('node:assert/strict');

const { waitFor } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { Cluster, tokenOf } = require('../lib/cluster.js');
const { connectAll, num } = require('../lib/torture.js');

// 15 s lease + 2 s heartbeat + one more heartbeat + the refresh; generous
// for a loaded machine, and below the 30 s the asker used to wait.
const BOUND_MS = num('TAKEOVER_BOUND_MS', 25000);

test('a refresh asked of a lease holder that is then SIGKILLed is answered with a new token once its lease lapses, not after 30 s',
  { timeout: 240000 }, async (t) => {
    const fp = await startFakeProvider({ graceReuse: true, revokeOnReuse: true, expiresIn: 600 });
    const cl = await Cluster.onFakeProvider(t, fp, { secret: 'ha-takeover-client-secret' });
    const { nodes, names } = cl;
    await cl.waitLive({ count: 3, what: 'three live nodes on every node' });
    await connectAll(nodes[0], ['alice', 'bob'], 'fake', { concurrency: 1 });
    let current = await cl.sameToken('alice', { what: 'alice on every node' });
    const grant = fp.tokens.get(current).grant;
    // The two leases on two nodes (the first node took both while alone;
    // beyond its share one lapses and another node takes it).
    const spread = await waitFor(async () => {
      const x = await cl.leaseOf('alice');
      const y = await cl.leaseOf('bob');
      return x && y && x !== y ? [x, y] : null;
    }, { timeoutMs: 40000, intervalMs: 500, what: 'alice\'s and bob\'s leases on two nodes' });

    const measured = [];
    async function round(label, askersOf) {
      const holderName = await cl.leaseOf('alice');
      assert.ok(holderName, `${label}: no node holds alice's lease`);
      const h = names.indexOf(holderName);
      assert.ok(nodes[h].running(), `${label}: the holder ${holderName} is not running`);
      const refreshesBefore = fp.grants.get(grant).refreshes;
      await cl.kill(h);
      const killedAt = Date.now();
      const on = askersOf();
      // tokenctl refresh on the first asker, min_ttl beyond the token's life on a second
      const answers = await Promise.all(on.map(([b, kind]) => (async () => {
        const r = kind === 'refresh'
          ? await b.ctl(['refresh', 'alice'], { timeoutMs: 60000 })
          : await b.api('GET', '/v1/connections/alice/token?min_ttl=1200', undefined, { timeoutMs: 60000 });
        return { b, kind, r, ms: Date.now() - killedAt };
      })()));
      const holder2 = await waitFor(() => cl.leaseOf('alice'), { timeoutMs: 10000, what: `${label}: a node holding alice's lease` });
      assert.notEqual(holder2, holderName, `${label}: the dead node still holds the lease`);
      for (const { b, kind, r, ms } of answers) {
        const who = names[nodes.indexOf(b)];
        let tok;
        if (kind === 'refresh') {
          assert.equal(r.code, 0, `${label}: tokenctl refresh on ${who} (${ms} ms after the kill): ${r.stderr}`);
          tok = await tokenOf(b, 'alice');
        } else {
          assert.equal(r.status, 200, `${label}: min_ttl on ${who}: ${r.status} ${r.text}`);
          tok = r.json.access_token;
        }
        const iss = fp.tokens.get(tok);
        assert.ok(iss && iss.grant === grant, `${label}: ${who} answered a token of no or another grant`);
        assert.notEqual(tok, current, `${label}: ${who} answered the old token ${ms} ms after the holder was killed`);
        assert.ok(iss.at > killedAt, `${label}: ${who} answered a token issued before the kill`);
        measured.push(`${label}: ${kind === 'refresh' ? 'tokenctl refresh' : 'min_ttl'} on ${who} answered after ${ms} ms ` +
          `(holder ${holderName} killed, lease now on ${holder2})`);
        assert.ok(ms <= BOUND_MS, `${label}: ${who} answered ${ms} ms after the holder was killed (bound ${BOUND_MS} ms)`);
      }
      assert.ok(fp.grants.get(grant).refreshes > refreshesBefore, `${label}: no refresh reached the provider`);
      current = await cl.sameToken('alice', { want: (x) => x !== current, what: `${label}: the new token on every live node` });
      return holder2;
    }

    // Round 1: bob's holder asks; it cannot take alice's lease (its share is one): the idle node does.
    const bobs = cl.node(spread[1]);
    const taker = await round('round 1', () => [[bobs, 'refresh']]);
    assert.notEqual(taker, spread[1], 'round 1: the asker took the lease (it holds its share): the test did not ask again');
    // Round 2: the one node left asks, and takes the lease itself.
    await round('round 2', () => [[bobs, 'refresh'], [bobs, 'min_ttl']]);
    for (const m of measured) t.diagnostic(m);
    assert.equal(await cl.leaseOf('bob'), spread[1], 'bob\'s lease moved');

    const s = fp.stats;
    assert.equal(s.invalidGrant, 0, 'a refresh token was presented twice');
    assert.equal(s.graceAccepted, 0, 'a spent refresh token was presented again');
    assert.equal(s.revokedGrant, 0);
    assert.equal(fp.grants.get(grant).revoked, false, 'the grant was revoked');
    cl.passed = true;
  });
