'use strict';
/*
 * Issue 11, against a hostile neighbour on the same machine and a hostile
 * provider (findings 6, 7, 8, 10, 11 and the socket's chown):
 *  - started with umask 022, the database, its -wal and -shm are the
 *    daemon's alone; a state_dir with group/other access and a socket
 *    directory others may write to are refused with the path and the fix;
 *  - notify_command gets stdin, stdout and stderr and no other descriptor
 *    (not curl's keep-alive socket to the provider, not its socketpair);
 *  - an identity of 300 'é' is cut between characters in its event, and
 *    the events API and tokenctl events keep working;
 *  - a callback error with CR, LF and ESC reaches the log, the page and
 *    the terminal escaped: no forged log line;
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');

const { Broker, BUILD, followAuthorize, httpGet, iniProvider, waitFor, noteRun } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

// What a daemon started from a login shell gets: its files must not follow it.
process.umask(0o022);

async function activate(b, name, provider = 'fake') {
  const r = await b.api('POST', '/v1/connections', { name, provider });
  assert.ok(r.status === 201 || r.status === 200, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
}

/** Runs the daemon on b's config, expecting it to fail; resolves {code, signal, log}. */
function startFailing(b) {
  return new Promise((resolve, reject) => {
    const e = { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' };
    delete e.NOTIFY_SOCKET;
    delete e.LISTEN_FDS;
    delete e.LISTEN_PID;
    const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', b.confPath], { stdio: ['ignore', 'pipe', 'pipe'], env: e });
    let log = '';
    p.stdout.on('data', (d) => { log += d; });
    p.stderr.on('data', (d) => { log += d; });
    const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`tokenbrokerd did not exit:\n${log}`)); }, 20000);
    p.on('close', (code, signal) => { clearTimeout(timer); noteRun('failing-start', log); resolve({ code, signal, log }); });
  });
}

test('under umask 022 the database, -wal and -shm are private; an open state_dir or socket dir is refused', { timeout: 120000 }, async (t) => {
  const fp = await startFakeProvider();
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'local-hardening-secret-1' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  await activate(b, 'w');
  const refreshed = await b.api('POST', '/v1/connections/w/refresh');
  assert.equal(refreshed.status, 200, refreshed.text);
  for (const f of ['', '-wal', '-shm']) {
    const p = `${b.db}${f}`;
    assert.ok(fs.existsSync(p), `${p} is missing`);
    assert.equal(fs.statSync(p).mode & 0o077, 0, `${p} is mode ${(fs.statSync(p).mode & 0o777).toString(8)}`);
  }
  await b.kill('SIGTERM');

  // A state_dir someone made 0755: refused, naming it and the fix.
  const state = path.dirname(b.db);
  fs.chmodSync(state, 0o755);
  let r = await startFailing(b);
  assert.notEqual(r.code, 0, r.log);
  assert.ok(r.log.includes(`State directory '${state}' is accessible by group or others (mode 0755)`), r.log);
  assert.ok(r.log.includes(`chmod 0700 ${state}`), r.log);
  fs.chmodSync(state, 0o700);

  // A socket directory others may write to: they could swap the socket.
  const run = path.join(b.dir, 'run');
  fs.mkdirSync(run);
  fs.chmodSync(run, 0o777);
  const conf = fs.readFileSync(b.confPath, 'utf8').replace(/^socket = .*$/m, 'socket = run/tb.sock');
  fs.writeFileSync(b.confPath, conf);
  r = await startFailing(b);
  assert.notEqual(r.code, 0, r.log);
  assert.ok(r.log.includes(`Socket directory '${run}' is writable by group or others (mode 0777)`), r.log);
  // One the daemon makes itself stays reachable for clients of other users.
  fs.rmdirSync(run);
  b.socket = path.join(run, 'tb.sock');
  await b.launch();
  assert.equal(fs.statSync(run).mode & 0o777, 0o755);
  assert.equal((await b.api('GET', '/v1/connections/w')).json.state, 'active');
});

test('notify_command inherits no descriptor but stdin, stdout and stderr', { timeout: 120000 }, async (t) => {
  const fp = await startFakeProvider();
  const b = await Broker.prepare();
  const out = path.join(b.dir, 'fds.txt');
  const script = path.join(b.dir, 'notify.sh');
  fs.writeFileSync(script, `#!/bin/sh\nls -l /proc/self/fd > ${out}.tmp 2>&1\nmv ${out}.tmp ${out}\n`, { mode: 0o755 });
  b.opts = {
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'local-hardening-secret-2' },
    broker: { notify_command: script },
  };
  b.writeConfig();
  await b.launch();
  t.after(async () => { await b.stop(); await fp.close(); });

  await activate(b, 'n');
  // The refused refresh leaves curl a keep-alive connection to the provider.
  fp.respond = (req) => (req.path === '/token' ? { status: 400, body: { error: 'invalid_grant' } } : null);
  assert.equal((await b.api('POST', '/v1/connections/n/refresh')).status, 409);
  await waitFor(() => fs.existsSync(out), { timeoutMs: 10000, what: 'the notify_command listing' });
  const lines = fs.readFileSync(out, 'utf8').split('\n').filter((l) => / -> /.test(l));
  // ls's own descriptor on /proc/self/fd is the one that is not inherited.
  const fds = lines.filter((l) => !/-> \/proc\/\d+\/fd$/.test(l)).map((l) => Number(l.split(' -> ')[0].trim().split(/\s+/).pop()));
  assert.deepEqual(fds.sort((x, y) => x - y), [0, 1, 2], `inherited:\n${lines.join('\n')}`);
});

const rnd = () => require('node:crypto').randomBytes(12).toString('hex');
function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
}

test('an identity of 300 é: events are cut between characters, GET /v1/events and tokenctl events work', { timeout: 120000 }, async (t) => {
  const fp = await startFakeProvider();
  const email = `${'é'.repeat(300)}@example.org`;
  fp.respond = (rec) => (rec.path === '/token' && rec.params.grant_type === 'authorization_code'
    ? { body: { access_token: `a-${rnd()}`, refresh_token: `r-${rnd()}`, token_type: 'Bearer', expires_in: 900, id_token: jwt({ sub: 's1', email }) } }
    : null);
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'local-hardening-secret-3' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  await activate(b, 'long');
  assert.equal((await b.api('GET', '/v1/connections/long')).json.identity, email);
  const ev = await b.api('GET', '/v1/events?connection=long');
  assert.equal(ev.status, 200, ev.text);
  const authorized = ev.json.events.find((e) => e.kind === 'authorized');
  assert.ok(authorized, ev.text);
  assert.ok(!authorized.message.includes('\ufffd'), 'a character was cut in two');
  assert.match(authorized.message, /^authorized by (é)+$/);
  const all = await b.api('GET', '/v1/events');
  assert.equal(all.status, 200, all.text);
  let ctl = await b.ctl(['events']);
  assert.equal(ctl.code, 0, ctl.stderr);
  assert.match(ctl.stdout, /authorized by é/);

  // A row an older version cut inside a character (and one with an ESC):
  // the listing still answers, with U+FFFD and the escape.
  await b.kill('SIGTERM');
  const { spawnSync } = require('node:child_process');
  const ins = spawnSync('sqlite3', [b.db, "INSERT INTO events (at, connection, kind, message) VALUES (1, 'long', 'authorized', CAST(X'61757468c3' AS TEXT) || char(27) || '[2J')"], { encoding: 'utf8' });
  assert.equal(ins.status, 0, ins.stderr);
  await b.launch();
  const old = await b.api('GET', '/v1/events?connection=long');
  assert.equal(old.status, 200, old.text);
  assert.ok(old.json.events.some((e) => e.message === 'auth\ufffd\\e[2J'), old.text);
  ctl = await b.ctl(['events', 'long']);
  assert.equal(ctl.code, 0, ctl.stderr);
  assert.ok(!ctl.stdout.includes('\x1b'), ctl.stdout);
});

test('a callback error with CR, LF and ESC forges no log line and no terminal escape', { timeout: 120000 }, async (t) => {
  const fp = await startFakeProvider();
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'local-hardening-secret-4' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  const r = await b.api('POST', '/v1/connections', { name: 'inj', provider: 'fake' });
  assert.equal(r.status, 201, r.text);
  const state = new URL(r.json.authorize_url).searchParams.get('state');
  const forged = 'access_denied\r\ntokenbrokerd[1]: error: FORGED-LINE \x1b[2J\x1b]0;pwned\x07';
  const cb = await httpGet(`${b.redirectUriFor('fake')}?state=${encodeURIComponent(state)}&error=${encodeURIComponent(forged)}&error_description=${encodeURIComponent('line1\nFORGED-DESC\x1b[31m')}`);
  assert.equal(cb.status, 400);
  await waitFor(() => b.log().includes('provider refused the authorization'), { timeoutMs: 5000, what: 'the log line' });
  const log = b.log();
  assert.ok(!/^tokenbrokerd\[1\]: error: FORGED-LINE/m.test(log) && !/^FORGED-DESC/m.test(log), 'a forged log line');
  assert.ok(!log.includes('\x1b') && !log.includes('\r') && !log.includes('\x07'), 'a raw control character reached the log');
  assert.ok(log.includes('access_denied\\r\\ntokenbrokerd[1]: error: FORGED-LINE \\e[2J\\e]0;pwned\\x07'), log);
  assert.ok(!cb.text.includes('\x1b'), 'a raw ESC in the callback page');
  const ctl = await b.ctl(['events']);
  assert.equal(ctl.code, 0, ctl.stderr);
  assert.ok(!ctl.stdout.includes('\x1b') && !ctl.stdout.includes('\r'), ctl.stdout);
});

test('a secret in a file group or others can read: a warning naming the file, an error under strict = true', { timeout: 120000 }, async (t) => {
  const { spawnSync } = require('node:child_process');
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'tb-secret-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pdir = path.join(dir, 'providers.d');
  fs.mkdirSync(pdir);
  const conf = path.join(dir, 'tb.conf');
  const base = '[broker]\nstate_dir = state\nsocket = tb.sock\nproviders_dir = providers.d\ncallback_listen = 127.0.0.1:1\n';
  const provider = (secretLine) => ['[provider]', 'authorize_url = https://id.example.com/authorize',
    'token_url = https://id.example.com/token', 'client_id = abc', secretLine].join('\n') + '\n';
  const inline = path.join(pdir, 'inline.conf');
  const filed = path.join(pdir, 'filed.conf');
  fs.mkdirSync(path.join(dir, 'secrets'));
  const secretFile = path.join(dir, 'secrets', 'filed');
  fs.writeFileSync(inline, provider('client_secret = made-up-inline'), { mode: 0o644 });
  fs.chmodSync(inline, 0o644);
  fs.writeFileSync(filed, provider('client_secret_file = ../secrets/filed'), { mode: 0o600 });
  fs.writeFileSync(secretFile, 'made-up-filed\n', { mode: 0o640 });
  fs.chmodSync(secretFile, 0o640);
  const check = () => {
    const r = spawnSync(path.join(BUILD, 'tokenbrokerd'), ['--check-config', '-c', conf],
      { encoding: 'utf8', timeout: 30000, env: { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' } });
    noteRun('check-config secrets', `${r.stdout}${r.stderr}`);
    return r;
  };

  fs.writeFileSync(conf, base);
  let r = check();
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /OK \(2 providers, 2 warnings\)/);
  assert.ok(r.stderr.includes(`${inline}:5: warning: '${inline}' is readable by group or others (mode 0644) and holds a secret (client_secret)`), r.stderr);
  assert.ok(r.stderr.includes(`${filed}:5: warning: '${secretFile}' is readable by group or others (mode 0640) and holds a secret (client_secret_file)`), r.stderr);

  // strict = true: refused, naming the file.
  fs.writeFileSync(conf, `${base}strict = true\n`);
  r = check();
  assert.notEqual(r.status, 0, r.stdout);
  assert.match(r.stderr, /is readable by group or others \(mode 06[04]0\) and holds a secret .*refused under strict = true/);

  // Private files: no warning, strict or not.
  fs.chmodSync(inline, 0o600);
  fs.chmodSync(secretFile, 0o600);
  r = check();
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /OK \(2 providers\)/);
  assert.equal(r.stderr, '');
});
