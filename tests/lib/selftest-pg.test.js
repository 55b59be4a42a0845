'use strict';
/* The throwaway PostgreSQL cluster (tests/lib/pg.js) the HA tests stand
 * on: it starts on loopback with password authentication, keeps its data
 * over a restart, and is gone (process and files) when destroyed. */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const { Postgres, PGBIN } = require('./pg.js');

function alive(pid) {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

test('a throwaway PostgreSQL 15: password auth on 127.0.0.1, data kept over a restart, gone after destroy', { timeout: 120000 }, async (t) => {
  const pg = await Postgres.start({ fsync: false });
  t.after(() => pg.destroy());
  assert.match(await pg.psql('SHOW server_version'), /^15\./);
  assert.equal((await pg.psql('SHOW listen_addresses')).trim(), '127.0.0.1');
  assert.equal((await pg.psql('SELECT current_user')).trim(), 'tokenbroker');
  assert.equal(fs.statSync(pg.passwordFile).mode & 0o777, 0o600);
  assert.equal(fs.readFileSync(pg.passwordFile, 'utf8').trim(), pg.password);

  // Without the password, or with another, the server refuses.
  const wrong = spawnSync(path.join(PGBIN, 'psql'), ['-X', '-h', '127.0.0.1', '-p', String(pg.port), '-U', 'tokenbroker',
    '-d', 'tokenbroker', '-c', 'SELECT 1'], { encoding: 'utf8', env: { ...process.env, PGPASSWORD: 'not-the-password' } });
  assert.notEqual(wrong.status, 0);
  assert.match(wrong.stderr, /password authentication failed/);

  await pg.psql('CREATE TABLE t (v text); INSERT INTO t VALUES (\'kept\')');
  const before = pg.pid;
  await pg.restart();
  assert.notEqual(pg.pid, before);
  assert.equal(alive(before), false, 'the first postmaster still runs after restart');
  assert.equal((await pg.psql('SELECT v FROM t')).trim(), 'kept');

  const pid = pg.pid;
  const dir = pg.dir;
  await pg.destroy();
  assert.equal(alive(pid), false, 'the postmaster still runs after destroy');
  assert.equal(fs.existsSync(dir), false, 'the data directory is still there');
});
