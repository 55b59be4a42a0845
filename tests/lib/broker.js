'use strict';
/*
 * Test harness for the real daemon: writes a config into a temporary
 * folder, starts build/tokenbrokerd on a Unix socket and a loopback
 * callback port, runs tokenctl against it, kills it (SIGKILL too) and
 * restarts it on the same state. Every wait is bounded.
 *
 *   const b = await Broker.start({ providers: { local: '...ini...' } });
 *   const r = b.ctl(['list', '--json']);
 *   await b.stop();
 *
 * Checked centrally, for every daemon a test starts (inside `node --test`,
 * through top-level beforeEach/afterEach hooks this module registers), after
 * the test's own t.after() cleanup has run:
 *  - a daemon still running is stopped with SIGTERM;
 *  - every exit must be one the harness asked for: SIGKILL when it sent
 *    SIGKILL, status 0 (or opts.expectExit) after SIGTERM; a daemon that
 *    died on its own, exited non-zero on SIGTERM or needed SIGKILL after
 *    SIGTERM is a finding;
 *  - its log must not hold a sanitizer report ("Sanitizer", "runtime
 *    error:");
 *  - a finding fails the test that started the daemon;
 * and when the test failed (for any reason) its daemons' log tails are
 * printed and their folders kept (the message says where). Daemons started
 * by other means are watched with b.adopt(proc) (a process on b's log) or
 * noteRun(label, output) (a run whose output was captured).
 */

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const { recordSecret, archive, archiveText } = require('./suite.js');

const ROOT = path.resolve(__dirname, '..', '..');
const BUILD = process.env.TOKENBROKER_BUILD || path.join(ROOT, 'build');

/*
 * The store matrix (issue 10): TB_STORE=postgresql makes every Broker of a
 * test file keep its store in PostgreSQL 15 instead of state_dir's SQLite
 * file: one throwaway cluster per test-file process (tests/lib/pg.js,
 * started on the first Broker that needs it, stopped by its PID after the
 * file's last test or when the process ends), a database of its own per
 * Broker (CREATE DATABASE), `store` and `store_password_file` in its config.
 * A Broker given opts.store === 'sqlite' (a test of the SQLite file itself)
 * or its own `store` key stays where it is told. Every launch on
 * PostgreSQL checks /v1/status says so: the matrix never falls back to
 * SQLite silently. b.sql() and b.dumpStore() read either engine.
 */
const STORE = process.env.TB_STORE || 'sqlite';
if (STORE !== 'sqlite' && STORE !== 'postgresql') {
  throw new Error(`TB_STORE=${STORE}: expected sqlite or postgresql`);
}
let matrixPg = null;     // Promise of the file's Postgres, once started
let matrixDbs = 0;
async function matrixDatabase() {
  if (!matrixPg) {
    const { Postgres } = require('./pg.js');
    matrixPg = Postgres.start({ fsync: false });
  }
  const pg = await matrixPg;
  const db = `tb_${process.pid}_${++matrixDbs}`;
  await pg.psql(`CREATE DATABASE ${db}`, 'postgres');
  return { pg, db };
}
async function stopMatrixPg() {
  if (!matrixPg) return;
  const p = matrixPg;
  matrixPg = null;
  const pg = await p.catch(() => null);
  if (pg) await pg.destroy();
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// ---- central checks (see the head of this file) ----------------------------
const SANITIZER = /Sanitizer|runtime error:/;   // ASan, LSan, UBSan, TSan reports
const TAIL_LINES = 60;

function tailOf(text, lines = TAIL_LINES) {
  const all = text.split('\n');
  if (all.length && all[all.length - 1] === '') all.pop();
  return all.slice(-lines).join('\n');
}

/** Sanitizer report lines in a text (at most a few, for the message). */
function sanitizerLines(text) {
  return text.split('\n').filter((l) => SANITIZER.test(l)).slice(0, 8);
}

let scope = null;           // { t, brokers: [], runs: [] } of the running test
const fileScope = { t: null, brokers: [], runs: [] };   // outside any test
let hooked = false;
const underTest = !!process.env.NODE_TEST_CONTEXT || /\.test\.js$/.test(require.main?.filename ?? '');

/* Inside `node --test` (or a *.test.js run directly): hooks on the file's
 * root test, so every test of every file gets the checks without asking. */
function hookTests() {
  if (hooked || !underTest) return;
  hooked = true;
  const nt = require('node:test');
  nt.beforeEach((t) => { scope = { t, brokers: [], runs: [] }; });
  nt.afterEach((t) => {
    const mine = scope;
    scope = null;
    if (!mine) return;
    // Appended after the test's own t.after() hooks: they stop the daemons.
    t.after(() => finish(mine, t));
  });
  nt.after(async () => {
    try { await finish(fileScope, null); } finally { await stopMatrixPg(); }
  });
}

function currentScope() { return scope ?? fileScope; }
hookTests();

/**
 * Raises a finding for the current test: a captured run's output
 * (tokenbrokerd --check-config, a start that must fail) is archived for the
 * leak scan and checked for sanitizer reports.
 */
function noteRun(label, output) {
  const text = String(output ?? '');
  archiveText(label, text);
  const found = sanitizerLines(text);
  if (found.length) currentScope().runs.push(`${label}: sanitizer report:\n${found.join('\n')}\n--- output tail ---\n${tailOf(text)}`);
}

async function finish(sc, t) {
  const findings = [...sc.runs];
  sc.runs.length = 0;
  const brokers = sc.brokers.splice(0);
  for (const b of brokers) {
    if (b.running()) await b.kill('SIGTERM');   // the test left it running
    const log = b.log();
    for (const f of b.findings) findings.push(`tokenbrokerd in ${b.dir}: ${f}`);
    const san = sanitizerLines(log);
    if (san.length) findings.push(`tokenbrokerd in ${b.dir}: sanitizer report in its log:\n${san.join('\n')}`);
  }
  const failed = t ? (t.passed === false || !!t.error) : false;
  const bad = failed || findings.length > 0;
  const tails = [];
  for (const b of brokers) {
    b.archiveOnce();
    if (bad) {
      tails.push(`--- tokenbrokerd log tail (${b.logPath}, last ${TAIL_LINES} lines; folder kept: ${b.dir}) ---\n${tailOf(b.log())}`);
    } else if (b.removeDir && !process.env.TB_KEEP) {
      fs.rmSync(b.dir, { recursive: true, force: true });
    }
  }
  if (!bad) return;
  const what = findings.length ? `daemon checks failed:\n${findings.join('\n')}\n` : '';
  if (!failed && findings.length) throw new Error(`${what}${tails.join('\n')}`);
  // The test failed already (an assertion, a timeout): its result is
  // decided, so the findings and log tails go to the output next to it.
  if (what || tails.length) {
    process.stderr.write(`${t ? `test '${t.name}' failed` : 'failed'}; ${what}daemon logs:\n${tails.join('\n')}\n`);
  }
}

/*
 * A free TCP port on 127.0.0.1 for a daemon to bind later.
 *
 * Not from the kernel (listen(0)): that hands out a port of the ephemeral
 * range, and between releasing it here and the daemon binding it any
 * outgoing connection on the machine (curl to the provider, the test's own
 * HTTP clients) may take it as its local port: "Address already in use".
 * Ports below the ephemeral range are only ever bound on purpose, so the
 * pick is random among them (parallel test files rarely meet) and checked
 * by binding; a port handed out once by this process is not handed out
 * again.
 */
const givenPorts = new Set();
function ephemeralLow() {
  try {
    const low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 2048) return low;
  } catch { /* not Linux: fall through */ }
  return 32768;
}
const PORT_LOW = 10000;
const PORT_HIGH = Math.max(PORT_LOW + 1000, ephemeralLow() - 1);
function tryBind(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ port, host: '127.0.0.1', exclusive: true }, () => s.close(() => resolve(true)));
  });
}
async function freePort() {
  for (let i = 0; i < 200; i++) {
    const port = PORT_LOW + Math.floor(Math.random() * (PORT_HIGH - PORT_LOW));
    if (givenPorts.has(port)) continue;
    if (await tryBind(port)) {
      givenPorts.add(port);
      return port;
    }
  }
  throw new Error(`no free port on 127.0.0.1 between ${PORT_LOW} and ${PORT_HIGH} after 200 tries`);
}

/** Polls fn until it returns a truthy value or the time is up. */
async function waitFor(fn, { timeoutMs = 10000, intervalMs = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e && e.fatal) throw e;   // no point in waiting any longer
      last = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}

/** One HTTP request over a Unix socket; resolves {status, headers, text, json}. */
function unixRequest(socketPath, method, urlPath, body, { timeoutMs = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const req = http.request({
      socketPath, method, path: urlPath, timeout: timeoutMs,
      headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {},
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json = null;
        try { json = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: timed out`)));
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

/** GET (or, with method 'POST', an empty form POST as a page's button sends) over TCP, for the callback listener; no redirect followed. */
function httpGet(url, { timeoutMs = 15000, method = 'GET' } = {}) {
  return new Promise((resolve, reject) => {
    const headers = method === 'POST' ? { 'content-type': 'application/x-www-form-urlencoded', 'content-length': 0 } : {};
    const req = http.request(url, { method, headers, timeout: timeoutMs }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** An empty form POST over TCP, as a page's button sends; no redirect followed. */
const httpPost = (url, o = {}) => httpGet(url, { ...o, method: 'POST' });

/**
 * Follows an auto-approving provider's authorize URL: GET it (a 302 to the
 * broker's callback), then GET the callback. Resolves the callback answer,
 * with `location` the redirect that was followed.
 */
function followAuthorize(url, { agent, timeoutMs = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent, timeout: timeoutMs }, (res) => { res.resume(); resolve(res.headers.location); });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: timed out`)));
    req.on('error', reject);
  }).then(async (location) => {
    if (!location) throw new Error(`no redirect from ${url}`);
    return { location, ...(await httpGet(location, { timeoutMs })) };
  });
}

function iniProvider(fields) {
  return '[provider]\n' + Object.entries(fields)
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => (Array.isArray(v) ? v.map((x) => `${k} = ${x}`).join('\n') : `${k} = ${v}`))
    .join('\n') + '\n';
}

/** The provider file for a running oidc-server.js instance. */
function oidcProviderConf(op, extra = {}) {
  return iniProvider({
    grant: 'authorization_code',
    authorize_url: op.endpoints.authorization,
    token_url: op.endpoints.token,
    revoke_url: op.endpoints.revocation,
    client_id: 'tokenbroker',
    client_secret_file: 'local.secret',
    client_auth: 'basic',
    scopes: 'openid email offline_access',
    authorize_params: 'prompt=consent',
    ...extra,
  });
}

class Broker {
  constructor(dir, opts) {
    this.dir = dir;
    this.opts = opts;
    this.socket = path.join(dir, 'tb.sock');
    this.confPath = path.join(dir, 'tokenbroker.conf');
    this.db = path.join(dir, 'state', 'tokenbroker.db');
    this.logPath = path.join(dir, 'daemon.log');
    this.proc = null;
    this.exits = [];
    this.findings = [];      // exits the harness did not ask for
    this.removeDir = false;  // stop() without keep: removed after the checks
    this.storeEngine = 'sqlite';   // 'postgresql' under TB_STORE=postgresql (placeStore)
    this.pg = null;
    this.pgDb = null;
    this.archived = false;
    this.expecting = null;   // {pid, signal} while kill() waits
    this.launching = null;   // pid while launch() waits (it reports an early exit itself)
    hookTests();
    currentScope().brokers.push(this);
  }

  running() { return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null; }

  finding(text) { if (text) this.findings.push(text); }

  /**
   * Watches a tokenbrokerd this test started by other means (e.g. under
   * systemd-socket-activate) writing to this.logPath: stop() and the
   * central checks then treat it like one launch() started.
   */
  adopt(p) {
    this.proc = p;
    p.on('exit', (code, signal) => this.onExit(p, code, signal));
    return p;
  }

  onExit(p, code, signal) {
    const e = { code, signal, pid: p.pid };
    this.exits.push(e);
    const how = signal ? `signal ${signal}` : `status ${code}`;
    const x = this.expecting && this.expecting.pid === p.pid ? this.expecting : null;
    if (x && x.signal === 'SIGKILL') {
      if (signal !== 'SIGKILL') this.finding(`pid ${p.pid} exited with ${how} before SIGKILL landed`);
    } else if (x) {
      const want = this.opts.expectExit ?? 0;
      if (x.escalated) this.finding(`pid ${p.pid} did not exit within 15 s of ${x.signal}: killed`);
      else if (signal || code !== want) this.finding(`pid ${p.pid} exited with ${how} after ${x.signal} (expected status ${want})`);
    } else if (this.launching !== p.pid) {
      this.finding(`pid ${p.pid} exited on its own with ${how}`);
    }
  }

  archiveOnce() {
    if (this.archived) return;
    this.archived = true;
    let events = null;
    if (this.pgDb) {
      try { events = this.psqlSync('SELECT * FROM events', { sep: '|' }); } catch { /* no table yet */ }
    }
    archive(this.dir, this.logPath, this.db, events);
  }

  static async start(opts = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-test-'));
    const b = new Broker(dir, opts);
    b.port = opts.port ?? await freePort();
    b.publicUrl = `http://127.0.0.1:${b.port}`;
    b.redirectUri = `${b.publicUrl}/oauth/callback`;
    await b.placeStore();
    b.writeConfig();
    await b.launch();
    return b;
  }

  /** Reserves a port and paths without starting, so the provider can know the redirect URI first. */
  static async prepare(opts = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-test-'));
    const b = new Broker(dir, opts);
    b.port = opts.port ?? await freePort();
    b.publicUrl = `http://127.0.0.1:${b.port}`;
    b.redirectUri = `${b.publicUrl}/oauth/callback`;
    await b.placeStore();
    return b;
  }

  /**
   * Under TB_STORE=postgresql, a database of its own on the file's cluster
   * (unless opts.store === 'sqlite' or opts.broker sets `store`).
   */
  async placeStore() {
    const o = this.opts;
    if (STORE !== 'postgresql' || o.store === 'sqlite' || (o.broker && o.broker.store !== undefined)) return;
    const { pg, db } = await matrixDatabase();
    this.pg = pg;
    this.pgDb = db;
    this.storeEngine = 'postgresql';
  }

  /** The store as the daemon names it in its messages: the SQLite file or the database's URI. */
  get storeName() { return this.pgDb ? this.pg.uri(this.pgDb) : this.db; }

  /** The redirect URI the broker sends for provider NAME (its own, not the shared one). */
  redirectUriFor(name) {
    return `${this.redirectUri}/${name}`;
  }

  /** Every redirect URI an authorization server should register: the shared one and each provider's. */
  redirectUrisFor(...names) {
    return [this.redirectUri, ...names.map((n) => this.redirectUriFor(n))];
  }

  writeConfig() {
    const o = this.opts;
    const pdir = path.join(this.dir, 'providers.d');
    fs.mkdirSync(pdir, { recursive: true });
    const broker = {
      state_dir: 'state',
      socket: 'tb.sock',
      callback_listen: `127.0.0.1:${this.port}`,
      public_url: this.publicUrl,
      providers_dir: 'providers.d',
      refresh_margin: '2s',
      refresh_ratio: '0.25',
      refresh_jitter: '0.5s',
      ...(this.pgDb ? { store: this.pg.uri(this.pgDb), store_password_file: this.pg.passwordFile } : {}),
      ...(o.broker ?? {}),
    };
    fs.writeFileSync(this.confPath, '[broker]\n' + Object.entries(broker).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n');
    for (const [name, text] of Object.entries(o.providers ?? {})) {
      fs.writeFileSync(path.join(pdir, `${name}.conf`), text);
    }
    for (const [file, text] of Object.entries(o.secrets ?? {})) {
      recordSecret(text);
      fs.writeFileSync(path.join(pdir, file), `${text}\n`, { mode: 0o600 });
    }
  }

  async launch() {
    const log = fs.openSync(this.logPath, 'a');
    const env = { ...process.env, TOKENBROKER_LOG_LEVEL: this.opts.logLevel ?? 'debug' };
    delete env.NOTIFY_SOCKET;
    delete env.LISTEN_FDS;
    delete env.LISTEN_PID;
    delete env.WATCHDOG_USEC;
    Object.assign(env, this.opts.env ?? {});
    const p = spawn(path.join(this.opts.build ?? BUILD, 'tokenbrokerd'), ['-c', this.confPath], { stdio: ['ignore', log, log], env });
    fs.closeSync(log);
    this.proc = p;
    this.launching = p.pid;
    p.on('exit', (code, signal) => this.onExit(p, code, signal));
    try {
      await waitFor(async () => {
        if (p.exitCode !== null || p.signalCode !== null) {
          throw Object.assign(new Error(`tokenbrokerd exited early:\n${tailOf(this.log())}`), { fatal: true });
        }
        const r = await unixRequest(this.socket, 'GET', '/v1/status').catch(() => null);
        if (r && r.status === 200 && this.pgDb) {
          // The matrix must run where it says: never SQLite by mistake.
          const engine = r.json && r.json.store && r.json.store.engine;
          if (engine !== 'postgresql') {
            throw Object.assign(new Error(`TB_STORE=postgresql, but /v1/status says the store is ${JSON.stringify(engine)}`), { fatal: true });
          }
        }
        return r && r.status === 200;
      }, { timeoutMs: 15000, what: 'tokenbrokerd to answer on its socket' });
    } finally {
      if (this.launching === p.pid) this.launching = null;
    }
    return p;
  }

  log() { try { return fs.readFileSync(this.logPath, 'utf8'); } catch { return ''; } }

  /**
   * Runs tokenctl and resolves {code, stdout, stderr}. Asynchronous on
   * purpose: a test's authorization server runs in this same process and
   * must keep answering while tokenctl waits on the daemon.
   */
  async ctl(args, { env = {}, timeoutMs = 60000, input } = {}) {
    const p = spawn(path.join(BUILD, 'tokenctl'), ['--socket', this.socket, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env },
    });
    const out = { stdout: '', stderr: '', code: null, signal: null };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    p.stdin.on('error', () => {});   // tokenctl may exit before reading stdin (EPIPE)
    p.stdin.end(input ?? '');
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    await new Promise((resolve) => p.on('close', (code, signal) => { out.code = code; out.signal = signal; resolve(); }));
    clearTimeout(timer);
    return out;
  }

  /** tokenctl in the background (for authorize, which waits). */
  ctlAsync(args) {
    const p = spawn(path.join(BUILD, 'tokenctl'), ['--socket', this.socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = { stdout: '', stderr: '', code: null };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; });
    out.done = new Promise((resolve) => p.on('exit', (code, signal) => { out.code = code; out.signal = signal; resolve(out); }));
    out.proc = p;
    return out;
  }

  api(method, urlPath, body, o) { return unixRequest(this.socket, method, urlPath, body, o); }

  /**
   * The connections table, one row a line, fields joined by '|' (tokens
   * as upper-case hex): the same text from SQLite (sqlite3 CLI) and from
   * PostgreSQL (psql), so a test compares dumps without knowing the engine.
   */
  dumpStore() {
    if (this.pgDb) {
      return this.psqlSync('SELECT id,name,provider,state,scope,identity,upper(encode(access_token,\'hex\')),' +
        'upper(encode(refresh_token,\'hex\')),expires_at,state_hash,last_error,updated_at FROM connections ORDER BY id', { sep: '|' });
    }
    const r = spawnSync('sqlite3', ['-readonly', this.db,
      'SELECT id,name,provider,state,scope,identity,hex(access_token),hex(refresh_token),expires_at,state_hash,last_error,updated_at FROM connections ORDER BY id;'],
    { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`sqlite3 failed: ${r.stderr}`);
    return r.stdout;
  }

  /**
   * Rows of a query on the store, as objects (either engine). Write it in
   * the SQL both speak: `ORDER BY id` (not rowid), count(*) AS n; hex() is
   * SQLite's (in PostgreSQL: the harness's hex() is not there, use
   * b.storeEngine to choose).
   */
  sql(query) {
    if (this.pgDb) {
      const out = this.psqlSync(`SELECT coalesce(json_agg(row_to_json(q)), '[]'::json) FROM (${query.replace(/;\s*$/, '')}) q`);
      return JSON.parse(out.trim() || '[]');
    }
    const r = spawnSync('sqlite3', ['-readonly', '-json', this.db, query], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`sqlite3 failed: ${r.stderr}`);
    return r.stdout.trim() ? JSON.parse(r.stdout) : [];
  }

  /** The same, awaitable (the name the matrix's tests use). */
  async storeQuery(query) { return this.sql(query); }

  /** psql on this Broker's database: bare values (-A -t), one row a line. */
  psqlSync(query, { sep } = {}) {
    const { PGBIN } = require('./pg.js');
    const args = ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(this.pg.port),
      '-U', 'tokenbroker', '-d', this.pgDb, ...(sep ? ['-F', sep] : []), '-c', query];
    const r = spawnSync(path.join(PGBIN, 'psql'), args, {
      encoding: 'utf8', timeout: 30000,
      env: { ...process.env, PGPASSWORD: this.pg.password, PGCONNECT_TIMEOUT: '10' },
    });
    if (r.status !== 0) throw new Error(`psql failed (${r.status ?? r.signal}): ${(r.stderr || '').trim()}`);
    return r.stdout;
  }

  async kill(signal = 'SIGKILL') {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    const within = (ms) => {
      let timer;
      return Promise.race([gone, new Promise((r) => { timer = setTimeout(r, ms); })]).finally(() => clearTimeout(timer));
    };
    this.expecting = { pid: p.pid, signal, escalated: false };
    process.kill(p.pid, signal);
    await within(15000);
    if (p.exitCode === null && p.signalCode === null) {
      this.expecting.escalated = true;
      process.kill(p.pid, 'SIGKILL');
      await within(5000);
    }
  }

  async restart() { await this.kill('SIGKILL'); await this.launch(); }

  /**
   * Stops the daemon with SIGTERM; returns its exit status. Inside a test
   * the folder is removed after the central checks, and only when the test
   * passed them; outside one (a benchmark), at once.
   */
  async stop({ keep = false } = {}) {
    await this.kill('SIGTERM');
    const last = this.exits[this.exits.length - 1];
    this.removeDir = !keep;
    if (!underTest) {
      this.archiveOnce();
      if (!keep && !process.env.TB_KEEP) fs.rmSync(this.dir, { recursive: true, force: true });
    }
    return last;
  }
}

module.exports = {
  STORE, Broker, freePort, waitFor, sleep, unixRequest, httpGet, httpPost, followAuthorize, iniProvider, oidcProviderConf, noteRun, tailOf, BUILD, ROOT,
};
