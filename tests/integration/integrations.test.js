'use strict';
/*
 * Integrations people already use (issue 13, "must show" 4), against a
 * running broker and the fake provider:
 *
 *  - tokenctl exec: the token in $VAR of the command (never its argv), the
 *    command replaces tokenctl (same PID, its exit status), --env,
 *    --min-ttl, words after -- left to the command, clear errors;
 *  - tokenctl git-credential through `git credential fill` configured to
 *    use it: per-forge usernames, --map with paths, unknown host and
 *    plain http answered with nothing, erase invalidates only the
 *    broker's current token;
 *  - the msmtp / mbsync / offlineimap command lines of the README, as
 *    written there, print the token;
 *  - examples/ in Python, Go and Node fetch a token over the socket and
 *    call an API with it, and call the same API through the daemon's proxy
 *    route (the provider's api_url is the fake provider's origin).
 *
 * Tokens are compared by SHA-256, never printed.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { recordSecret } = require('../lib/suite.js');

recordSecret('fake-secret-integr-K2');
const { Broker, waitFor, sleep, followAuthorize, iniProvider, BUILD, ROOT } = require('../lib/broker.js');

const TIMEOUT = 180000;
const sha = (s) => crypto.createHash('sha256').update(s).digest('hex');

let fp, b, tmp;

/* Runs a program; resolves {code, signal, stdout, stderr, pid}. */
function run(cmd, args, { env = {}, input = '', timeoutMs = 60000, cwd } = {}) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const out = { stdout: '', stderr: '', code: null, signal: null, pid: p.pid };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    p.stdin.on('error', () => {});
    p.stdin.end(input);
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => { out.stderr += String(e); });
    p.on('close', (code, signal) => { clearTimeout(timer); out.code = code; out.signal = signal; resolve(out); });
  });
}

const CTL = path.join(BUILD, 'tokenctl');
const ctl = (args, o = {}) => run(CTL, ['--socket', b.socket, ...args], o);

/* The token the daemon hands out now, straight from the socket. */
async function tokenOf(name) {
  const r = await b.api('GET', `/v1/connections/${name}/token`);
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

async function authorizeActive(name) {
  const auth = b.ctlAsync(['authorize', name, '--provider', 'fake', '--timeout', '30']);
  const url = await waitFor(() => (auth.stdout.match(/^\s+(http\S+)$/m) || [])[1], { what: `authorize URL of ${name}` });
  await followAuthorize(url);
  await auth.done;
  assert.equal(auth.code, 0, auth.stderr);
}

test.before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-integr-'));
  fp = await startFakeProvider({
    expiresIn: 3600,
    respond: (rec) => (rec.path === '/api/me' ? { status: 200, body: { login: 'octocat' } } : null),
  });
  b = await Broker.start({ providers: { fake: iniProvider(fp.providerConf({ api_url: fp.base })) }, secrets: { 'fake.secret': 'fake-secret-integr-K2' } });
  for (const n of ['gh', 'gh-acme', 'gitlab', 'mail']) await authorizeActive(n);
});

test.after(async () => {
  const st = b && await b.stop();
  if (fp) await fp.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
});

// ---- tokenctl exec ---------------------------------------------------------

test('exec: the token in $TOKENBROKER_ACCESS_TOKEN, same PID, the exit status passed through', { timeout: TIMEOUT }, async () => {
  const tok = await tokenOf('gh');
  const r = await ctl(['exec', 'gh', '--', 'sh', '-c',
    'printf "%s" "$TOKENBROKER_ACCESS_TOKEN" | sha256sum; echo "pid=$$"; tr "\\0" " " < /proc/$$/cmdline; echo; exit 42']);
  assert.equal(r.code, 42, r.stderr);
  assert.equal(r.stderr, '');
  const [hash, pidLine, cmdline] = r.stdout.split('\n');
  assert.equal(hash.split(' ')[0], sha(tok), 'the command got the token the daemon hands out');
  assert.equal(pidLine, `pid=${r.pid}`, 'exec, not fork: the command runs as tokenctl\'s PID');
  assert.ok(!cmdline.includes(tok), 'the token is not on the command line');
});

test('exec: --env names the variable; the default one stays unset', { timeout: TIMEOUT }, async () => {
  const tok = await tokenOf('gh');
  const r = await ctl(['exec', 'gh', '--env', 'GH_TOKEN', '--', 'sh', '-c',
    'printf "%s" "$GH_TOKEN" | sha256sum; echo "default=${TOKENBROKER_ACCESS_TOKEN-unset}"'],
  { env: { TOKENBROKER_ACCESS_TOKEN: '' } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.split(' ')[0], sha(tok));
  assert.match(r.stdout, /^default=$/m, 'the inherited empty value is left as it was');
  const r2 = await ctl(['exec', 'gh', '--env=MY_TOK', 'sh', '-c', 'test -n "$MY_TOK" && echo set']);
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(r2.stdout, 'set\n', 'without --, the command starts after NAME');
});

test('exec: words after -- are the command\'s, --help and --json included', { timeout: TIMEOUT }, async () => {
  const r = await ctl(['exec', 'gh', '--', 'sh', '-c', 'echo "$1 $2"', 'x', '--help', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, '--help --json\n');
});

test('exec: --min-ttl beyond the provider\'s lifetime warns and still runs the command', { timeout: TIMEOUT }, async () => {
  const r = await ctl(['exec', 'gh', '--min-ttl', '7200', '--', 'sh', '-c', 'test -n "$TOKENBROKER_ACCESS_TOKEN"; exit $?']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /warning: the token of 'gh' expires in \d+ s, less than --min-ttl 7200/);
});

test('exec: clear errors, and the command does not run without a token', { timeout: TIMEOUT }, async () => {
  const marker = path.join(tmp, 'ran');
  let r = await ctl(['exec', 'nosuch', '--', 'touch', marker]);
  assert.equal(r.code, 4);
  assert.match(r.stderr, /no connection named 'nosuch'/);
  assert.ok(!fs.existsSync(marker), 'the command ran without a token');
  r = await ctl(['exec', 'gh', '--', path.join(tmp, 'no-such-program')]);
  assert.equal(r.code, 127);
  assert.match(r.stderr, /cannot run '.*no-such-program': No such file or directory/);
  r = await ctl(['exec', 'gh', '--env', '1BAD', '--', 'true']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--env takes an environment variable name/);
  r = await ctl(['exec', 'gh', '--min-ttl', 'soon', '--', 'true']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--min-ttl takes whole seconds/);
  r = await ctl(['exec', 'gh', '--']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /usage: tokenctl exec NAME/);
  r = await ctl(['exec', 'gh', '--frobnicate', '--', 'true']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown option '--frobnicate'/);
});

test('exec and git-credential as a user not on the ACL: exit 7, no command run, nothing for git', { timeout: TIMEOUT }, async () => {
  // mkdtemp made the broker's directory 0700; the socket itself is 0666
  fs.chmodSync(b.dir, 0o755);
  const asNobody = (args, input = '') => run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--',
    CTL, '--socket', b.socket, ...args], { input, env: { HOME: '/' } });
  const marker = path.join(os.tmpdir(), `tb-integr-nobody-${process.pid}`);
  let r = await asNobody(['exec', 'gh', '--', 'sh', '-c', `touch ${marker}`]);
  assert.equal(r.code, 7, r.stderr);
  assert.match(r.stderr, /not allowed|denied|forbidden/i);
  assert.ok(!fs.existsSync(marker), 'the command ran without a token');
  r = await asNobody(['git-credential', '--connection', 'gh', 'get'], 'protocol=https\nhost=github.com\n\n');
  assert.equal(r.code, 7, r.stderr);
  assert.equal(r.stdout, '');
});

// ---- git credential helper -------------------------------------------------

/* `git credential fill` with only the given helper configuration: no
 * system or global config, no terminal prompt. */
function gitFill(config, input, { action = 'fill' } = {}) {
  const home = path.join(tmp, 'home');
  fs.mkdirSync(home, { recursive: true });
  const args = ['-c', 'credential.helper='];
  for (const [k, v] of Object.entries(config)) args.push('-c', `${k}=${v}`);
  return run('git', [...args, 'credential', action], {
    input,
    env: {
      HOME: home, XDG_CONFIG_HOME: home, GIT_CONFIG_NOSYSTEM: '1', GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: '',
      SSH_ASKPASS: '', PATH: `${BUILD}:${process.env.PATH}`, TOKENBROKER_SOCKET: b.socket,
    },
  });
}

const kv = (text) => Object.fromEntries(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));

test('git credential fill: a per-host helper answers x-access-token and the token for github.com', { timeout: TIMEOUT }, async () => {
  const tok = await tokenOf('gh');
  const r = await gitFill({ 'credential.https://github.com.helper': '!tokenctl git-credential --connection gh' },
    'protocol=https\nhost=github.com\npath=octo/repo.git\n\n');
  assert.equal(r.code, 0, r.stderr);
  const o = kv(r.stdout);
  assert.equal(o.protocol, 'https');
  assert.equal(o.host, 'github.com');
  assert.equal(o.username, 'x-access-token');
  assert.equal(sha(o.password ?? ''), sha(tok), 'the password is the broker\'s token');
});

test('git credential fill: --map picks the connection by host and path; forge usernames; --username', { timeout: TIMEOUT }, async () => {
  const helper = '!tokenctl git-credential --map github.com=gh --map GitHub.com/acme=gh-acme --map gitlab.com=gitlab ' +
    '--map bitbucket.org=gh --map git.example.org:8443=gitlab';
  const cfg = { 'credential.helper': helper, 'credential.useHttpPath': 'true' };
  const cases = [
    ['github.com', 'octo/repo.git', 'gh', 'x-access-token'],
    ['github.com', 'acme/repo.git', 'gh-acme', 'x-access-token'],
    ['github.com', 'acme', 'gh-acme', 'x-access-token'],
    ['github.com', 'acmecorp/repo.git', 'gh', 'x-access-token'],
    ['gitlab.com', 'group/project.git', 'gitlab', 'oauth2'],
    ['bitbucket.org', 'team/repo.git', 'gh', 'x-token-auth'],
    ['git.example.org:8443', 'x/y.git', 'gitlab', 'oauth2'],
  ];
  for (const [host, p, conn, user] of cases) {
    const r = await gitFill(cfg, `protocol=https\nhost=${host}\npath=${p}\n\n`);
    assert.equal(r.code, 0, `${host}/${p}: ${r.stderr}`);
    const o = kv(r.stdout);
    assert.equal(o.username, user, `${host}/${p}`);
    assert.equal(sha(o.password ?? ''), sha(await tokenOf(conn)), `${host}/${p} -> ${conn}`);
  }
  // the expiry for git 2.41+ (git 2.39 drops the key from fill's output: ask the helper itself)
  const h = await ctl(['git-credential', '--connection', 'gh', 'get'], { input: 'protocol=https\nhost=github.com\n\n' });
  assert.equal(h.code, 0, h.stderr);
  const exp = kv(h.stdout).password_expiry_utc ?? '';
  assert.match(exp, /^\d+$/);
  assert.ok(Math.abs(Number(exp) - (Date.now() / 1000 + 3600)) < 120, `expiry in about an hour: ${exp}`);
  const r = await gitFill({ 'credential.helper': '!tokenctl git-credential --username robot --map gitlab.com=gitlab' },
    'url=https://someone@gitlab.com/group/project.git\n\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(kv(r.stdout).username, 'robot');
});

test('git-credential: an unknown host or plain http gets nothing, exit 0; git falls back', { timeout: TIMEOUT }, async () => {
  const helperArgs = ['git-credential', '--map', 'github.com=gh'];
  for (const input of ['protocol=https\nhost=example.com\n\n', 'protocol=http\nhost=github.com\n\n',
    'protocol=https\nhost=github.com.evil.org\n\n', 'host=github.com\n\n']) {
    const r = await ctl([...helperArgs, 'get'], { input });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '', `nothing for ${JSON.stringify(input)}`);
    assert.equal(r.stderr, '');
  }
  // git itself then has no password and may not prompt: it fails
  const g = await gitFill({ 'credential.helper': '!tokenctl git-credential --map github.com=gh' },
    'protocol=https\nhost=example.com\n\n');
  assert.notEqual(g.code, 0);
  assert.doesNotMatch(g.stdout, /password=/);
  // --allow-http: the local forge without TLS
  const r = await ctl(['git-credential', '--allow-http', '--connection', 'gh', 'get'], { input: 'protocol=http\nhost=127.0.0.1:3000\n\n' });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(kv(r.stdout).username, 'oauth2');
});

test('git-credential: errors on stderr with token\'s exit codes, nothing on stdout; bad usage', { timeout: TIMEOUT }, async () => {
  let r = await ctl(['git-credential', '--connection', 'nosuch', 'get'], { input: 'protocol=https\nhost=github.com\n\n' });
  assert.equal(r.code, 4);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /no connection named 'nosuch'/);
  r = await run(CTL, ['--socket', path.join(tmp, 'no.sock'), 'git-credential', '--connection', 'gh', 'get'],
    { input: 'protocol=https\nhost=github.com\n\n' });
  assert.equal(r.code, 3);
  assert.equal(r.stdout, '');
  r = await ctl(['git-credential', 'get'], { input: '' });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /needs --connection NAME or --map HOST=NAME/);
  r = await ctl(['git-credential', '--map', 'github.com', 'get'], { input: '' });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--map takes HOST\[\/PATH\]=NAME/);
  r = await ctl(['git-credential', '--connection', 'gh', 'approve'], { input: '' });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /get\|store\|erase/);
  r = await ctl(['git-credential', '--connection', 'gh', 'get'], { input: `protocol=https\nhost=${'x'.repeat(70000)}\n\n` });
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
});

test('git-credential: store is a no-op; erase invalidates only the broker\'s current token', { timeout: TIMEOUT }, async () => {
  const helper = { 'credential.https://gitlab.com.helper': '!tokenctl git-credential --connection gitlab' };
  const before = await tokenOf('gitlab');
  let r = await gitFill(helper, `protocol=https\nhost=gitlab.com\nusername=oauth2\npassword=${before}\n\n`, { action: 'approve' });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await tokenOf('gitlab'), before, 'store changed nothing');
  // a password that is not the broker's token: nothing to invalidate
  r = await gitFill(helper, 'protocol=https\nhost=gitlab.com\nusername=oauth2\npassword=some-other-secret\n\n', { action: 'reject' });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await tokenOf('gitlab'), before, 'a foreign password invalidated the token');
  // the current token refused by the server: the broker refreshes (after
  // the per-connection limit on client-driven refreshes has passed)
  await sleep(5500);
  r = await gitFill(helper, `protocol=https\nhost=gitlab.com\nusername=oauth2\npassword=${before}\n\n`, { action: 'reject' });
  assert.equal(r.code, 0, r.stderr);
  const after = await tokenOf('gitlab');
  assert.notEqual(after, before, 'erase of the current token made the broker refresh');
  // and the next fill hands out the new one
  r = await gitFill(helper, 'protocol=https\nhost=gitlab.com\n\n');
  assert.equal(sha(kv(r.stdout).password ?? ''), sha(after));
});

// ---- mail recipes from the README -----------------------------------------

test('README mail recipes: passwordeval, PassCmd and oauth2_access_token_eval print the token', { timeout: TIMEOUT }, async () => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const tok = await tokenOf('mail');
  const env = { PATH: `${BUILD}:${process.env.PATH}`, TOKENBROKER_SOCKET: b.socket };
  // msmtp runs passwordeval through the shell
  const msmtp = /^passwordeval (.+)$/m.exec(readme)?.[1];
  assert.ok(msmtp, 'the README has an msmtp passwordeval line');
  let r = await run('sh', ['-c', msmtp], { env });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sha(r.stdout.trim()), sha(tok), 'msmtp');
  // mbsync: PassCmd "CMD", run through the shell
  const mbsync = /^PassCmd "(.+)"$/m.exec(readme)?.[1];
  assert.ok(mbsync, 'the README has an mbsync PassCmd line');
  r = await run('sh', ['-c', mbsync], { env });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sha(r.stdout.trim()), sha(tok), 'mbsync');
  // offlineimap evaluates a Python expression
  const oi = /^oauth2_access_token_eval = (.+)$/m.exec(readme)?.[1];
  assert.ok(oi, 'the README has an offlineimap oauth2_access_token_eval line');
  r = await run('python3', ['-c', 'import sys; sys.stdout.write(sha := __import__("hashlib").sha256(eval(sys.argv[1]).encode()).hexdigest())', oi], { env });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, sha(tok), 'offlineimap');
});

// ---- examples/ ------------------------------------------------------------

/* Runs one example: it must fetch the token and call the fake API with
 * it; the API must have received exactly the broker's token. */
async function checkExample(cmd, args, label, env = {}) {
  const tok = await tokenOf('gh');
  const n = fp.requests.length;
  const r = await run(cmd, [...args, 'gh', fp.url('/api/me')], { env: { TOKENBROKER_SOCKET: b.socket, ...env }, timeoutMs: 120000 });
  assert.equal(r.code, 0, `${label}: ${r.stderr}`);
  assert.match(r.stdout, /^token of gh: expires in \d+ s$/m, label);
  assert.match(r.stdout, /-> HTTP 200/, label);
  assert.match(r.stdout, /octocat/, label);
  assert.ok(!r.stdout.includes(tok) && !r.stderr.includes(tok), `${label} printed the token`);
  const calls = fp.requests.slice(n).filter((q) => q.path === '/api/me');
  assert.equal(calls.length, 1, `${label}: one API call`);
  assert.equal(sha(calls[0].headers.authorization ?? ''), sha(`Bearer ${tok}`), `${label}: the API got the broker's token`);
  // an unknown connection: a clear error, no API call
  const e = await run(cmd, [...args, 'nosuch', fp.url('/api/me')], { env: { TOKENBROKER_SOCKET: b.socket, ...env }, timeoutMs: 120000 });
  assert.notEqual(e.code, 0, label);
  assert.match(e.stderr, /404.*unknown connection/, label);
}

/* The examples' second mode, `NAME /PATH`: a GET on the broker's proxy
 * route, through the daemon's real route to the fake provider's API (the
 * provider's api_url): the API must receive the broker's current token,
 * the example must get the API's answer and never the token. */
async function checkExampleProxy(cmd, args, label) {
  const tok = await tokenOf('gh');
  const n = fp.requests.length;
  const r = await run(cmd, [...args, 'gh', '/api/me?x=1'], { env: { TOKENBROKER_SOCKET: b.socket }, timeoutMs: 120000 });
  assert.equal(r.code, 0, `${label}: ${r.stderr}`);
  assert.match(r.stdout, /^GET \/api\/me\?x=1 through the broker -> HTTP 200$/m, label);
  assert.match(r.stdout, /octocat/, label);
  assert.ok(!r.stdout.includes(tok) && !r.stderr.includes(tok), `${label} printed the token`);
  const calls = fp.requests.slice(n).filter((q) => q.path === '/api/me');
  assert.equal(calls.length, 1, `${label}: one API call through the proxy`);
  assert.deepEqual(calls[0].query, { x: '1' }, `${label}: the query went through`);
  assert.equal(sha(calls[0].headers.authorization ?? ''), sha(`Bearer ${tok}`), `${label}: the API got the broker's token`);
  // a connection the broker does not have: the broker's 404, no API call
  const m = fp.requests.length;
  const e = await run(cmd, [...args, 'nosuch', '/api/me'], { env: { TOKENBROKER_SOCKET: b.socket }, timeoutMs: 120000 });
  assert.equal(e.code, 0, `${label}: ${e.stderr}`);
  assert.match(e.stdout, /^GET \/api\/me through the broker -> HTTP 404$/m, label);
  assert.equal(fp.requests.slice(m).filter((q) => q.path === '/api/me').length, 0, `${label}: nothing forwarded for an unknown connection`);
}

test('examples/python: requests over the Unix socket', { timeout: TIMEOUT }, async () => {
  // Debian's python3 with python3-requests, else whatever python3 is first
  const py = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  await checkExample(py, [path.join(ROOT, 'examples/python/broker_token.py')], 'python');
  await checkExampleProxy(py, [path.join(ROOT, 'examples/python/broker_token.py')], 'python');
});

test('examples/go: http.Client with a Unix DialContext', { timeout: 300000 }, async () => {
  const bin = path.join(tmp, 'broker-token-go');
  const goenv = { GOCACHE: path.join(tmp, 'gocache'), GOPATH: path.join(tmp, 'gopath'), GOPROXY: 'off', GOFLAGS: '-mod=mod', GO111MODULE: 'on' };
  const r = await run('go', ['build', '-o', bin, path.join(ROOT, 'examples/go/broker-token.go')], { env: goenv, timeoutMs: 280000 });
  assert.equal(r.code, 0, `go build: ${r.stderr}`);
  await checkExample(bin, [], 'go');
  await checkExampleProxy(bin, [], 'go');
});

test('examples/node: http.request with socketPath', { timeout: TIMEOUT }, async () => {
  await checkExample(process.execPath, [path.join(ROOT, 'examples/node/broker-token.js')], 'node');
  await checkExampleProxy(process.execPath, [path.join(ROOT, 'examples/node/broker-token.js')], 'node');
});
