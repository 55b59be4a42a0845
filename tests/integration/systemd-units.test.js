'use strict';
/* The unit files: systemd-analyze verify accepts them, and the sandbox's
 * exposure (systemd-analyze security --offline) is printed and kept low. */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { BUILD, ROOT } = require('../lib/broker.js');

function unitWithBinary() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-unit-'));
  const text = fs.readFileSync(path.join(ROOT, 'systemd', 'tokenbrokerd.service'), 'utf8')
    .replaceAll('@SBINDIR@', BUILD);
  const p = path.join(dir, 'tokenbrokerd.service');
  fs.writeFileSync(p, text);
  return { dir, p };
}

test('systemd-analyze verify accepts tokenbrokerd.service', () => {
  const { dir, p } = unitWithBinary();
  const r = spawnSync('systemd-analyze', ['verify', p], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.equal(r.stderr.trim(), '', r.stderr);
});

test('the service sandbox exposure is at most 2.0', () => {
  const { dir, p } = unitWithBinary();
  const r = spawnSync('systemd-analyze', ['security', '--offline=yes', p], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  const m = (r.stdout + r.stderr).match(/Overall exposure level for \S+: ([0-9.]+)/);
  assert.ok(m, r.stdout + r.stderr);
  console.log(`# systemd-analyze security exposure: ${m[1]}`);
  assert.ok(Number(m[1]) <= 2.0, `exposure ${m[1]} > 2.0`);
});
