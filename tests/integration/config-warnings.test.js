'use strict';
/*
 * Configuration checks a new user met (issue 8), and the man pages:
 *  - --check-config printed every error twice (stderr and the log line):
 *    now once;
 *  - a missing providers_dir passed with "OK (0 providers)": now an error
 *    naming the path, at --check-config and at start; an empty one is a
 *    warning;
 *  - a file in providers.d with another extension (google.conf.bak,
 *    google.ini) and a key set twice were silently ignored: now one
 *    "file:line: warning: ..." each, at --check-config and in the log at
 *    start, without failing;
 *  - logged paths were not normalized (conf/dev/../../.run/state);
 *  - man/tokenctl.1 and man/tokenbrokerd.8 render without warnings, name
 *    every verb, option and exit status of --help, and `make install`
 *    puts them under $(DESTDIR)$(PREFIX)/share/man.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const broker = require('../lib/broker.js');

const { BUILD, ROOT } = broker;
const DAEMON = path.join(BUILD, 'tokenbrokerd');
const CTL = path.join(BUILD, 'tokenctl');
const SANITIZER = /Sanitizer|runtime error:/;

const GOOD = [
  '[provider]',
  'authorize_url = https://id.example.com/authorize',
  'token_url = https://id.example.com/token',
  'client_id = abc',
  'client_secret = made-up',
].join('\n') + '\n';

/* The harness's central checks, where it has them (sanitizer reports). */
function note(label, output) {
  if (typeof broker.noteRun === 'function') broker.noteRun(label, output);
  assert.doesNotMatch(output, SANITIZER, `${label}: sanitizer report`);
}

/* DIR/conf/dev/tb.conf with paths that climb out of its folder, as
 * conf/dev/tokenbroker.conf does. */
function workdir(t, { brokerLines, providersDir = true } = {}) {
  const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'tb-warn-')));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const confDir = path.join(dir, 'conf', 'dev');
  fs.mkdirSync(confDir, { recursive: true });
  if (providersDir) fs.mkdirSync(path.join(confDir, 'providers.d'));
  const conf = path.join(confDir, 'tb.conf');
  fs.writeFileSync(conf, (brokerLines ?? [
    '[broker]',
    'state_dir = ../../run/./state',
    'socket = ../..//run/tb.sock',
    'callback_listen = 127.0.0.1:0',
    'providers_dir = providers.d',
  ]).join('\n') + '\n');
  fs.mkdirSync(path.join(dir, 'run'));
  return { dir, conf, pdir: path.join(confDir, 'providers.d'), sock: path.join(dir, 'run', 'tb.sock') };
}

function check(conf) {
  const r = spawnSync(DAEMON, ['--check-config', '-c', conf],
    { encoding: 'utf8', timeout: 30000, env: { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' } });
  assert.equal(r.error, undefined, String(r.error));
  note(`check-config ${conf}`, r.stdout + r.stderr);
  return r;
}

function count(text, s) {
  return text.split(s).length - 1;
}

/* Starts the daemon until it is ready (or exits), then stops it by PID.
 * Resolves { status, signal, log }. Every wait is bounded. */
async function runDaemon(t, conf, { stopWhenReady = true } = {}) {
  const child = spawn(DAEMON, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TOKENBROKER_LOG_LEVEL: 'info', JOURNAL_STREAM: '' } });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((resolve) => child.on('exit', (status, signal) => resolve({ status, signal })));
  t.after(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  const deadline = Date.now() + 20000;
  let done = null;
  exited.then((x) => { done = x; });
  while (!done && !/ready: API on/.test(log) && Date.now() < deadline) await broker.sleep(50);
  if (!done && stopWhenReady) {
    assert.match(log, /ready: API on/, `the daemon did not get ready in 20 s:\n${log}`);
    child.kill('SIGTERM');
  }
  const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
  const x = await exited;
  clearTimeout(timer);
  note(`tokenbrokerd -c ${conf}`, log);
  return { ...x, log };
}

test('a missing providers_dir is an error naming the path, printed once, and the daemon does not start', { timeout: 120000 }, async (t) => {
  const w = workdir(t, { providersDir: false });
  const want = `${w.conf}:5: providers_dir '${w.pdir}' does not exist.`;
  const r = check(w.conf);
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, want + '\n', 'the error once, and nothing else');

  const d = await runDaemon(t, w.conf, { stopWhenReady: false });
  assert.equal(d.status, 1, d.log);
  assert.equal(count(d.log, `providers_dir '${w.pdir}' does not exist.`), 1, d.log);
  assert.match(d.log, new RegExp(`error: ${want.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.ok(!fs.existsSync(w.sock), 'the daemon started');
});

test('the default providers_dir, unset and missing, is named as the default', { timeout: 120000 }, (t) => {
  if (fs.existsSync('/etc/tokenbroker/providers.d')) {
    t.skip('/etc/tokenbroker/providers.d exists on this machine');
    return;
  }
  const w = workdir(t, { brokerLines: ['[broker]', 'state_dir = s', 'callback_listen = 127.0.0.1:0'] });
  const r = check(w.conf);
  assert.equal(r.status, 1);
  assert.equal(r.stderr, `${w.conf}: providers_dir '/etc/tokenbroker/providers.d' (the default) does not exist.\n`);
});

test('--check-config prints an error once', { timeout: 120000 }, (t) => {
  const w = workdir(t);
  fs.writeFileSync(path.join(w.pdir, 'bad.conf'), GOOD + 'frobnicate = 1\n', { mode: 0o600 });
  const r = check(w.conf);
  assert.equal(r.status, 1);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, `${w.pdir}/bad.conf:6: Unknown key 'frobnicate'.\n`);
});

test('an empty providers_dir is a warning, not an error', { timeout: 120000 }, (t) => {
  const w = workdir(t);
  const r = check(w.conf);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `${w.conf}: OK (0 providers, 1 warning)\n`);
  assert.equal(r.stderr, `${w.conf}:5: warning: providers_dir '${w.pdir}' holds no provider files (NAME.conf).\n`);
});

test('stray files in providers.d and duplicate keys: one warning each, at --check-config and at start', { timeout: 120000 }, async (t) => {
  const w = workdir(t, { brokerLines: [
    '[broker]',
    'state_dir = ../../run/state',
    'socket = ../../run/tb.sock',
    'refresh_margin = 10s',
    'callback_listen = 127.0.0.1:0',
    'refresh_margin = 20s',
    'providers_dir = providers.d',
  ] });
  // 0600: its inline client_secret is not another warning here.
  fs.writeFileSync(path.join(w.pdir, 'google.conf'), GOOD + 'scopes = openid\n# later\nscopes = email\n', { mode: 0o600 });
  fs.writeFileSync(path.join(w.pdir, 'google.conf.bak'), '[garbage');
  fs.writeFileSync(path.join(w.pdir, 'google.ini'), '[garbage');
  fs.writeFileSync(path.join(w.pdir, '.google.conf.swp'), '[garbage');   // hidden: skipped silently
  const want = [
    `${w.conf}:6: warning: duplicate key 'refresh_margin' (also set at line 4), the last one wins.`,
    `${w.pdir}/google.conf:8: warning: duplicate key 'scopes' (also set at line 6), the last one wins.`,
    `${w.pdir}/google.conf.bak: warning: ignored: provider files are named NAME.conf.`,
    `${w.pdir}/google.ini: warning: ignored: provider files are named NAME.conf.`,
  ];
  const r = check(w.conf);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `${w.conf}: OK (1 provider, 4 warnings)\n  ${w.pdir}/google.conf: authorization_code, https://id.example.com/token\n`);
  assert.equal(r.stderr, want.join('\n') + '\n');
  assert.doesNotMatch(r.stderr, /swp/);

  // The daemon starts, and logs each warning once.
  const d = await runDaemon(t, w.conf);
  assert.equal(d.status, 0, d.log);
  for (const line of want) assert.equal(count(d.log, line), 1, `${line}\nin:\n${d.log}`);
  assert.equal(count(d.log, 'warning: '), 2 * want.length, d.log);   // "warning: FILE: warning: ..."
});

test('paths made from the config file\'s folder are normalized in log lines', { timeout: 120000 }, async (t) => {
  const w = workdir(t);
  fs.writeFileSync(path.join(w.pdir, 'p.conf'), GOOD);
  const d = await runDaemon(t, w.conf);
  assert.equal(d.status, 0, d.log);
  const state = path.join(w.dir, 'run', 'state');
  assert.ok(d.log.includes(`'${state}/tokenbroker.key'`), `no normalized key path in:\n${d.log}`);
  assert.ok(d.log.includes(`'${state}/tokenbroker.db'`), d.log);
  assert.ok(d.log.includes(`ready: API on ${w.sock},`), d.log);
  assert.doesNotMatch(d.log, /\/\.\.\/|\/\.\/|\/\//, 'a path with /../, /./ or // in the log');
  assert.ok(fs.existsSync(path.join(state, 'tokenbroker.db')));
});

// ---- man pages -------------------------------------------------------------

const MAN1 = path.join(ROOT, 'man', 'tokenctl.1');
const MAN8 = path.join(ROOT, 'man', 'tokenbrokerd.8');

/* The page as plain text (no bold, no hyphenation breaks), and groff's warnings. */
function render(file) {
  const r = spawnSync('groff', ['-man', '-ww', '-Tutf8', '-P', '-cbou', '-rLL=200n', file],
    { encoding: 'utf8', timeout: 30000 });
  assert.equal(r.error, undefined, String(r.error));
  return { text: r.stdout.replace(/\u2010|\u2212/g, '-'), warnings: r.stderr, status: r.status };
}

test('the man pages render without warnings (groff -ww, man --warnings)', { timeout: 120000 }, (t) => {
  for (const file of [MAN1, MAN8]) {
    const g = spawnSync('groff', ['-man', '-ww', '-z', file], { encoding: 'utf8', timeout: 30000 });
    assert.equal(g.error, undefined, String(g.error));
    assert.equal(g.status, 0, g.stderr);
    assert.equal(g.stderr, '', `${file}: groff warnings`);
    const m = spawnSync('man', ['--warnings', '-l', file], { encoding: 'utf8', timeout: 30000,
      env: { ...process.env, MANWIDTH: '80', MAN_KEEP_FORMATTING: '', PAGER: 'cat', MANPAGER: 'cat' } });
    if (m.error && m.error.code === 'ENOENT') { t.diagnostic('man not installed: groff only'); continue; }
    assert.equal(m.status, 0, m.stderr);
    assert.equal(m.stderr, '', `${file}: man --warnings`);
    assert.match(m.stdout, /NAME/);
  }
});

test('every verb, option and exit status of tokenctl --help is in tokenctl(1)', { timeout: 120000 }, () => {
  const help = spawnSync(CTL, ['--help'], { encoding: 'utf8', timeout: 10000 });
  assert.equal(help.status, 0);
  const page = render(MAN1).text;
  const verbs = [];
  let inVerbs = false;
  for (const line of help.stdout.split('\n')) {
    if (/^Verbs:/.test(line)) { inVerbs = true; continue; }
    if (inVerbs && line === '') break;
    const m = /^ {2}([a-z][a-z-]*)\b/.exec(line);
    if (inVerbs && m) verbs.push(m[1]);
  }
  assert.ok(verbs.length >= 12, `verbs parsed from --help: ${verbs}`);
  const options = new Set(help.stdout.match(/--[a-z][a-z-]*/g));
  for (const v of verbs) {
    // A verb is an entry of its own in VERBS: a line starting with it.
    assert.match(page, new RegExp(`^ {7}${v}( |$)`, 'm'), `verb ${v} missing from tokenctl(1)`);
    const vh = spawnSync(CTL, [v, '--help'], { encoding: 'utf8', timeout: 10000 });
    assert.equal(vh.status, 0, `${v} --help`);
    for (const o of vh.stdout.match(/--[a-z][a-z-]*/g) ?? []) options.add(o);
    // and the synopsis of the verb in --help is the page's, word for word
    const synopsis = /^Usage: tokenctl \[--socket PATH\] \[--json\] (.*)$/m.exec(vh.stdout)[1].trim();
    assert.ok(page.replace(/\s+/g, ' ').includes(synopsis.replace(/\.\.\./g, '...')),
      `tokenctl(1) lacks the synopsis "${synopsis}"`);
  }
  assert.ok(options.size >= 12, [...options].join(' '));
  // Each option has an entry of its own: a tag line starting with it.
  for (const o of options) {
    assert.match(page, new RegExp(`^ +(?:-[a-z], )?${o}( |,|$)`, 'm'), `option ${o} has no entry in tokenctl(1)`);
  }
  // Exit statuses: each number of --help has its entry under EXIT STATUS.
  const exitSection = page.split(/^EXIT STATUS$/m)[1]?.split(/^[A-Z][A-Z ]+$/m)[0] ?? '';
  const codes = [...help.stdout.split('Exit status:')[1].matchAll(/(?:^|\s)(\d{1,2}) [a-z]/g)].map((m) => m[1]);
  assert.ok(codes.length >= 10, `exit codes parsed from --help: ${codes}`);
  for (const c of codes) assert.match(exitSection, new RegExp(`^ {7}${c} `, 'm'), `exit status ${c} missing from tokenctl(1)`);
  // --version, as the README says
  const ver = spawnSync(CTL, ['--version'], { encoding: 'utf8', timeout: 10000 });
  assert.match(ver.stdout, /^tokenctl \d+\.\d+\.\d+\n$/);
});

test('every option of tokenbrokerd --help is in tokenbrokerd(8)', { timeout: 120000 }, () => {
  const help = spawnSync(DAEMON, ['--help'], { encoding: 'utf8', timeout: 10000 });
  assert.equal(help.status, 0);
  const page = render(MAN8).text;
  const options = help.stdout.match(/(?<![\w-])-(-[a-z][a-z-]*|[a-z])\b/g);
  assert.ok(options.length >= 5, options.join(' '));
  for (const o of options) {
    assert.match(page, new RegExp(`^ +(?:-[a-z], )?(?:--[a-z-]+, )?${o}( |,|$)`, 'm'),
      `option ${o} has no entry in tokenbrokerd(8)`);
  }
  assert.match(help.stdout, /tokenctl\(1\)/);
  assert.match(page, /tokenctl\(1\)/);
});

test('make install puts the man pages under DESTDIR/PREFIX/share/man; uninstall removes them', { timeout: 120000 }, (t) => {
  const dest = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-man-'));
  t.after(() => fs.rmSync(dest, { recursive: true, force: true }));
  // -o: the binaries are taken as they are, never rebuilt into BUILD here.
  const args = ['-s', '-C', ROOT, `BUILD=${BUILD}`, `DESTDIR=${dest}`, 'PREFIX=/opt/tb',
    '-o', `${BUILD}/tokenbrokerd`, '-o', `${BUILD}/tokenctl`];
  const i = spawnSync('make', [...args, 'install'], { encoding: 'utf8', timeout: 60000 });
  assert.equal(i.status, 0, i.stdout + i.stderr);
  const m1 = path.join(dest, 'opt/tb/share/man/man1/tokenctl.1');
  const m8 = path.join(dest, 'opt/tb/share/man/man8/tokenbrokerd.8');
  assert.equal(fs.readFileSync(m1, 'utf8'), fs.readFileSync(MAN1, 'utf8'));
  assert.equal(fs.readFileSync(m8, 'utf8'), fs.readFileSync(MAN8, 'utf8'));
  assert.equal(fs.statSync(m1).mode & 0o777, 0o644);
  const u = spawnSync('make', [...args, 'uninstall'], { encoding: 'utf8', timeout: 60000 });
  assert.equal(u.status, 0, u.stdout + u.stderr);
  assert.ok(!fs.existsSync(m1) && !fs.existsSync(m8), 'uninstall left a man page');
});
