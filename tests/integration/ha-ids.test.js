'use strict';
/*
 * Several nodes creating and deleting connections on one PostgreSQL
 * (issue 10), three tokenbrokerd nodes (a, b, c) on a throwaway
 * PostgreSQL 15; c reaches it through a TCP proxy whose link the test
 * cuts (drops every connection and refuses new ones), as ha-torture does.
 *  1. a and b create 200 client-credentials connections each at the same
 *     time through the API: all 400 are in the database with distinct ids
 *     (ids come from blocks reserved in the database, never from a
 *     node's MAX(id)), and every node serves every one of them the same
 *     token.
 *  2. A connection revoked on a while c's database link is cut is gone
 *     from c within seconds after the link returns (its notification was
 *     lost; c's catch-up reads the delete's tombstone): c answers 404.
 *  3. The same name created on a and b at once: exactly one gets 201, the
 *     other a clear 409, and both nodes end with the winner's connection.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { sleep, waitFor, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { Cluster, tokenOf } = require('../lib/cluster.js');
const { pool } = require('../lib/torture.js');

const PER_NODE = 200;

/* A create, retried while the node answers 503 (ids not reserved yet: a
 * clear, retryable answer), a bounded number of times. */
async function create(b, name) {
  for (let i = 0; ; i++) {
    const r = await b.api('POST', '/v1/connections', { name, provider: 'cc' });
    if (r.status !== 503 || i >= 20) return r;
    await sleep(200);
  }
}

let fp, cl, pg, proxy, nodes;
let a, b, c;

test.before(async () => {
  fp = await startFakeProvider({ record: false });
  cl = await Cluster.create({ nodes: 3, proxied: [2] });   // c reaches PostgreSQL through a cut proxy
  ({ pg, nodes } = cl);
  proxy = cl.proxies[2];
  await cl.start(() => ({
    providers: {
      cc: iniProvider({ ...fp.providerConf({ grant: 'client_credentials', authorize_url: undefined }), revoke_url: undefined }),
    },
    secrets: { 'fake.secret': 'ha-ids-client-secret' },
    broker: { max_parallel_refreshes: '64' },
    logLevel: 'info',
  }));
  [a, b, c] = nodes;
  await cl.waitLive({ count: 3, what: 'three live nodes on every node' });
}, { timeout: 120000 });

test.after(async () => {
  if (cl) await cl.destroy();
  if (fp) await fp.close();
});

test('a and b create 200 connections each at the same time: 400 rows with distinct ids, every node serves every token', { timeout: 300000 }, async (t) => {
  const onA = Array.from({ length: PER_NODE }, (_, i) => `ida-${String(i).padStart(3, '0')}`);
  const onB = Array.from({ length: PER_NODE }, (_, i) => `idb-${String(i).padStart(3, '0')}`);
  const statuses = {};
  const made = async (node, name) => {
    const r = await create(node, name);
    statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    assert.equal(r.status, 201, `create ${name}: ${r.status} ${r.text}`);
  };
  await Promise.all([pool(onA, 8, (n) => made(a, n)), pool(onB, 8, (n) => made(b, n))]);
  const all = [...onA, ...onB];
  let rows = '';
  await waitFor(async () => {
    rows = (await pg.psql('SELECT count(*), count(DISTINCT id) FROM connections')).trim();
    return rows === `${all.length}|${all.length}`;
  }, { timeoutMs: 20000, intervalMs: 500, what: 'every connection in the database' }).catch(() => {});
  assert.equal(rows, `${all.length}|${all.length}`, 'every connection is in the database, each with its own id');

  // Every node serves every connection, the same token on every node.
  let missing = [];
  await waitFor(async () => {
    missing = [];
    await pool(all, 16, async (name) => {
      const toks = await Promise.all(nodes.map((n) => tokenOf(n, name)));
      if (!toks[0] || toks.some((x) => x !== toks[0])) missing.push(name);
    });
    return missing.length === 0;
  }, { timeoutMs: 90000, intervalMs: 1000, what: 'every token on every node' }).catch(async (e) => {
    const first = missing[0];
    const seen = await Promise.all(nodes.map((n) => n.api('GET', `/v1/connections/${first}/token`).then((r) => `${r.status} ${r.json?.error ?? ''}`)));
    const row = await pg.psql(`SELECT id, state, lease_node FROM connections WHERE name = '${first}'`);
    throw new Error(`${e.message}: ${missing.length} missing or different (${missing.slice(0, 5).join(', ')}); ${first}: ${seen.join(' | ')}; row ${row.trim()}`);
  });
  t.diagnostic(`creates: ${JSON.stringify(statuses)}`);
});

test('a connection revoked on a while c\'s database link is cut is gone from c within seconds after the link returns', { timeout: 120000 }, async (t) => {
  const victim = 'cut-victim';
  const other = 'cut-survivor';
  for (const name of [victim, other]) assert.equal((await create(a, name)).status, 201);
  await waitFor(async () => (await c.api('GET', `/v1/connections/${victim}`)).status === 200 &&
    (await c.api('GET', `/v1/connections/${other}`)).status === 200, { timeoutMs: 20000, what: 'both on c' });
  proxy.cut();
  await sleep(1500);
  const del = await a.api('DELETE', `/v1/connections/${victim}`);
  assert.ok(del.status === 200 || del.status === 204, `revoke: ${del.status} ${del.text}`);
  assert.equal((await a.api('GET', `/v1/connections/${victim}/token`)).status, 404);
  await waitFor(async () => (await b.api('GET', `/v1/connections/${victim}/token`)).status === 404,
    { timeoutMs: 10000, what: 'the delete on b' });
  await sleep(2000);
  // cut off, c still has it (it cannot know)
  assert.equal((await c.api('GET', `/v1/connections/${victim}`)).status, 200, 'c learnt of the delete during the cut');
  proxy.restore();
  const back = Date.now();
  await waitFor(async () => (await c.api('GET', `/v1/connections/${victim}/token`)).status === 404,
    { timeoutMs: 15000, intervalMs: 200, what: 'the revoked connection gone from c after its link returned' });
  const goneAfter = Date.now() - back;
  assert.equal((await c.api('GET', `/v1/connections/${other}`)).status, 200, 'the other connection is still on c');
  t.diagnostic(`the delete reached c ${goneAfter} ms after its link returned`);
});

test('a delete whose tombstone was pruned while c was cut off: c compares what it holds with the table and forgets it', { timeout: 120000 }, async (t) => {
  const victim = 'pruned-victim';
  const other = 'pruned-survivor';
  for (const name of [victim, other]) assert.equal((await create(a, name)).status, 201);
  await waitFor(async () => (await c.api('GET', `/v1/connections/${victim}`)).status === 200 &&
    (await c.api('GET', `/v1/connections/${other}`)).status === 200, { timeoutMs: 20000, what: 'both on c' });
  proxy.cut();
  await sleep(1500);
  const del = await a.api('DELETE', `/v1/connections/${victim}`);
  assert.ok(del.status === 200 || del.status === 204, `revoke: ${del.status} ${del.text}`);
  // as a day's pruning would: the tombstone goes, the horizon passes it
  // (an old build has no tombstones: nothing to prune, the check below fails)
  const pruned = await pg.psql('UPDATE deleted_connections_pruned SET version = (SELECT last_value FROM connections_version); ' +
    'DELETE FROM deleted_connections').then(() => true, (e) => { t.diagnostic(`no tombstones to prune: ${e.message}`); return false; });
  assert.equal((await c.api('GET', `/v1/connections/${victim}`)).status, 200, 'c learnt of the delete during the cut');
  proxy.restore();
  const back = Date.now();
  await waitFor(async () => (await c.api('GET', `/v1/connections/${victim}`)).status === 404,
    { timeoutMs: 20000, intervalMs: 200, what: 'the connection gone from c by the full comparison' });
  const goneAfter = Date.now() - back;
  assert.equal((await c.api('GET', `/v1/connections/${other}`)).status, 200, 'the other connection is still on c');
  assert.ok(await tokenOf(c, 'ida-000'), 'the first test\'s connections are still on c');
  assert.ok(pruned, 'the tombstones were pruned');
  assert.match(c.log(), /Comparing \d+ connections with the database/);
  t.diagnostic(`the full comparison removed it ${goneAfter} ms after the link returned`);
});

test('the same name created on a and b at once: one 201, one clear 409, both nodes end with the winner\'s connection', { timeout: 120000 }, async (t) => {
  const results = [];
  for (let round = 0; round < 3; round++) {
    const name = `same-${round}`;
    const [ra, rb] = await Promise.all([create(a, name), create(b, name)]);
    const codes = [ra.status, rb.status].sort();
    results.push(`${name}: a ${ra.status} b ${rb.status}`);
    assert.deepEqual(codes, [201, 409], `one winner, one clear 409: ${results.join('; ')} (${ra.text} ${rb.text})`);
    const loser = ra.status === 409 ? ra : rb;
    assert.equal(loser.json.error, 'conflict', loser.text);
    assert.match(loser.json.error_description, /another node/, loser.text);
    const rows = (await pg.psql(`SELECT count(*) FROM connections WHERE name = '${name}'`)).trim();
    assert.equal(rows, '1');
    // both end with the winner's connection: the same token on a, b and c
    await waitFor(async () => {
      const toks = await Promise.all(nodes.map((n) => tokenOf(n, name)));
      return toks[0] && toks.every((x) => x === toks[0]);
    }, { timeoutMs: 30000, intervalMs: 250, what: `${name}: the winner's token on every node` });
  }
  t.diagnostic(results.join('; '));
});
