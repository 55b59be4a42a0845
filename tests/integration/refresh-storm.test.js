'use strict';
/*
 * A refresh storm (issue 9, "A refresh storm is absorbed"), small enough
 * for CI: 2,000 connections written by tests/bench/seed, every one due at
 * once when the daemon starts, refreshed through the fake provider
 * (rotating: each refresh token is good once; its answers held 5 ms so
 * requests pile up). Checks that
 *  - every connection is refreshed, each seeded refresh token presented
 *    exactly once, no invalid_grant;
 *  - the provider never has more than max_in_flight (16) requests at
 *    once, and did have many at once (or the storm shows nothing);
 *  - token handouts (from a process of their own) keep answering during
 *    the storm: every one a 200 with a token not past its expiry, p99
 *    under a generous bound (100 ms, 250 ms under ASan; the slowest under
 *    4 times that; tests/bench/storm.sh carries the real targets);
 *    afterwards every connection hands out a token the provider issued.
 * The crash tortures (crash-torture*.test.js) kill the daemon during
 * refreshes; this one lets a storm run and watches the handouts.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, iniProvider, BUILD } = require('../lib/broker.js');

const N = 2000;
const MAX_IN_FLIGHT = 16;
const HOLD_MS = 5;
const SECRET = 'fake-secret-storm-Q7';
const ASAN = /asan/.test(path.basename(BUILD));
const name = (i) => `s${String(i).padStart(7, '0')}`;

/* The handouts run in a process of their own: this one is the provider,
 * busy with the storm, and would time its own delays. Until its stdin
 * closes it asks for random connections' tokens, one at a time, then
 * prints {lat: [ms...], bad: [...], issued: [[name, token]...]}. */
const HANDOUTS = `
const http = require('node:http');
const [sock, n] = process.argv.slice(1);
const lat = [], bad = [], issued = [];
let stop = false;
process.stdin.on('data', () => {}); process.stdin.on('end', () => { stop = true; });
const get = (p) => new Promise((resolve) => {
  const req = http.request({ socketPath: sock, path: p, method: 'GET' }, (res) => {
    let d = ''; res.on('data', (c) => { d += c; }); res.on('end', () => resolve({ status: res.statusCode, text: d }));
  });
  req.on('error', (e) => resolve({ status: 0, text: String(e) }));
  req.end();
});
(async () => {
  while (!stop) {
    const c = 's' + String(1 + Math.floor(Math.random() * Number(n))).padStart(7, '0');
    const s = process.hrtime.bigint();
    const r = await get('/v1/connections/' + c + '/token');
    lat.push(Number(process.hrtime.bigint() - s) / 1e6);
    let j = null; try { j = JSON.parse(r.text); } catch {}
    if (r.status !== 200 || !j || !j.access_token || !(j.expires_in > 0)) bad.push(c + ': ' + r.status + ' expires_in ' + (j && j.expires_in));
    else if (j.access_token.startsWith('st-at-')) issued.push([c, j.access_token]);
  }
  process.stdout.write(JSON.stringify({ lat, bad, issued }));
})();
`;

let fp, b;
const prov = {
  inFlight: 0, peak: 0, refreshed: 0, invalid: 0,
  seededSeen: new Set(),     // seeded refresh tokens presented (each once)
  issued: new Map(),         // refresh token we issued -> used?
  accessIssued: new Map(),   // access token we issued -> Date.now() at issue
};

test.before(async () => {
  fp = await startFakeProvider({ expiresIn: 3600, record: false });
  // Every refresh token the seeder wrote is unknown to the fake provider:
  // accepted once (as a real provider would have issued it), then every
  // token is single-use.
  fp.respond = async (rec) => {
    if (rec.path !== '/token' || rec.params.grant_type !== 'refresh_token') return null;
    const rt = rec.params.refresh_token;
    let ok;
    if (prov.issued.has(rt)) {
      ok = !prov.issued.get(rt);
      prov.issued.set(rt, true);
    } else {
      ok = !prov.seededSeen.has(rt);
      prov.seededSeen.add(rt);
    }
    if (!ok) {
      prov.invalid++;
      return { status: 400, body: { error: 'invalid_grant' } };
    }
    prov.inFlight++;
    prov.peak = Math.max(prov.peak, prov.inFlight);
    await new Promise((r) => setTimeout(r, HOLD_MS));
    prov.inFlight--;
    const body = {
      access_token: `st-at-${crypto.randomBytes(18).toString('base64url')}`,
      refresh_token: `st-rt-${crypto.randomBytes(18).toString('base64url')}`,
      token_type: 'Bearer', expires_in: 3600,
    };
    prov.issued.set(body.refresh_token, false);
    prov.accessIssued.set(body.access_token, Date.now());
    prov.refreshed++;
    return { status: 200, body };
  };
  b = await Broker.prepare({
    logLevel: 'notice',
    providers: {
      fake: iniProvider({ ...fp.providerConf(), revoke_url: undefined, max_in_flight: MAX_IN_FLIGHT }),
    },
    secrets: { 'fake.secret': SECRET },
  });
  b.writeConfig();
  const seed = spawnSync(path.join(BUILD, 'bench', 'seed'),
    ['-c', b.confPath, '-p', 'fake', '-n', String(N), '--prefix', 's', '--due-within', '0', '-q'],
    { cwd: b.dir, encoding: 'utf8', timeout: 120000 });
  b.finding(seed.stderr && /Sanitizer|runtime error/.test(seed.stderr) ? `seed: ${seed.stderr}` : '');
  assert.equal(seed.status, 0, `seed: ${seed.stdout}${seed.stderr}`);
});

test.after(async () => {
  const st = b && await b.stop();
  if (fp) await fp.close();
  assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
});

test(`${N} connections due at once: all refreshed within max_in_flight, handouts answer throughout`, { timeout: 180000 }, async () => {
  await b.launch();
  const refreshedOk = async () => (await b.api('GET', '/v1/status')).json.refreshes_ok ?? 0;
  const child = spawn(process.execPath, ['-e', HANDOUTS, b.socket, String(N)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (c) => { out += c; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const t0 = Date.now();
  let refreshing = 0;
  while (!(prov.refreshed >= N && (await refreshedOk()) >= N)) {
    if (Date.now() - t0 > 150000) {
      child.kill();
      assert.fail(`storm not over after 150 s: ${prov.refreshed} refreshed at the provider`);
    }
    await new Promise((r) => setTimeout(r, 20));
    refreshing++;
  }
  const secs = (Date.now() - t0) / 1000;
  child.stdin.end();
  await exited;
  const { lat, bad, issued } = JSON.parse(out);

  assert.deepEqual(bad.slice(0, 5), [], 'handouts during the storm');
  for (const [c, at] of issued) assert.ok(prov.accessIssued.has(at), `${c}: a token the provider never issued`);
  assert.equal(prov.invalid, 0, 'invalid_grant: a refresh token presented twice');
  assert.equal(prov.seededSeen.size, N, 'every seeded refresh token presented once');
  assert.equal(prov.refreshed, N);
  assert.equal(await refreshedOk(), N);
  assert.ok(prov.peak <= MAX_IN_FLIGHT, `the provider saw ${prov.peak} requests at once (max_in_flight ${MAX_IN_FLIGHT})`);
  assert.ok(prov.peak >= 4, `only ${prov.peak} requests at once: the storm did not pile up`);

  const served = lat.length;
  const sorted = [...lat].sort((x, y) => x - y);
  const max = sorted.at(-1) ?? 0;
  console.log(`  storm of ${N}: ${secs.toFixed(1)} s, provider peak ${prov.peak} in flight; ${served} handouts: ` +
    `p50 ${(sorted[Math.floor(served / 2)] ?? 0).toFixed(2)} ms, ` +
    `p99 ${(sorted[Math.floor(served * 0.99)] ?? 0).toFixed(2)} ms, max ${max.toFixed(2)} ms`);
  assert.ok(served >= 5 && refreshing >= 1, `only ${served} handouts while the storm ran`);
  // Generous, the benchmark (tests/bench/storm.sh) carries the real
  // targets (p99 2 ms, max 20 ms): p99 under 100 ms (250 under ASan), and
  // no handout held for as long as the storm a turn would take in one go.
  // The slowest alone is not asserted tighter: on a loaded 2-core machine
  // a handout waits for the CPU, not for the daemon, up to 250 ms seen.
  const p99 = sorted[Math.floor(served * 0.99)] ?? 0;
  const bound = ASAN ? 250 : 100;
  assert.ok(p99 < bound, `handout p99 ${p99.toFixed(1)} ms during the storm (bound ${bound} ms)`);
  assert.ok(max < 4 * bound, `a handout took ${max.toFixed(1)} ms during the storm (bound ${4 * bound} ms)`);

  // afterwards every connection hands out a token the provider issued
  for (let i = 1; i <= N; i++) {
    const r = await b.api('GET', `/v1/connections/${name(i)}/token`);
    assert.equal(r.status, 200, `${name(i)}: ${r.text}`);
    assert.ok(prov.accessIssued.has(r.json.access_token), `${name(i)}: not refreshed`);
    assert.ok(r.json.expires_in > 3000, `${name(i)}: expires_in ${r.json.expires_in}`);
  }
});
