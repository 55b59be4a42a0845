'use strict';
/*
 * A throwaway PostgreSQL 15 cluster for the tests (issue 10): Debian's
 * postgresql-15 binaries, a fresh data directory under /tmp, 127.0.0.1 and
 * a free port, password authentication (scram-sha-256) for the one role
 * `tokenbroker`, stopped by the postmaster's PID.
 *
 * PostgreSQL refuses to run as root: initdb and the postmaster run as the
 * `postgres` user the package creates, through setpriv, which execs (no
 * fork), so the PID the harness holds is the postmaster's own.
 *
 *   const pg = await Postgres.start();
 *   pg.uri()            postgresql://tokenbroker@127.0.0.1:PORT/tokenbroker
 *   pg.passwordFile     a 0600 file holding the role's password
 *   await pg.psql('SELECT 1')
 *   await pg.stop(); await pg.start again with pg.restart()
 */
const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const { freePort, waitFor, sleep } = require('./broker.js');
const { recordSecret } = require('./suite.js');

const PGBIN = process.env.TB_PGBIN || '/usr/lib/postgresql/15/bin';
const ROLE = 'tokenbroker';
const DB = 'tokenbroker';

// Postmasters still running when the test process ends (a test that threw
// before its after() ran): stopped here, synchronously.
const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try { process.kill(p.pid, 'SIGQUIT'); } catch { /* gone */ }
  }
});

function postgresIds() {
  const r = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (r.status !== 0 || g.status !== 0) {
    throw new Error('no postgres user: install postgresql-15 (make deps)');
  }
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

function asPostgres(argv) {
  return ['setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', '--', ...argv]];
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60000, ...opts });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args[0] ?? ''} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout || '').slice(-2000)}`);
  }
  return r.stdout;
}

class Postgres {
  constructor(dir, port, password) {
    this.dir = dir;
    this.data = path.join(dir, 'data');
    this.port = port;
    this.password = password;
    this.passwordFile = path.join(dir, 'password');
    this.logPath = path.join(dir, 'postgres.log');
    this.proc = null;
  }

  /** initdb + start. options.fsync = false for tests that need no durability. */
  static async start({ fsync = true } = {}) {
    if (!fs.existsSync(path.join(PGBIN, 'postgres'))) {
      throw new Error(`${PGBIN}/postgres not found: install postgresql-15 (make deps)`);
    }
    const ids = postgresIds();
    const dir = fs.mkdtempSync('/tmp/tb-pg-');
    fs.chownSync(dir, ids.uid, ids.gid);
    const password = crypto.randomBytes(18).toString('base64url');
    recordSecret(password);
    const pg = new Postgres(dir, await freePort(), password);
    pg.fsync = fsync;
    // The password for initdb, readable by postgres only; the one the
    // tests hand to the daemon, readable by root only.
    const initPw = path.join(dir, 'initdb-password');
    fs.writeFileSync(initPw, `${password}\n`, { mode: 0o600 });
    fs.chownSync(initPw, ids.uid, ids.gid);
    fs.writeFileSync(pg.passwordFile, `${password}\n`, { mode: 0o600 });
    const [cmd, args] = asPostgres([path.join(PGBIN, 'initdb'), '-D', pg.data, '-U', ROLE, `--pwfile=${initPw}`,
      '--auth=scram-sha-256', '--encoding=UTF8', '--locale=C', '--no-sync']);
    run(cmd, args, { cwd: dir });
    fs.unlinkSync(initPw);
    await pg.startPostmaster();
    await pg.psql(`CREATE DATABASE ${DB}`, 'postgres');
    return pg;
  }

  async startPostmaster() {
    if (this.proc) throw new Error('postgres is running already');
    const log = fs.openSync(this.logPath, 'a');
    const [cmd, args] = asPostgres([path.join(PGBIN, 'postgres'), '-D', this.data, '-p', String(this.port),
      '-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${this.dir}`,
      '-c', `fsync=${this.fsync ? 'on' : 'off'}`, '-c', 'max_connections=200']);
    const p = spawn(cmd, args, { stdio: ['ignore', log, log], cwd: this.dir });
    fs.closeSync(log);
    this.proc = p;
    running.add(p);
    p.exited = new Promise((resolve) => p.once('exit', (code, signal) => {
      running.delete(p);
      resolve({ code, signal });
    }));
    await waitFor(async () => {
      if (p.exitCode !== null || p.signalCode !== null) {
        throw new Error(`postgres exited at start: ${this.logTail()}`);
      }
      const r = spawnSync(path.join(PGBIN, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(this.port), '-t', '1'],
        { encoding: 'utf8' });
      return r.status === 0;
    }, { timeoutMs: 30000, intervalMs: 100, what: 'postgres to accept connections' });
  }

  get pid() { return this.proc ? this.proc.pid : null; }

  uri(db = DB) {
    return `postgresql://${ROLE}@127.0.0.1:${this.port}/${db}`;
  }

  logTail() {
    try { return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-20).join('\n'); } catch { return ''; }
  }

  /** Runs SQL with psql (-A -t: bare values, one row a line). */
  async psql(sql, db = DB) {
    return new Promise((resolve, reject) => {
      const p = spawn(path.join(PGBIN, 'psql'), ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
        '-h', '127.0.0.1', '-p', String(this.port), '-U', ROLE, '-d', db, '-c', sql],
      { env: { ...process.env, PGPASSWORD: this.password, PGCONNECT_TIMEOUT: '10' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d) => { out += d; });
      p.stderr.on('data', (d) => { err += d; });
      const timer = setTimeout(() => p.kill('SIGKILL'), 30000);
      p.on('close', (code) => {
        clearTimeout(timer);
        if (code === 0) resolve(out);
        else reject(new Error(`psql failed (${code}): ${err.trim()}`));
      });
    });
  }

  /** Fast shutdown (SIGINT), by PID; SIGKILL after 30 s. */
  async stop() {
    const p = this.proc;
    if (!p) return;
    try { p.kill('SIGINT'); } catch { /* gone */ }
    const t = setTimeout(() => { try { p.kill('SIGKILL'); } catch { /* gone */ } }, 30000);
    await p.exited;
    clearTimeout(t);
    this.proc = null;
  }

  async restart() {
    await this.stop();
    await this.startPostmaster();
  }

  /** Stops the postmaster and removes the data directory. */
  async destroy() {
    await this.stop();
    // The postmaster's children end after it; give them a moment.
    await sleep(50);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

module.exports = { Postgres, PGBIN };
