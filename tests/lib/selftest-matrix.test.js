'use strict';
/* The store matrix of the harness (tests/lib/broker.js, TB_STORE): under
 * TB_STORE=postgresql a Broker gets a database of its own on the file's
 * one cluster and b.sql()/dumpStore() read it; opts.store = 'sqlite' keeps
 * SQLite; a daemon that would run on SQLite all the same is refused at
 * launch, not silently accepted. */
process.env.TB_STORE = 'postgresql';   // read when broker.js loads
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');

const { Broker, STORE } = require('./broker.js');

test('TB_STORE=postgresql: a database per Broker on one cluster, rows read through the harness; opts.store sqlite stays on SQLite', { timeout: 120000 }, async (t) => {
  assert.equal(STORE, 'postgresql');
  const a = await Broker.start();
  const b = await Broker.start();
  const s = await Broker.start({ store: 'sqlite' });
  t.after(async () => { await a.stop(); await b.stop(); await s.stop(); });

  for (const x of [a, b]) {
    assert.equal(x.storeEngine, 'postgresql');
    assert.equal((await x.api('GET', '/v1/status')).json.store.engine, 'postgresql');
    assert.match(x.storeName, /^postgresql:\/\/tokenbroker@127\.0\.0\.1:\d+\/tb_\d+_\d+$/);
    assert.equal(fs.existsSync(x.db), false, 'a SQLite file beside a PostgreSQL store');
  }
  assert.equal(a.pg, b.pg, 'one cluster per test file');
  assert.notEqual(a.pgDb, b.pgDb, 'a database per Broker');

  // A row made through a's API is in a's database, not in b's.
  const r = await a.api('POST', '/v1/connections', { name: 'only-a', provider: 'nosuch' });
  assert.equal(r.status, 404, r.text);   // no provider: refused, but an admin event
  await a.api('GET', '/v1/events?limit=1');
  assert.ok(a.sql("SELECT count(*) AS n FROM events WHERE kind = 'admin'")[0].n >= 1);
  assert.equal(b.sql("SELECT count(*) AS n FROM events WHERE kind = 'admin'")[0].n, 0);
  assert.deepEqual(await a.storeQuery('SELECT count(*) AS n FROM connections'), [{ n: 0 }]);
  assert.equal(a.dumpStore(), '');

  assert.equal(s.storeEngine, 'sqlite');
  assert.equal((await s.api('GET', '/v1/status')).json.store.engine, 'sqlite');
  assert.equal(fs.existsSync(s.db), true);
  assert.equal(s.storeName, s.db);
});

test('a daemon on SQLite where the matrix asked for PostgreSQL fails its launch', { timeout: 120000 }, async (t) => {
  const b = await Broker.prepare();
  t.after(() => b.stop());
  b.writeConfig();
  // What a fallback would look like: the config without the store keys.
  const conf = fs.readFileSync(b.confPath, 'utf8');
  assert.match(conf, /^store = postgresql:/m);
  fs.writeFileSync(b.confPath, conf.replace(/^store(_password_file)? = .*\n/mg, ''));
  await assert.rejects(b.launch(), /TB_STORE=postgresql, but \/v1\/status says the store is "sqlite"/);
});
