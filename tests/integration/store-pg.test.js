'use strict';
/*
 * The PostgreSQL side of the store (issue 10) against a real PostgreSQL 15:
 * a throwaway cluster (tests/lib/pg.js) for each C test binary of
 * tests/pg/, built into the build folder under test (plain and ASan+UBSan).
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

const BINARIES = [
  ['test-pg-db', 'daemon/pg.c: connect errors, migrations under the advisory lock, binary values, lost sessions', 7],
  ['test-store-pg', 'the store on PostgreSQL: every field, sealed at rest, the key, the writer, lost sessions, nodes opening at once', 9],
];

for (const [name, what, atLeast] of BINARIES) {
  test(`${what} (PostgreSQL 15)`, { timeout: 180000 }, async (t) => {
    const pg = await Postgres.start({ fsync: false });
    t.after(() => pg.destroy());
    const bin = path.join(BUILD, 'pg-tests', name);
    assert.ok(fs.existsSync(bin), `${bin} is not built (make)`);
    const r = await runBinary(bin, {
      TB_PG_URI: `postgresql://tokenbroker@127.0.0.1:${pg.port}/`,
      TB_PG_PASSWORD_FILE: pg.passwordFile,
    }, 150000);
    noteRun(name, r.out);
    const last = r.out.trim().split('\n').pop();
    const m = /^(\d+) passed, (\d+) failed$/.exec(last);
    assert.ok(m, `no summary line from ${name} (exit ${r.code ?? r.signal}):\n${r.out.slice(-3000)}`);
    assert.equal(Number(m[2]), 0, `${name} failed:\n${r.out.slice(-3000)}`);
    assert.ok(Number(m[1]) >= atLeast, `only ${m[1]} tests ran`);
    assert.equal(r.code, 0, r.out.slice(-3000));
  });
}
