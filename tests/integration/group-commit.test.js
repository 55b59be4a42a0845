'use strict';
/*
 * Group commit: a refreshed token is handed out only once its batch is
 * durable. The store writer is held with its test hook
 * (TOKENBROKER_TEST_WRITER_STALL=path: while the file exists the writer
 * waits before committing), so the provider's answer is in but its commit
 * is not:
 *  1. a plain GET .../token keeps serving the old token, and ?min_ttl
 *     (which wants the new one) waits; once the file is gone the new
 *     token is served, to the waiter and to everyone after.
 *  2. SIGKILL while stalled, then a restart: the daemon still holds the
 *     old refresh token and the provider (the fake one with rotation and
 *     a grace period for a client that died before its commit) takes it:
 *     no invalid_grant, and the lost answer's access token was never seen
 *     by a client (stats.graceAfterSeen = 0).
 *  3. A revoke (DELETE) is answered only once the row's delete is
 *     committed: while held, no answer and the row is still there.
 *  4. PostgreSQL: the follower reads the row back while its delete is
 *     held (a safety-net scan every turn, its batch handed over late:
 *     TOKENBROKER_TEST_FOLLOWER_SCAN_MS, TOKENBROKER_TEST_FOLLOWER_DELAY_MS);
 *     the connection deleted from memory must not come back from it.
 *  5. PostgreSQL: the same row, read before the delete commits, handed
 *     over only after the delete is done: it must not bring the
 *     connection back either (the follower's reads are counted, and a
 *     done delete is remembered until a later read is handed over).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { STORE, Broker, followAuthorize, sleep, waitFor, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

/* A broker on the fake provider whose store writer holds while the file
 * `stall` exists (TOKENBROKER_TEST_WRITER_STALL); stopped after the test,
 * the file removed first so the writer is never left held. */
async function startHeldable(t, env = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-gc-'));
  const stall = path.join(dir, 'stall');
  const fp = await startFakeProvider({ graceReuse: true, expiresIn: 600 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'group-commit-secret' },
    env: { TOKENBROKER_TEST_WRITER_STALL: stall, ...env },
  });
  t.after(async () => {
    fs.rmSync(dir, { recursive: true, force: true });
    await b.stop();
    await fp.close();
  });
  return { b, fp, stall };
}

test('group commit: no token before its commit is durable; SIGKILL while stalled loses nothing handed out', { timeout: 120000 }, async (t) => {
  const { b, fp, stall } = await startHeldable(t);
  const token = async () => {
    const r = await b.api('GET', '/v1/connections/gc/token');
    assert.equal(r.status, 200, `token: ${r.text}`);
    fp.markSeen(r.json.access_token);
    return r.json.access_token;
  };
  const issued = () => fp.issued.length;

  const c = await b.api('POST', '/v1/connections', { name: 'gc', provider: 'fake' });
  assert.equal(c.status, 201, c.text);
  assert.equal((await followAuthorize(c.json.authorize_url)).status, 200);
  const t0 = await token();
  assert.equal(t0, fp.issued[fp.issued.length - 1].access_token);

  // 1. Held commit: the old token is served, min_ttl waits.
  fs.writeFileSync(stall, '');
  const n0 = issued();
  let waited = null;
  const waiter = b.api('GET', '/v1/connections/gc/token?min_ttl=3000').then((r) => { waited = r; return r; });
  await waitFor(() => issued() > n0, { timeoutMs: 10000, what: 'the provider to answer the refresh' });
  const t1 = fp.issued[fp.issued.length - 1].access_token;
  assert.notEqual(t1, t0);
  await sleep(700);   // the answer is in the daemon; its commit is held
  for (let i = 0; i < 5; i++) {
    assert.equal(await token(), t0, 'a token was served before its commit was durable');
    await sleep(50);
  }
  assert.equal(waited, null, 'min_ttl was answered before the new token was committed');
  const show = await b.api('GET', '/v1/connections/gc');
  assert.equal(show.json.refreshing, true, `the connection should say it is refreshing: ${show.text}`);

  fs.rmSync(stall);
  const w = await waiter;
  assert.equal(w.status, 200, w.text);
  assert.equal(w.json.access_token, t1, 'the waiter gets the new token once it is committed');
  fp.markSeen(t1);
  assert.equal(await token(), t1);
  assert.equal(issued(), n0 + 1, 'one provider request for the refresh');

  // 2. SIGKILL while the commit is held.
  fs.writeFileSync(stall, '');
  const n1 = issued();
  const pending = b.api('POST', '/v1/connections/gc/refresh').catch(() => null);
  await waitFor(() => issued() > n1, { timeoutMs: 10000, what: 'the provider to answer the refresh' });
  const lost = fp.issued[fp.issued.length - 1];
  await sleep(700);
  assert.equal(await token(), t1, 'a token was served before its commit was durable');
  await b.kill('SIGKILL');
  await pending;
  fs.rmSync(stall);
  fp.newGeneration();
  await b.launch();

  assert.equal(await token(), t1, 'after the restart: the last committed token');
  const rf = await b.api('POST', '/v1/connections/gc/refresh');
  assert.equal(rf.status, 200, `refresh after the restart: ${rf.text}`);
  const t3 = await token();
  assert.notEqual(t3, lost.access_token);
  assert.notEqual(t3, t1);
  assert.equal(fp.stats.invalidGrant, 0, `invalid_grant: ${JSON.stringify(fp.rejections)}`);
  assert.equal(fp.stats.graceAccepted, 1, 'the restart presented the last committed refresh token once');
  assert.equal(fp.stats.graceAfterSeen, 0, 'a token whose refresh token was lost had been handed out');
  assert.equal(fp.stats.graceSameGeneration, 0, 'a live daemon went back to an older refresh token');

  // 3. A revoke answers "deleted" only once the delete is durable.
  fs.writeFileSync(stall, '');
  let revoked = null;
  const rv = b.api('DELETE', '/v1/connections/gc').then((r) => { revoked = r; return r; });
  await waitFor(() => fp.requests.some((x) => x.path === '/revoke'), { timeoutMs: 10000, what: 'the revocation at the provider' });
  await sleep(700);
  assert.equal(revoked, null, 'the revoke was answered before its delete was committed');
  assert.match(b.dumpStore(), /\|gc\|fake\|active\|/, 'the row went before its commit');
  fs.rmSync(stall);
  const rvr = await rv;
  assert.equal(rvr.status, 200, rvr.text);
  assert.equal(rvr.json.revoked_at_provider, true, rvr.text);
  assert.doesNotMatch(b.dumpStore(), /\|gc\|/, 'the revoke answered before the row was deleted');
  assert.equal((await b.api('GET', '/v1/connections/gc')).status, 404);
});

test('group commit: SIGTERM while the writer is held commits the staged tokens and exits at once', { timeout: 120000 }, async (t) => {
  const { b, fp, stall } = await startHeldable(t);
  const c = await b.api('POST', '/v1/connections', { name: 'gc', provider: 'fake' });
  assert.equal(c.status, 201, c.text);
  assert.equal((await followAuthorize(c.json.authorize_url)).status, 200);
  const t0 = (await b.api('GET', '/v1/connections/gc/token')).json.access_token;
  fp.markSeen(t0);

  fs.writeFileSync(stall, '');
  const n = fp.issued.length;
  const pending = b.api('POST', '/v1/connections/gc/refresh').catch(() => null);
  await waitFor(() => fp.issued.length > n, { timeoutMs: 10000, what: 'the provider to answer the refresh' });
  const staged = fp.issued[fp.issued.length - 1].access_token;
  await sleep(700);   // staged, its commit held
  // The stall file stays: a stop must neither wait for the hook nor drop
  // the staged answer (STOP_GRACE is 10 s; the hook holds up to 120 s).
  const t1 = Date.now();
  await b.kill('SIGTERM');
  const stopMs = Date.now() - t1;
  const last = b.exits[b.exits.length - 1];
  assert.deepEqual([last.code, last.signal], [0, null], `exit after SIGTERM: ${JSON.stringify(last)}`);
  assert.ok(stopMs < 5000, `SIGTERM with the writer held took ${stopMs} ms`);
  const r = await pending;
  // the commit is done before the loop ends: the waiter has its answer
  assert.equal(r?.status, 200, `the refresh waiter got ${r && r.text}`);

  fs.rmSync(stall);
  await b.launch();
  const after = await b.api('GET', '/v1/connections/gc/token');
  assert.equal(after.status, 200, after.text);
  assert.equal(after.json.access_token, staged, 'the answer staged at SIGTERM was not committed at the stop');
  fp.markSeen(staged);
  const rf = await b.api('POST', '/v1/connections/gc/refresh');
  assert.equal(rf.status, 200, rf.text);
  assert.equal(fp.stats.invalidGrant, 0, `invalid_grant: ${JSON.stringify(fp.rejections)}`);
  assert.equal(fp.stats.graceAccepted, 0, 'the restart went back to the refresh token before the stop');
});

const FOLLOWER_DELAY = 2000;   // ms the follower holds what it read before the loop applies it

/* PostgreSQL's follower scanning every turn and handing its batches over
 * FOLLOWER_DELAY ms late; connection NAME authorized, served, and the
 * follower done with the authorization's rows; then a refresh commits
 * the row, which the follower reads back at once and holds. Then the
 * writer is held (stall) and the connection revoked: the DELETE's answer
 * comes once its delete is committed. */
async function revokeWhileFollowerHoldsRow(t, name) {
  const held = await startHeldable(t, {
    TOKENBROKER_TEST_FOLLOWER_SCAN_MS: '1',
    TOKENBROKER_TEST_FOLLOWER_DELAY_MS: String(FOLLOWER_DELAY),
  });
  const { b, fp, stall } = held;
  const c = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
  assert.equal(c.status, 201, c.text);
  assert.equal((await followAuthorize(c.json.authorize_url)).status, 200);
  assert.equal((await b.api('GET', `/v1/connections/${name}/token`)).status, 200);
  await sleep(2 * FOLLOWER_DELAY + 500);

  const rf = await b.api('POST', `/v1/connections/${name}/refresh`);
  assert.equal(rf.status, 200, rf.text);
  fs.writeFileSync(stall, '');
  held.revoked = null;
  held.revoke = b.api('DELETE', `/v1/connections/${name}`).then((r) => { held.revoked = r; return r; });
  await waitFor(() => fp.requests.some((x) => x.path === '/revoke'), { timeoutMs: 10000, what: 'the revocation at the provider' });
  return held;
}

test('group commit: a row the follower reads back while its delete is held does not bring the connection back', { timeout: 120000, skip: STORE !== 'postgresql' && 'the follower is PostgreSQL\'s' }, async (t) => {
  // The row, read back, reaches the loop FOLLOWER_DELAY ms after its
  // read, while the delete is held.
  const DELAY = FOLLOWER_DELAY;
  const held = await revokeWhileFollowerHoldsRow(t, 'gc');
  const { b, stall } = held;
  const until = Date.now() + 2 * DELAY + 1000;
  while (Date.now() < until) {
    const g = await b.api('GET', '/v1/connections/gc');
    assert.equal(g.status, 404, `the connection came back while its delete was held: ${g.text}`);
    await sleep(100);
  }
  assert.equal(held.revoked, null, 'the revoke was answered before its delete was committed');
  fs.rmSync(stall);
  const rvr = await held.revoke;
  assert.equal(rvr.status, 200, rvr.text);
  assert.doesNotMatch(b.dumpStore(), /\|gc\|/, 'the row is still there after the revoke');
  assert.equal((await b.api('GET', '/v1/connections/gc')).status, 404);

  // Made again under the same name once the delete is done: nothing held
  // back from it.
  const c2 = await b.api('POST', '/v1/connections', { name: 'gc', provider: 'fake' });
  assert.equal(c2.status, 201, c2.text);
  assert.equal((await followAuthorize(c2.json.authorize_url)).status, 200);
  await sleep(DELAY + 500);
  assert.equal((await b.api('GET', '/v1/connections/gc/token')).status, 200);
});

test('group commit: a row the follower read before a delete committed, handed over after it, does not bring the connection back', { timeout: 120000, skip: STORE !== 'postgresql' && 'the follower is PostgreSQL\'s' }, async (t) => {
  // The delete is held 500 ms, long enough for the follower's read of the
  // refreshed row to begin before it commits, then let go: it is done
  // (and answered) well before the follower hands the old row over.
  const DELAY = FOLLOWER_DELAY;
  const { b, stall, revoke } = await revokeWhileFollowerHoldsRow(t, 'gd');
  await sleep(500);
  fs.rmSync(stall);
  const rvr = await revoke;
  assert.equal(rvr.status, 200, rvr.text);
  const until = Date.now() + 2 * DELAY + 1000;
  let looks = 0;
  while (Date.now() < until) {
    const g = await b.api('GET', '/v1/connections/gd');
    assert.equal(g.status, 404, `the connection came back after its delete: ${g.text}`);
    looks++;
    await sleep(50);
  }
  assert.ok(looks > 10, `looked ${looks} times`);
  assert.doesNotMatch(b.dumpStore(), /\|gd\|/, 'the row is still there after the revoke');
});
