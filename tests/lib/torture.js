'use strict';
/*
 * What the torture tests share (crash-torture.test.js, its 2,000-connection
 * variant and ha-torture.test.js): numbers from the environment, a seeded
 * generator (a failing schedule can be replayed), a bounded pool, a daemon
 * started without waiting (killed while it starts), connections made
 * through the code flow, and the Ledger: every access token handed out
 * checked against the provider (of its grant, not past its expiry),
 * connections lost and why, answers other than a token, and the provider's
 * verdicts (invalid_grant, a live daemon going back to an older refresh
 * token, an access token served before its refresh token was committed).
 *
 * Required after the caller has set TOKENBROKER_BUILD (crash-torture runs
 * a copy of the build): broker.js reads it once.
 */
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const { BUILD, httpGet, sleep } = require('./broker.js');

/** A number from the environment (dflt when unset); anything else throws. */
function num(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number: ${v}`);
  return n;
}

/* mulberry32: a small seeded generator, so a failing schedule can be replayed. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** fn(item, index) over items, at most `concurrency` at a time. */
async function pool(items, concurrency, fn) {
  let i = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (i < items.length) { const k = i++; await fn(items[k], k); }
  }));
}

/* Starts broker b's daemon without waiting for it (Broker.launch waits):
 * for a kill while it starts. */
function spawnRaw(b) {
  const log = fs.openSync(b.logPath, 'a');
  const env = { ...process.env, TOKENBROKER_LOG_LEVEL: b.opts.logLevel ?? 'info' };
  delete env.NOTIFY_SOCKET;
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', b.confPath], { stdio: ['ignore', log, log], env });
  fs.closeSync(log);
  return p;
}

/* Signals one daemon by its PID and waits (bounded) for it to exit. */
async function signalRaw(p, signal = 'SIGKILL', timeoutMs = 10000) {
  if (p.exitCode !== null || p.signalCode !== null) return;
  let timer;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill(signal);
  await Promise.race([gone, new Promise((r) => { timer = setTimeout(r, timeoutMs); })]);
  clearTimeout(timer);
  if (p.exitCode === null && p.signalCode === null) throw new Error(`pid ${p.pid} still runs ${timeoutMs} ms after ${signal}`);
}
const killRaw = (p) => signalRaw(p, 'SIGKILL');

/**
 * Starts broker b again after a SIGKILL. With probability `early` (by
 * rand) its daemon is first started and killed again while it starts
 * (loading the store, or refreshing what fell due while it was down);
 * track(p) is told of that daemon while it runs (p, then null), for the
 * test's cleanup. Every start is a new generation at fake provider fp.
 * beforeLaunch() runs just before the start that stays. Resolves
 * { ms, early }: from the call to the daemon answering.
 */
const RELAUNCH_DRAIN_MS = 100;

async function relaunch(b, { fp, rand, early, settleMs, track = () => {}, beforeLaunch = () => {} }) {
  // The killed daemon's last request may still wait, unread, in the
  // provider's socket (this process sees the exit before the data when
  // it is loaded): let the provider take it under the dead daemon's
  // generation, or a token issued to the dead one would count as the new
  // daemon's own and its grace reuse as going backwards (seen once in
  // crash-torture under ASan at load 10: "backwards 2").
  await sleep(RELAUNCH_DRAIN_MS);
  const r0 = Date.now();
  let wasEarly = false;
  if (rand() < early) {
    fp.newGeneration();
    const p = spawnRaw(b);
    track(p);
    await sleep(2 + rand() * 80);
    await killRaw(p);
    track(null);
    wasEarly = true;
    await sleep(settleMs);
  }
  fp.newGeneration();
  beforeLaunch();
  await b.launch();
  return { ms: Date.now() - r0, early: wasEarly };
}

function tail(text, lines = 40) { return text.split('\n').slice(-lines).join('\n'); }

/**
 * Makes each connection of names on node b with provider `provider`
 * through the code flow (an auto-approving provider: its authorize URL
 * redirects to b's callback at once), `concurrency` at a time.
 */
async function connectAll(b, names, provider, { concurrency = 8 } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  try {
    await pool(names, concurrency, async (name) => {
      const r = await b.api('POST', '/v1/connections', { name, provider });
      assert.equal(r.status, 201, `create ${name}: ${r.text}`);
      const loc = await new Promise((resolve, reject) => {
        const req = http.get(r.json.authorize_url, { agent, timeout: 10000 }, (res) => { res.resume(); resolve(res.headers.location); });
        req.on('timeout', () => req.destroy(new Error('authorize: timed out')));
        req.on('error', reject);
      });
      assert.ok(loc, `no redirect for ${name}`);
      const cb = await httpGet(loc);
      assert.equal(cb.status, 200, `callback ${name}: ${cb.status} ${cb.text.slice(0, 200)}`);
    });
  } finally {
    agent.destroy();
  }
}

/**
 * The bookkeeping of a torture against tests/lib/fake-provider.js (fp):
 * which grant each connection is, which connections were lost and why,
 * and what the readers were handed. life (optional): grant -> expires_in
 * in seconds, for the check that no token is served past its expiry.
 */
class Ledger {
  constructor(fp, names, { life = null, nodeNames = [''] } = {}) {
    this.fp = fp;
    this.names = names;
    this.life = life;
    this.nodeNames = nodeNames;
    this.grantOf = new Map();
    this.lost = new Map();   // name -> first reason
    this.reader = {
      ok: 0, mismatch: 0, expired: 0, needsReauth: 0, other: {}, otherSeen: [], down: 0,
      perNode: nodeNames.map(() => 0), slowest: {},
    };
    this.expiredSeen = [];
  }

  lose(name, why) { if (!this.lost.has(name)) this.lost.set(name, why); }

  /** Which provider grant each connection is, from the access token node b serves; distinct. */
  async learnGrants(b) {
    await pool(this.names, 16, async (name) => {
      const r = await b.api('GET', `/v1/connections/${name}/token`);
      assert.equal(r.status, 200, `token ${name}: ${r.text}`);
      const iss = this.fp.markSeen(r.json.access_token);
      assert.ok(iss, `${name}: the provider never issued the access token it serves`);
      this.grantOf.set(name, iss.grant);
    });
    assert.equal(new Set(this.grantOf.values()).size, this.names.length, 'two connections share a grant');
  }

  grant(name) { return this.fp.grants.get(this.grantOf.get(name)); }

  /* Where a node's answer came from, for messages: '' with one daemon. */
  where(i) { return this.nodeNames[i] ? `node ${this.nodeNames[i]} ` : ''; }

  /**
   * One access token handed out by node i for name, asked for at sentAt:
   * of its grant, and (with life) not past its expiry. Resolves the
   * provider's record of it, or null.
   */
  check(i, name, tok, sentAt) {
    const iss = this.fp.markSeen(tok);
    if (!iss || iss.grant !== this.grantOf.get(name)) {
      this.reader.mismatch++;
      this.lose(name, `${this.where(i)}served an access token of another or no grant`);
      return null;
    }
    if (this.life) {
      const expiry = iss.at + this.life.get(iss.grant) * 1000;
      if (sentAt > expiry) {
        this.reader.expired++;
        if (this.expiredSeen.length < 10) this.expiredSeen.push(`${this.where(i)}${name}: ${sentAt - expiry} ms past expiry`);
        return iss;
      }
    }
    this.reader.ok++;
    this.reader.perNode[i]++;
    return iss;
  }

  /** A reader's answer r from node i (what: the request, for messages). */
  answer(i, name, r, sentAt, what) {
    if (r.status === 200) this.check(i, name, r.json.access_token, sentAt);
    else if (r.status === 409) {
      this.reader.needsReauth++;
      this.lose(name, `${this.where(i)}${what}: 409 ${r.json?.error}`);
    } else {
      this.reader.other[r.status] = (this.reader.other[r.status] || 0) + 1;
      // what the daemon said (an error text: never a token) and to which request
      if (this.reader.otherSeen.length < 10) {
        this.reader.otherSeen.push(`${this.where(i)}${what} ${name}: ${r.status} ${r.json?.error_description ?? ''}`);
      }
    }
  }

  /** Notes the slowest answer of a kind. */
  took(kind, ms, what) {
    if (!(ms <= (this.reader.slowest[kind]?.ms ?? -1))) this.reader.slowest[kind] = { ms, what };
  }

  /** Every connection listed (paged) and active on node b (node index i); strict: exactly names.length listed. */
  async checkListed(b, i, when, { strict = false } = {}) {
    const byName = new Map();
    let after = '';
    for (let pages = 0; ; pages++) {
      assert.ok(pages <= this.names.length / 1000 + 1, `${when}: the listing did not end after ${pages} pages`);
      const r = await b.api('GET', `/v1/connections?limit=1000${after ? `&after=${after}` : ''}`, undefined, { timeoutMs: 30000 });
      assert.equal(r.status, 200, r.text);
      for (const c of r.json.connections) byName.set(c.name, c);
      if (!r.json.next) break;
      after = encodeURIComponent(r.json.next);
    }
    for (const name of this.names) {
      const c = byName.get(name);
      if (!c) this.lose(name, `${when}: missing${this.nodeNames[i] ? ` on node ${this.nodeNames[i]}` : ''}`);
      else if (c.state !== 'active') this.lose(name, `${when}: ${c.state}${this.nodeNames[i] ? ` on node ${this.nodeNames[i]}` : ''} (${c.last_error})`);
    }
    if (strict) assert.equal(byName.size, this.names.length, `${when}: ${byName.size} connections listed`);
  }

  /**
   * A refresh through node b answered r (200, active), accepted by the
   * provider (since `since`, and in generation gen when given), the grant
   * not revoked; otherwise name is lost. Resolves true when it held.
   */
  refreshHeld(name, r, when, { since, gen } = {}) {
    const g = this.grant(name);
    if (r.status !== 200) { this.lose(name, `${when}: refresh answered ${r.status} ${r.text.slice(0, 200)}`); return false; }
    if (r.json.state !== 'active') { this.lose(name, `${when}: state ${r.json.state} after refresh`); return false; }
    if (g.revoked) { this.lose(name, `${when}: grant revoked at the provider`); return false; }
    if (!g.lastOk || g.lastOk.time < since || (gen !== undefined && g.lastOk.gen !== gen)) {
      const last = g.lastOk ? ` (its last acceptance ${since - g.lastOk.time} ms before, generation ${g.lastOk.gen})` : '';
      this.lose(name, `${when}: refresh answered 200 but the provider accepted nothing${last}`);
      return false;
    }
    return true;
  }

  /**
   * Whether the provider accepted a refresh of name's grant at or after
   * since (ms): false when a refresh answered 200 joined one that was in
   * flight, or committed on the lease holder, before since.
   */
  acceptedSince(name, since) {
    const g = this.grant(name);
    return Boolean(g.lastOk && g.lastOk.time >= since);
  }

  /** Anything that stops a torture at once. */
  broken() {
    const s = this.fp.stats;
    return s.invalidGrant > 0 || s.graceSameGeneration > 0 || s.graceAfterSeen > 0 || this.lost.size > 0;
  }

  /** Refreshes per connection (min, max). */
  refreshesPerGrant() {
    const per = [...this.grantOf.values()].map((gid) => this.fp.grants.get(gid).refreshes);
    return { min: Math.min(...per), max: Math.max(...per) };
  }

  /** The provider's and the readers' lines of a report, and the first losses and rejections (t0: the start). */
  report(t0) {
    const s = this.fp.stats;
    const r = this.reader;
    const per = this.refreshesPerGrant();
    const lines = [
      `  provider: grace reuses accepted ${s.graceAccepted} (a kill between its 200 and the commit), backwards ${s.graceSameGeneration}, ` +
        `served-before-commit ${s.graceAfterSeen}, reuse refused ${s.reuseRefused}, unknown ${s.unknownToken}, revoked ${s.revokedGrant}; ` +
        `refreshes per connection min ${per.min} max ${per.max}`,
      `  readers: ${r.ok} tokens checked${this.nodeNames.length > 1 ? ` (${this.nodeNames.join('/')} ${r.perNode.join('/')})` : ''}, ` +
        `${r.mismatch} mismatches, ${r.expired} expired, ${r.needsReauth} needs_reauth, other ${JSON.stringify(r.other)}, ${r.down} while down`,
    ];
    if (Object.keys(r.slowest).length) {
      lines.push(`  slowest answers: ${Object.entries(r.slowest).map(([k, v]) => `${k}: ${v.ms} ms (${v.what})`).join('; ')}`);
    }
    for (const o of r.otherSeen) lines.push(`  reader answer: ${o}`);
    for (const e of this.expiredSeen) lines.push(`  EXPIRED ${e}`);
    for (const [name, why] of [...this.lost].slice(0, 20)) lines.push(`  LOST ${name}: ${why}`);
    for (const rj of this.fp.rejections.slice(0, 20)) lines.push(`  REJECTED grant ${rj.grant}: ${rj.reason} at +${rj.time - t0} ms`);
    return lines.join('\n');
  }

  /** The verdicts every torture asserts. */
  assertClean() {
    const s = this.fp.stats;
    const r = this.reader;
    assert.equal(this.lost.size, 0, `lost connections: ${[...this.lost].slice(0, 5).map(([n, w]) => `${n}: ${w}`).join('; ')}`);
    assert.equal(s.invalidGrant, 0, 'a refresh token the provider considers dead was presented');
    assert.equal(s.graceSameGeneration, 0, 'a live daemon went back to an older refresh token');
    assert.equal(s.graceAfterSeen, 0, 'an access token was served before its refresh token was committed');
    assert.equal(r.mismatch, 0);
    assert.equal(r.needsReauth, 0);
    assert.equal(r.expired, 0, `tokens served past their expiry: ${this.expiredSeen.join('; ')}`);
    // Every answer of a running daemon is a token: a 404, 500, 503 or 504
    // means a connection went missing or could not be served for a while.
    assert.deepEqual(r.other, {}, `readers got answers other than 200: ${r.otherSeen.join('; ')}`);
  }
}

module.exports = { num, prng, pool, spawnRaw, signalRaw, killRaw, relaunch, tail, connectAll, Ledger, sleep };
