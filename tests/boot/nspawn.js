'use strict';
/*
 * A Debian 12 container booted with a real systemd as its PID 1, for
 * tests that need systemd itself (socket activation, reload, journal).
 *
 *   const rootCache = await makeRoot();          // tests/boot/make-root.sh
 *   const c = await Container.boot(rootCache, { prepare: (dir) => ... });
 *   const r = await c.exec(['systemctl', 'is-active', 'foo']);
 *   await c.destroy();
 *
 * Container.boot copies the cached root (cp -a) to a fresh folder under
 * /var/tmp, lets `prepare(dir)` install into it, and runs
 *
 *   systemd-nspawn -D DIR --machine=NAME --boot --register=no --keep-unit --console=passive
 *
 * in the background (stdin /dev/null, console to a log file). The
 * container's PID 1 is the nspawn child whose NSpid ends in 1; commands run
 * inside with `nsenter -t PID1 -a -- env -i PATH=... CMD` (every namespace,
 * a clean environment). No private network: the container shares the
 * host's loopback, so a server on 127.0.0.1 here is reachable in there and
 * the other way round. Needs root. Every wait is bounded; the container is
 * stopped by PID (systemctl poweroff, then SIGKILL of its PID 1).
 */
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const HERE = __dirname;
const INSIDE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
/* For races against a child's exit: an unref'd timer does not keep the
 * process alive once the child is gone. */
function bound(ms) { return new Promise((r) => setTimeout(r, ms).unref()); }

/** Runs a command; resolves {code, signal, stdout, stderr, ms}. Kills it (SIGKILL, by PID) after timeoutMs. */
function run(cmd, args, { timeoutMs = 60000, input, onStderr } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const p = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out = { stdout: '', stderr: '', code: null, signal: null, timedOut: false };
    p.stdout.on('data', (d) => { out.stdout += d; });
    p.stderr.on('data', (d) => { out.stderr += d; if (onStderr) onStderr(String(d)); });
    p.on('error', reject);
    if (p.stdin) {
      p.stdin.on('error', () => {});   // EPIPE: the command did not read it all
      p.stdin.end(input);
    }
    const timer = setTimeout(() => { out.timedOut = true; try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      Object.assign(out, { code, signal, ms: Date.now() - t0 });
      resolve(out);
    });
  });
}

/** Makes (or reuses) the cached Debian root; resolves its path. */
async function makeRoot({ timeoutMs = 15 * 60000, log = () => {} } = {}) {
  const r = await run('bash', [path.join(HERE, 'make-root.sh')], {
    timeoutMs,
    onStderr: (s) => s.split('\n').filter(Boolean).forEach((l) => log(l)),
  });
  if (r.timedOut) throw new Error(`tests/boot/make-root.sh took longer than ${timeoutMs / 1000} s:\n${r.stderr}`);
  if (r.code !== 0) throw new Error(`tests/boot/make-root.sh failed (exit ${r.code}):\n${r.stderr}`);
  return r.stdout.trim().split('\n').pop();
}

function nsPid(pid) {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^NSpid:\s+(.*)$/m);
    return m ? m[1].trim().split(/\s+/).map(Number) : null;
  } catch { return null; }
}

function children(pid) {
  const out = [];
  let tasks = [];
  try { tasks = fs.readdirSync(`/proc/${pid}/task`); } catch { return out; }
  for (const t of tasks) {
    try {
      out.push(...fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
    } catch { /* task gone */ }
  }
  return out;
}

function alive(pid) {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

class Container {
  constructor(dir, name) {
    this.dir = dir;
    this.name = name;
    this.logPath = null;
    this.nspawn = null;
    this.pid1 = null;
    this.exited = null;
  }

  /**
   * Copies rootCache, calls prepare(dir), boots it and waits until
   * `systemctl is-system-running` says running or degraded.
   */
  static async boot(rootCache, { prepare, bootTimeoutMs = 90000, log = () => {} } = {}) {
    if (process.getuid() !== 0) throw new Error('booting a container needs root (systemd-nspawn, nsenter)');
    const base = fs.mkdtempSync('/var/tmp/tb-boot-');
    const dir = path.join(base, 'root');
    const name = `tb-boot-${process.pid}`;
    const c = new Container(dir, name);
    c.base = base;
    c.logPath = path.join(base, 'console.log');
    try {
      await c.start(rootCache, { prepare, bootTimeoutMs, log });
    } catch (e) {
      await c.destroy();
      throw e;
    }
    return c;
  }

  async start(rootCache, { prepare, bootTimeoutMs, log }) {
    const c = this;
    const dir = c.dir;
    let t0 = Date.now();
    const cp = await run('cp', ['-a', '--reflink=auto', rootCache, dir], { timeoutMs: 300000 });
    if (cp.code !== 0) throw new Error(`cp -a ${rootCache} ${dir} failed: ${cp.stderr}`);
    fs.rmSync(path.join(dir, '.tokenbroker-root-complete'), { force: true });
    c.timings = { copyMs: Date.now() - t0 };
    if (prepare) await prepare(dir);

    t0 = Date.now();
    const logFd = fs.openSync(c.logPath, 'a');
    c.args = ['-D', dir, `--machine=${c.name}`, '--boot', '--register=no', '--keep-unit', '--console=passive'];
    const p = spawn('systemd-nspawn', c.args, { stdio: ['ignore', logFd, logFd], detached: false });
    fs.closeSync(logFd);
    c.nspawn = p;
    p.on('exit', (code, signal) => { c.exited = { code, signal }; process.removeListener('exit', c.onExit); });
    // Should this process die without destroy(): take the container along.
    c.onExit = () => { if (c.pid1 && alive(c.pid1)) try { process.kill(c.pid1, 'SIGKILL'); } catch { /* gone */ } };
    process.on('exit', c.onExit);
    log(`systemd-nspawn ${c.args.join(' ')} (pid ${p.pid})`);

    // PID 1 of the container: the child of nspawn that is PID 1 in its
    // own PID namespace and runs systemd.
    const end = Date.now() + bootTimeoutMs;
    while (!c.pid1) {
      if (c.exited) throw new Error(`systemd-nspawn exited (${JSON.stringify(c.exited)}) before the container started; the machine cannot boot a container:\n${c.consoleLog()}`);
      if (Date.now() > end) throw new Error(`no container PID 1 under systemd-nspawn (pid ${p.pid}) after ${bootTimeoutMs} ms:\n${c.consoleLog()}`);
      for (const k of children(p.pid)) {
        const ns = nsPid(k);
        let comm = '';
        try { comm = fs.readFileSync(`/proc/${k}/comm`, 'utf8').trim(); } catch { /* gone */ }
        if (ns && ns.length > 1 && ns[ns.length - 1] === 1 && comm === 'systemd') c.pid1 = k;
      }
      if (!c.pid1) await sleep(50);
    }
    log(`container PID 1 is host pid ${c.pid1}`);

    // Booted: running (or degraded: something unrelated failed; shown).
    let state = '';
    while (true) {
      if (c.exited) throw new Error(`the container stopped while booting (${JSON.stringify(c.exited)}):\n${c.consoleLog()}`);
      const r = await c.exec(['systemctl', 'is-system-running'], { timeoutMs: 10000 });
      state = r.stdout.trim();
      if (state === 'running' || state === 'degraded') break;
      if (Date.now() > end) {
        throw new Error(`the container did not finish booting in ${bootTimeoutMs} ms (is-system-running: ${state || r.stderr.trim()}):\n${c.consoleLog()}`);
      }
      await sleep(200);
    }
    c.timings.bootMs = Date.now() - t0;
    c.systemState = state;
    if (state === 'degraded') {
      const f = await c.exec(['systemctl', '--failed', '--no-pager', '--no-legend']);
      log(`booted degraded; failed units:\n${f.stdout}`);
    }
  }

  consoleLog() {
    try { return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-60).join('\n'); } catch { return '(no console log)'; }
  }

  /** argv for running cmd inside: nsenter on PID 1, all namespaces, a clean environment. */
  nsenterArgs(cmd, env = {}) {
    const e = Object.entries({ PATH: INSIDE_PATH, LANG: 'C.UTF-8', SYSTEMD_PAGER: '', SYSTEMD_COLORS: '0', ...env })
      .map(([k, v]) => `${k}=${v}`);
    return ['-t', String(this.pid1), '-a', '--', '/usr/bin/env', '-i', ...e, ...cmd];
  }

  /** Runs cmd (an argv) inside the container; resolves {code, stdout, stderr}. */
  exec(cmd, { timeoutMs = 60000, env, input } = {}) {
    if (!this.pid1 || !alive(this.pid1)) return Promise.reject(new Error(`the container is not running (${cmd.join(' ')})`));
    return run('nsenter', this.nsenterArgs(cmd, env), { timeoutMs, input });
  }

  /** exec that must succeed; resolves stdout. */
  async sh(cmd, opts) {
    const r = await this.exec(cmd, opts);
    if (r.code !== 0) throw new Error(`inside the container: ${cmd.join(' ')} exited ${r.code}${r.timedOut ? ' (timed out)' : ''}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  /** Powers off (systemctl poweroff), else SIGKILLs PID 1; removes the root. Bounded. */
  async destroy({ keep = false, timeoutMs = 30000 } = {}) {
    const p = this.nspawn;
    const t0 = Date.now();
    if (p && !this.exited) {
      const gone = new Promise((r) => { if (this.exited) r(); else p.once('exit', r); });
      if (this.pid1 && alive(this.pid1)) {
        await run('nsenter', this.nsenterArgs(['systemctl', 'poweroff', '--no-block']), { timeoutMs: 10000 }).catch(() => {});
      }
      await Promise.race([gone, bound(timeoutMs)]);
      if (!this.exited) {
        // Killing PID 1 ends its whole PID namespace; nspawn then exits.
        if (this.pid1 && alive(this.pid1)) try { process.kill(this.pid1, 'SIGKILL'); } catch { /* gone */ }
        await Promise.race([gone, bound(5000)]);
      }
      if (!this.exited) try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
      await Promise.race([gone, bound(5000)]);
    }
    this.timings && (this.timings.poweroffMs = Date.now() - t0);
    if (!keep && this.base) fs.rmSync(this.base, { recursive: true, force: true });
    return this.exited;
  }
}

module.exports = { makeRoot, Container, run };
