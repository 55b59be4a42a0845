'use strict';
/*
 * [broker] ca_file and connect_to (what every outgoing request trusts and
 * where it connects; used end to end by preset-contracts.test.js):
 * --check-config accepts them, and each malformed value is "file:line:"
 * with a clear message and a non-zero exit.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { BUILD, noteRun } = require('../lib/broker.js');

function check(t, lines) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-egress-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'providers.d'));
  fs.writeFileSync(path.join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
  fs.writeFileSync(path.join(dir, 'not-a-ca.pem'), 'hello\n');
  fs.writeFileSync(path.join(dir, 'providers.d', 'p.conf'),
    '[provider]\ngrant = client_credentials\ntoken_url = https://login.example.com/token\nclient_id = x\nclient_auth = none\n');
  const conf = path.join(dir, 'tb.conf');
  fs.writeFileSync(conf, `[broker]\nstate_dir = state\nsocket = tb.sock\nproviders_dir = providers.d\ncallback_listen = 127.0.0.1:1\n${lines.join('\n')}\n`);
  const r = spawnSync(path.join(BUILD, 'tokenbrokerd'), ['--check-config', '-c', conf], { encoding: 'utf8', timeout: 30000 });
  noteRun('egress check-config', `${r.stdout}${r.stderr}`);
  return { ...r, conf };
}

test('ca_file and connect_to pass --check-config', { timeout: 60000 }, (t) => {
  const r = check(t, ['ca_file = ca.pem', 'connect_to = login.example.com:443:127.0.0.1:8443',
    'connect_to = api.example.com:443:gateway.internal:8443', 'connect_to = ::127.0.0.1:', 'connect_to = [::1]:443:[::1]:9443',
    'connect_to = login.example.com::egress.example.net:']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /OK \(1 provider\)/);
});

test('bad ca_file and connect_to values are file:line errors', { timeout: 60000 }, (t) => {
  const cases = [
    ['ca_file = missing.pem', /ca_file .*missing\.pem: No such file or directory/],
    ['ca_file = not-a-ca.pem', /ca_file .*not-a-ca\.pem: no PEM certificate in it/],
    ['ca_file =', /ca_file must name a PEM file/],
    ['connect_to = login.example.com:443:127.0.0.1', /connect_to must be HOST:PORT:CONNECT-HOST:CONNECT-PORT \(four fields/],
    ['connect_to = login.example.com:443:127.0.0.1:70000', /a port above 65535/],
    ['connect_to = login.example.com:0:127.0.0.1:8443', /port 0/],
    ['connect_to = login/x.example.com:443:127.0.0.1:8443', /a host may hold only/],
    ['connect_to = login.example.com:443::', /no CONNECT-HOST and no CONNECT-PORT/],
    ['connect_to = [::1:443:127.0.0.1:1', /IPv6/],
    ['connect_to = a:443:b:1:extra', /four fields/],
  ];
  for (const [line, want] of cases) {
    const r = check(t, [line]);
    assert.notEqual(r.status, 0, `${line}: accepted`);
    assert.match(r.stderr, new RegExp(`^${r.conf.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:6: `), `${line}: ${r.stderr}`);
    assert.match(r.stderr, want, line);
  }
});
