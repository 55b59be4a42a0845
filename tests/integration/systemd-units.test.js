'use strict';
/* The unit files: systemd-analyze verify accepts the service and both
 * socket units (each socket must find its service), the sockets pass the
 * names the daemon takes (api, callback) at the addresses of the default
 * configuration, and the sandbox's exposure (systemd-analyze security
 * --offline) is printed and kept low. The units running under a real
 * systemd: zz-boot-nspawn.test.js. */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { BUILD, ROOT } = require('../lib/broker.js');

const UNITS = ['tokenbrokerd.service', 'tokenbrokerd.socket', 'tokenbrokerd-callback.socket'];

/** The units as `make install` writes them (@SBINDIR@ -> the build), in one folder. */
function unitsWithBinary() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-unit-'));
  const paths = {};
  for (const u of UNITS) {
    const text = fs.readFileSync(path.join(ROOT, 'systemd', u), 'utf8').replaceAll('@SBINDIR@', BUILD);
    paths[u] = path.join(dir, u);
    fs.writeFileSync(paths[u], text);
  }
  return { dir, p: paths['tokenbrokerd.service'], paths };
}

/** [Section] Key=value lines of a unit file (comments dropped), as [section, key, value]. */
function settings(file) {
  let section = '';
  const out = [];
  for (const raw of fs.readFileSync(path.join(ROOT, 'systemd', file), 'utf8').split('\n')) {
    const l = raw.trim();
    if (!l || l.startsWith('#') || l.startsWith(';')) continue;
    const s = l.match(/^\[(.+)\]$/);
    if (s) { section = s[1]; continue; }
    const i = l.indexOf('=');
    out.push([section, l.slice(0, i), l.slice(i + 1)]);
  }
  return out;
}
const values = (file, section, key) => settings(file).filter(([s, k]) => s === section && k === key).map(([, , v]) => v);

test('systemd-analyze verify accepts tokenbrokerd.service', () => {
  const { dir, p } = unitsWithBinary();
  const r = spawnSync('systemd-analyze', ['verify', p], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.equal(r.stderr.trim(), '', r.stderr);
});

test('systemd-analyze verify accepts both socket units (and each finds tokenbrokerd.service)', () => {
  const { dir, paths } = unitsWithBinary();
  try {
    for (const u of ['tokenbrokerd.socket', 'tokenbrokerd-callback.socket']) {
      const r = spawnSync('systemd-analyze', ['verify', paths[u]], { encoding: 'utf8' });
      assert.equal(r.status, 0, `${u}: ${r.stderr}${r.stdout}`);
      assert.equal(r.stderr.trim(), '', `${u}: ${r.stderr}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the sockets carry the names and addresses the daemon and its default config expect', () => {
  const conf = fs.readFileSync(path.join(ROOT, 'conf', 'tokenbroker.conf'), 'utf8');
  const confValue = (k) => (conf.match(new RegExp(`^${k}\\s*=\\s*(\\S+)`, 'm')) || [])[1];

  assert.deepEqual(values('tokenbrokerd.socket', 'Socket', 'ListenStream'), [confValue('socket')]);
  assert.deepEqual(values('tokenbrokerd.socket', 'Socket', 'FileDescriptorName'), ['api']);
  assert.deepEqual(values('tokenbrokerd.socket', 'Socket', 'SocketMode'), [confValue('socket_mode')]);
  assert.deepEqual(values('tokenbrokerd-callback.socket', 'Socket', 'ListenStream'), [confValue('callback_listen')]);
  assert.deepEqual(values('tokenbrokerd-callback.socket', 'Socket', 'FileDescriptorName'), ['callback']);
  for (const u of ['tokenbrokerd.socket', 'tokenbrokerd-callback.socket']) {
    assert.deepEqual(values(u, 'Socket', 'Service'), ['tokenbrokerd.service'], u);
    assert.deepEqual(values(u, 'Socket', 'Accept'), [], `${u}: Accept= must stay no`);
  }
  // The service pulls in both and keeps /run/tokenbroker (the socket) when it stops.
  const svc = (k) => values('tokenbrokerd.service', 'Service', k);
  const unit = (k) => values('tokenbrokerd.service', 'Unit', k).join(' ').split(/\s+/);
  for (const s of ['tokenbrokerd.socket', 'tokenbrokerd-callback.socket']) {
    assert.ok(unit('Requires').includes(s), `Requires=${s}`);
    assert.ok(unit('After').includes(s), `After=${s}`);
  }
  assert.deepEqual(svc('RuntimeDirectoryPreserve'), ['yes']);
  assert.deepEqual(svc('Type'), ['notify']);
  assert.deepEqual(svc('WatchdogSec'), ['30s']);
  assert.deepEqual(svc('Restart'), ['on-failure']);
  assert.deepEqual(svc('PrivateUsers'), [], 'PrivateUsers= would hide the peers\' uids from SO_PEERCRED');
});

test('the service sandbox exposure is at most 1.5', () => {
  const { dir, p } = unitsWithBinary();
  const r = spawnSync('systemd-analyze', ['security', '--offline=yes', p], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  const m = (r.stdout + r.stderr).match(/Overall exposure level for \S+: ([0-9.]+)/);
  assert.ok(m, r.stdout + r.stderr);
  console.log(`# systemd-analyze security exposure: ${m[1]}`);
  assert.ok(Number(m[1]) <= 1.5, `exposure ${m[1]} > 1.5`);
});
