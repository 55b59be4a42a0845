'use strict';
/*
 * The PostgreSQL side of the store (issue 10) against a real PostgreSQL 15:
 * a throwaway cluster (tests/lib/pg.js) and the C tests of tests/pg/,
 * built into the build folder under test (plain and ASan+UBSan).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { BUILD, noteRun } = require('../lib/broker.js');
const { Postgres } = require('../lib/pg.js');

function runBinary(bin, env, timeoutMs) {
  return new Promise((resolve) => {
    const p = spawn(bin, [], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out });
    });
  });
}

test('daemon/pg.c against PostgreSQL 15: connect errors, migrations under the advisory lock, binary values, lost sessions', { timeout: 180000 }, async (t) => {
  const pg = await Postgres.start({ fsync: false });
  t.after(() => pg.destroy());
  const bin = path.join(BUILD, 'pg-tests', 'test-pg-db');
  assert.ok(fs.existsSync(bin), `${bin} is not built (make)`);
  const r = await runBinary(bin, {
    TB_PG_URI: `postgresql://tokenbroker@127.0.0.1:${pg.port}/`,
    TB_PG_PASSWORD_FILE: pg.passwordFile,
  }, 120000);
  noteRun('test-pg-db', r.out);
  const last = r.out.trim().split('\n').pop();
  const m = /^(\d+) passed, (\d+) failed$/.exec(last);
  assert.ok(m, `no summary line from test-pg-db (exit ${r.code ?? r.signal}):\n${r.out.slice(-3000)}`);
  assert.equal(Number(m[2]), 0, `test-pg-db failed:\n${r.out.slice(-3000)}`);
  assert.ok(Number(m[1]) >= 7, `only ${m[1]} tests ran`);
  assert.equal(r.code, 0, r.out.slice(-3000));
});
