'use strict';
/*
 * A refresh demand passed to a lease holder that is then SIGKILLed (issue
 * 10): `tokenctl refresh`, min_ttl and invalidate on a node without the
 * lease are sent to the holder (NOTIFY); a dead holder never answers. The
 * asking node looks at the lease again every heartbeat: once the dead
 * node's lease has lapsed (15 s) and a heartbeat took it over, the node
 * that took it refreshes (the asker itself, or another node it asks
 * again), and the demand is answered with the new token: within the lease
 * time plus a few heartbeats of the kill, not after the 30 s the asker
 * used to wait before answering with the old token.
 *
 * Three nodes on one PostgreSQL, one connection with rotating refresh
 * tokens (tests/lib/fake-provider.js, graceReuse and revokeOnReuse: a
 * refresh token presented twice kills the grant) and 10-minute access
 * tokens (nothing falls due by itself). Round 1: the holder is killed,
 * `tokenctl refresh` on one of the other two and min_ttl on the third.
 * Round 2: the new holder is killed, `tokenctl refresh` on the one node
 * left (it must take the lease itself). Each round: the demand answers a
 * new token within TAKEOVER_BOUND_MS (25 s) of the kill, every live node
 * serves it, no refresh token is presented twice, no grant revoked.
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
    await connectAll(nodes[0], ['alice'], 'fake', { concurrency: 1 });
    let current = await cl.sameToken('alice', { what: 'alice on every node' });
    const grant = fp.tokens.get(current).grant;

    const measured = [];
    async function round(label, askers) {
      // the lease is taken by a heartbeat (every 2 s), and seen in status at the next
      const holderName = await waitFor(() => cl.holder(), { timeoutMs: 10000, what: `${label}: a node holding the lease` });
      const h = names.indexOf(holderName);
      assert.ok(nodes[h].running(), `${label}: the holder ${holderName} is not running`);
      const refreshesBefore = fp.grants.get(grant).refreshes;
      await cl.kill(h);
      const killedAt = Date.now();
      const live = nodes.filter((n) => n.running());
      const on = askers(live);
      // tokenctl refresh on the first asker, min_ttl beyond the token's life on the second
      const asked = on.map((b, k) => (async () => {
        const r = k === 0
          ? await b.ctl(['refresh', 'alice'], { timeoutMs: 60000 })
          : await b.api('GET', '/v1/connections/alice/token?min_ttl=1200', undefined, { timeoutMs: 60000 });
        return { b, r, ms: Date.now() - killedAt };
      })());
      const answers = await Promise.all(asked);
      const holder2 = await waitFor(async () => {
        const x = await cl.holder();
        return x && x !== holderName ? x : null;
      }, { timeoutMs: 10000, what: `${label}: a live node holding the lease` });
      for (const { b, r, ms } of answers) {
        const who = names[nodes.indexOf(b)];
        let tok;
        if (r.json) {
          assert.equal(r.status, 200, `${label}: min_ttl on ${who}: ${r.status} ${r.text}`);
          tok = r.json.access_token;
        } else {
          assert.equal(r.code, 0, `${label}: tokenctl refresh on ${who}: ${r.stderr}`);
          tok = await tokenOf(b, 'alice');
        }
        const iss = fp.tokens.get(tok);
        assert.ok(iss && iss.grant === grant, `${label}: ${who} answered a token of no or another grant`);
        assert.notEqual(tok, current, `${label}: ${who} answered the old token ${ms} ms after the holder was killed`);
        assert.ok(iss.at > killedAt, `${label}: ${who} answered a token issued before the kill`);
        measured.push(`${label}: ${b === on[0] ? 'tokenctl refresh' : 'min_ttl'} on ${who} answered after ${ms} ms ` +
          `(holder ${holderName} killed, lease now on ${holder2})`);
        assert.ok(ms <= BOUND_MS, `${label}: ${who} answered ${ms} ms after the holder was killed (bound ${BOUND_MS} ms)`);
      }
      assert.ok(fp.grants.get(grant).refreshes > refreshesBefore, `${label}: no refresh reached the provider`);
      current = await cl.sameToken('alice', { want: (x) => x !== current, what: `${label}: the new token on every live node` });
    }

    // Round 1: three nodes; the holder dies; the two others ask.
    await round('round 1', (live) => live);
    // Round 2: the new holder dies; the one node left asks, and must take the lease itself.
    await round('round 2', (live) => live);
    for (const m of measured) t.diagnostic(m);

    const s = fp.stats;
    assert.equal(s.invalidGrant, 0, 'a refresh token was presented twice');
    assert.equal(s.graceAccepted, 0, 'a spent refresh token was presented again');
    assert.equal(s.revokedGrant, 0);
    assert.equal(fp.grants.get(grant).revoked, false, 'the grant was revoked');
    cl.passed = true;
  });
