'use strict';
/*
 * [broker] ca_file and connect_to (what every outgoing request trusts and
 * where it connects; used end to end by preset-contracts.test.js):
 * --check-config accepts them, and each malformed value is "file:line:"
 * with a clear message and a non-zero exit; OIDC discovery at load (a
 * blocking request outside the daemon's HTTP client) goes through both:
 * a provider's issuer on a private CA behind connect_to is discovered,
 * and without ca_file TLS verification refuses it; a reload (SIGHUP)
 * changes where the daemon's own requests go.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const https = require('node:https');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { Broker, BUILD, noteRun, waitFor } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

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

function openssl(args, cwd) {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/* tokenbrokerd --check-config without blocking this process (its HTTPS server answers meanwhile). */
function checkAsync(conf) {
  return new Promise((resolve) => {
    const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['--check-config', '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = { stdout: '', stderr: '' };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 30000);
    p.on('close', (code) => { clearTimeout(timer); noteRun('egress discovery', out.stdout + out.stderr); resolve({ ...out, status: code }); });
  });
}

function makeCa(dir) {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=egress test CA'], dir);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=login.contoso.example'], dir);
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=DNS:login.contoso.example\n');
  openssl(['x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '2', '-extfile', 'ext.cnf'], dir);
}

test('discovery at load goes through ca_file and connect_to', { timeout: 120000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-egress-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  makeCa(dir);
  const issuer = 'https://login.contoso.example';
  let asked = 0;
  const server = https.createServer({ key: fs.readFileSync(path.join(dir, 'srv.key')), cert: fs.readFileSync(path.join(dir, 'srv.pem')) }, (req, res) => {
    asked++;
    assert.equal(req.headers.host, 'login.contoso.example');
    res.writeHead(req.url === '/.well-known/openid-configuration' ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ issuer, authorization_endpoint: `${issuer}/authorize`, token_endpoint: `${issuer}/token` }));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  fs.mkdirSync(path.join(dir, 'providers.d'));
  fs.writeFileSync(path.join(dir, 'providers.d', 'contoso.conf'), `[provider]\nissuer = ${issuer}\nclient_id = x\nclient_auth = none\n`);
  const conf = (extra) => {
    const f = path.join(dir, 'tb.conf');
    fs.writeFileSync(f, `[broker]\nstate_dir = state\nsocket = tb.sock\nproviders_dir = providers.d\ncallback_listen = 127.0.0.1:1\n` +
      `connect_to = login.contoso.example:443:127.0.0.1:${server.address().port}\n${extra}`);
    return f;
  };
  let r = await checkAsync(conf('ca_file = ca.pem\n'));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /contoso\.conf: authorization_code, https:\/\/login\.contoso\.example\/token/);
  assert.equal(asked, 1);
  // the system's CAs do not know this one: discovery fails, no token_url
  r = await checkAsync(conf(''));
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /discovery at https:\/\/login\.contoso\.example failed/);
});

test('a reload changes where the daemon\'s requests go', { timeout: 120000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-egress-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  makeCa(dir);
  const token = `at-egress-${process.pid}-${Date.now()}`;
  recordSecret(token);
  let asked = 0;
  const server = https.createServer({ key: fs.readFileSync(path.join(dir, 'srv.key')), cert: fs.readFileSync(path.join(dir, 'srv.pem')) }, (req, res) => {
    asked++;
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: token, token_type: 'Bearer', expires_in: 3600 }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const b = await Broker.prepare({
    broker: { ca_file: path.join(dir, 'ca.pem') },
    providers: { cc: '[provider]\ngrant = client_credentials\ntoken_url = https://login.contoso.example/token\nclient_id = x\nclient_auth = none\n' },
  });
  t.after(async () => { await b.stop(); });
  b.writeConfig();
  const base = fs.readFileSync(b.confPath, 'utf8');
  // first to a port where nothing listens
  const closed = await new Promise((r) => { const s = require('node:net').createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
  fs.writeFileSync(b.confPath, `${base}connect_to = login.contoso.example:443:127.0.0.1:${closed}\n`);
  await b.launch();
  let r = await b.ctl(['authorize', 'a', '--provider', 'cc']);
  assert.notEqual(r.code, 0, 'no provider there');
  assert.equal(asked, 0);
  fs.writeFileSync(b.confPath, `${base}connect_to = login.contoso.example:443:127.0.0.1:${server.address().port}\n`);
  process.kill(b.proc.pid, 'SIGHUP');
  await waitFor(() => /Reloaded/.test(b.log()), { timeoutMs: 15000, what: 'the reload' });
  r = await b.ctl(['authorize', 'a2', '--provider', 'cc']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(asked, 1);
  const tk = await b.api('GET', '/v1/connections/a2/token');
  assert.equal(tk.json.access_token, token);
});
