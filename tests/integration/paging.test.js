'use strict';
/*
 * The paged listing (issue 9, "Nothing long on the loop"), on 20,000
 * connections written by tests/bench/seed before the daemon starts:
 *
 *  - walking GET /v1/connections page by page returns every connection
 *    exactly once, in byte order, while connections are added and revoked
 *    during the walk (those may or may not appear), including the one the
 *    cursor names;
 *  - filters state=, provider=, prefix=; a filter that matches little
 *    examines at most 10,000 connections a page and answers a short page
 *    with next;
 *  - bad input (limit 0, -1, 10^9, a cursor or prefix no name can hold,
 *    %00, %FF) is a 400, never a crash or a stall; events page with next;
 *  - a token handout while `tokenctl list --json` walks all 20,000 takes
 *    under 100 ms (max over the handouts during the walk);
 *  - tokenctl list: the summary line from the daemon's counters, --limit,
 *    --state, --prefix.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, iniProvider, waitFor, BUILD } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

const N = 20000;
const SEEDED = Array.from({ length: N }, (_, i) => `c${String(i + 1).padStart(7, '0')}`);
const SECRET = 'fake-secret-paging-W4';

let fp, b;

test.before(async () => {
  fp = await startFakeProvider({ expiresIn: 3600 });
  b = await Broker.prepare({
    logLevel: 'info',
    providers: {
      // the seeded connections' provider: never asked (their tokens last)
      fake: iniProvider({ ...fp.providerConf(), revoke_url: undefined }),
      cc: iniProvider({ ...fp.providerConf({ grant: 'client_credentials', authorize_url: undefined }), revoke_url: undefined }),
    },
    secrets: { 'fake.secret': SECRET },
  });
  b.writeConfig();
  const seed = spawnSync(path.join(BUILD, 'bench', 'seed'), ['-c', b.confPath, '-p', 'fake', '-n', String(N), '--prefix', 'c', '-q'],
    { cwd: b.dir, encoding: 'utf8', timeout: 120000 });
  b.finding(seed.stderr && /Sanitizer|runtime error/.test(seed.stderr) ? `seed: ${seed.stderr}` : '');
  assert.equal(seed.status, 0, `seed: ${seed.stdout}${seed.stderr}`);
  if (b.storeEngine === 'postgresql') {
    // The store matrix: the seeder writes SQLite; --copy-store moves the
    // 20,000 rows to this Broker's database, and the SQLite file goes.
    const cp = spawnSync(path.join(BUILD, 'tokenbrokerd'), ['-c', b.confPath, '--copy-store', b.db, b.pg.uri(b.pgDb)],
      { cwd: b.dir, encoding: 'utf8', timeout: 120000 });
    b.finding(/Sanitizer|runtime error/.test(cp.stderr ?? '') ? `copy-store: ${cp.stderr}` : '');
    assert.equal(cp.status, 0, `copy-store: ${cp.stdout}${cp.stderr}`);
    for (const f of ['', '-wal', '-shm']) fs.rmSync(`${b.db}${f}`, { force: true });
  }
  await b.launch();
});

test.after(async () => {
  const st = b && await b.stop();
  if (fp) await fp.close();
  assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
});

const byteLess = (x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)) < 0;

/* Every page of a listing, as the API answers it; asserts each is a 200. */
async function walk(query = '', { between } = {}) {
  const names = [], pages = [];
  let next = null;
  for (let i = 0; i < 1000; i++) {
    const q = [query, next !== null ? `after=${encodeURIComponent(next)}` : ''].filter(Boolean).join('&');
    const r = await b.api('GET', `/v1/connections${q ? `?${q}` : ''}`);
    assert.equal(r.status, 200, r.text);
    pages.push(r.json.connections.length);
    for (const c of r.json.connections) names.push(c.name);
    next = r.json.next ?? null;
    if (next === null) return { names, pages, rows: names.length };
    assert.equal(typeof next, 'string');
    if (between) await between(next, i);
  }
  throw new Error('more than 1000 pages');
}

function assertSortedUnique(names) {
  for (let i = 1; i < names.length; i++) {
    assert.ok(byteLess(names[i - 1], names[i]), `not in byte order or repeated at ${i}: ${names[i - 1]} then ${names[i]}`);
  }
}

test('paging returns every connection exactly once while connections are added and revoked', { timeout: 180000 }, async () => {
  const added = new Set(), revoked = new Set();
  let k = 0;
  const w = await walk('', {
    async between(next, i) {
      // the connection the cursor names goes away: the next page starts after it
      if (i % 3 === 0) {
        assert.equal((await b.api('DELETE', `/v1/connections/${next}`)).status, 200);
        revoked.add(next);
      }
      // one behind the cursor, one ahead, and new ones on both sides
      const behind = SEEDED[Math.max(0, SEEDED.indexOf(next) - 50 - i)];
      const ahead = SEEDED[Math.min(N - 1, SEEDED.indexOf(next) + 400 + i)];
      for (const v of [behind, ahead]) {
        if (revoked.has(v)) continue;
        assert.equal((await b.api('DELETE', `/v1/connections/${v}`)).status, 200);
        revoked.add(v);
      }
      for (const name of [`a-new-${i}`, `${next}-x`, `zz-new-${i}`, `c${String(k++).padStart(3, '0')}`]) {
        const r = await b.api('POST', '/v1/connections', { name, provider: 'cc' });
        assert.equal(r.status, 201, r.text);
        added.add(name);
      }
    },
  });
  assertSortedUnique(w.names);
  const seen = new Set(w.names);
  for (const name of SEEDED) {
    if (!revoked.has(name)) assert.ok(seen.has(name), `${name} (never touched) missing from the walk`);
  }
  for (const name of w.names) {
    assert.ok(SEEDED.includes(name) || added.has(name), `${name}: listed, but never existed`);
  }
  assert.ok(w.pages.length >= N / 1000, `${w.pages.length} pages`);
  assert.ok(w.pages.slice(0, -1).every((n) => n === 1000), `pages: ${w.pages.join(' ')}`);
  assert.ok(revoked.size > 20 && added.size > 60, `${revoked.size} revoked, ${added.size} added`);
  // The cursor of a page is its last name: the added ones behind it were not
  // seen, those ahead of it (the -x after the cursor, zz-*) were.
  assert.ok([...added].filter((n) => n.startsWith('zz-new-')).every((n) => seen.has(n)), 'zz-new-* added ahead of the walk are missing');
  assert.ok([...added].filter((n) => n.endsWith('-x')).every((n) => seen.has(n)), 'NAME-x added just after the cursor are missing');
  assert.ok(![...added].some((n) => n.startsWith('a-new-') && seen.has(n)), 'a-new-* added behind the cursor were listed');

  // Afterwards, a quiet walk lists exactly what exists.
  const status = (await b.api('GET', '/v1/status')).json.connections;
  const quiet = await walk();
  assertSortedUnique(quiet.names);
  assert.equal(quiet.rows, status.active + status.pending + status.needs_reauth);
  assert.equal(quiet.rows, N - revoked.size + added.size);
});

test('filters: state, provider, prefix; a filter that matches little examines at most 10,000 a page', { timeout: 120000 }, async () => {
  // The client_credentials connections the last test added have their
  // tokens (on PostgreSQL a new one waits for its lease: a heartbeat).
  await waitFor(async () => (await b.api('GET', '/v1/status')).json.connections.pending === 0,
    { timeoutMs: 30000, what: 'no pending connection left' });
  for (const name of ['p-one', 'p-two', 'p-three']) {
    const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
    assert.equal(r.status, 201, r.text);
  }
  const all = await walk();
  const pending = await walk('state=pending&limit=1000');
  assert.deepEqual(pending.names, ['p-one', 'p-three', 'p-two']);
  // 20,000+ connections, 10,000 examined a page: short (empty) pages with next
  assert.ok(pending.pages.length >= 3 && pending.pages.length <= Math.ceil(all.rows / 10000) + 1, `pages: ${pending.pages}`);
  const first = await b.api('GET', '/v1/connections?state=needs_reauth');
  assert.equal(first.status, 200);
  assert.deepEqual(first.json.connections, []);
  assert.equal(typeof first.json.next, 'string', 'a page that stopped at the scan bound says where to go on');

  const cc = await walk('provider=cc');
  assert.deepEqual(cc.names, all.names.filter((n) => !/^(c\d{7}|p-)/.test(n) || /-x$/.test(n)));
  assert.ok(cc.rows > 0);
  assert.deepEqual((await walk('provider=nosuch')).names, []);
  assert.deepEqual((await walk('state=active&provider=fake&limit=1000')).names.length,
    all.names.filter((n) => /^c\d{7}$/.test(n)).length);

  const pre = await walk('prefix=c00001&limit=7');
  assert.deepEqual(pre.names, all.names.filter((n) => n.startsWith('c00001')));
  assert.ok(pre.rows >= 90 && pre.rows <= 100, `${pre.rows}`);
  // a prefix ends the walk where its names end: no next after the last one
  const one = await b.api('GET', '/v1/connections?prefix=c00001&limit=10000');
  assert.equal(one.json.next, undefined);
  // prefix with a cursor inside, before and after its range
  const inside = await b.api('GET', '/v1/connections?prefix=c00001&after=c0000150&limit=3');
  assert.deepEqual(inside.json.connections.map((c) => c.name), all.names.filter((n) => n.startsWith('c00001') && n > 'c0000150').slice(0, 3));
  const before = await b.api('GET', '/v1/connections?prefix=c00001&after=b&limit=1');
  assert.equal(before.json.connections[0].name, pre.names[0]);
  const past = await b.api('GET', '/v1/connections?prefix=c00001&after=c00002');
  assert.deepEqual(past.json, { connections: [] });
  assert.deepEqual((await b.api('GET', '/v1/connections?prefix=nothing-has-this')).json, { connections: [] });
  // a row of a page is the connection as GET /v1/connections/NAME shows it
  const noTtl = ({ expires_in: _e, ...rest }) => rest;
  for (const q of ['prefix=p-', 'prefix=c0000100&limit=1', 'provider=cc&limit=3']) {
    for (const row of (await b.api('GET', `/v1/connections?${q}`)).json.connections) {
      const one = await b.api('GET', `/v1/connections/${row.name}`);
      assert.deepEqual(noTtl(row), noTtl(one.json), row.name);
    }
  }
  const pend = (await b.api('GET', '/v1/connections?prefix=p-one')).json.connections[0];
  assert.equal(pend.state, 'pending');
  assert.equal(typeof pend.authorization_pending_until, 'string');
  assert.equal(pend.identity, null);
  // empty values are no filter
  assert.equal((await b.api('GET', '/v1/connections?prefix=&after=&limit=5')).json.connections[0].name, all.names[0]);
});

test('bad input: a clear 400 or a correct page, never a crash or a stall', { timeout: 120000 }, async () => {
  const bad = [
    'limit=0', 'limit=-1', 'limit=1000000000', 'limit=10001', 'limit=abc', 'limit=', 'limit=%2B5', 'limit=5%00',
    'after=%FF', 'after=a%2Fb', 'after=%C3%A9t%C3%A9', 'after=a%00b', `after=${'a'.repeat(129)}`,
    'prefix=%FF', 'prefix=%C3%A9', 'prefix=a%00', 'prefix=a%20b', `prefix=${'c'.repeat(129)}`,
    'state=bogus', 'state=', 'provider=', `provider=${'p'.repeat(65)}`,
  ];
  for (const q of bad) {
    const r = await b.api('GET', `/v1/connections?${q}`);
    assert.equal(r.status, 400, `${q}: ${r.status} ${r.text.slice(0, 200)}`);
    assert.equal(r.json.error, 'invalid_request', q);
    assert.ok(r.json.error_description.length > 0);
  }
  const max = await b.api('GET', '/v1/connections?limit=10000');
  assert.equal(max.status, 200);
  assert.equal(max.json.connections.length, 10000);
  assert.equal(typeof max.json.next, 'string');
  // percent-encoded characters a name may hold are fine
  const enc = await b.api('GET', '/v1/connections?prefix=%63%30%30%30%30%30%31&limit=2');
  assert.equal(enc.status, 200);
  assert.equal(enc.json.connections.length, 2);
  assert.ok(enc.json.connections.every((c) => c.name.startsWith('c000001')), enc.text);
  // a cursor past everything: an empty last page
  assert.deepEqual((await b.api('GET', '/v1/connections?after=zzzzzzzzzz')).json, { connections: [] });

  for (const q of ['limit=0', 'limit=-1', 'limit=1000000000', 'limit=10001', 'before=-3', 'before=x', 'connection=%FF', 'limit=1%00']) {
    const r = await b.api('GET', `/v1/events?${q}`);
    assert.equal(r.status, 400, `events ${q}: ${r.status}`);
  }
  // events page with next (an id for before=), newest first, each once
  const whole = (await b.api('GET', '/v1/events?limit=10000')).json;
  assert.equal(whole.next, undefined);
  assert.ok(whole.events.length > 30, `${whole.events.length} events`);
  const ids = [];
  let before = null;
  for (let i = 0; i < 100; i++) {
    const r = await b.api('GET', `/v1/events?limit=7${before !== null ? `&before=${before}` : ''}`);
    assert.equal(r.status, 200);
    ids.push(...r.json.events.map((e) => e.id));
    if (r.json.next === undefined) break;
    assert.equal(r.json.next, r.json.events[6].id);
    before = r.json.next;
  }
  assert.deepEqual(ids, whole.events.map((e) => e.id));
  // the daemon is still fine
  assert.equal((await b.api('GET', '/v1/connections/c0000002/token')).status, 200);
});

test('a token handout during a full tokenctl list --json walk stays under 100 ms (250 ms under ASan)', { timeout: 120000 }, async () => {
  // tokenctl writes to a file, not through this process: the handouts
  // measured here compete with the daemon's listing, not with node reading
  // 10 MB of tokenctl's output.
  const outFile = path.join(b.dir, 'list.json');
  const fd = fs.openSync(outFile, 'w');
  const proc = spawn(path.join(BUILD, 'tokenctl'), ['--socket', b.socket, 'list', '--json'], { stdio: ['ignore', fd, 'pipe'] });
  fs.closeSync(fd);
  const list = { code: null, stderr: '' };
  proc.stderr.on('data', (d) => { list.stderr += d; });
  list.done = new Promise((resolve) => proc.on('exit', (code) => { list.code = code; resolve(); }));
  const lat = [];
  let served = 0;
  while (list.code === null && proc.exitCode === null) {
    const t0 = process.hrtime.bigint();
    const r = await b.api('GET', '/v1/connections/c0000002/token');
    lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
    assert.equal(r.status, 200, r.text);
    recordSecret(r.json.access_token);
    served++;
  }
  await list.done;
  assert.equal(list.code, 0, list.stderr);
  const arr = JSON.parse(fs.readFileSync(outFile, 'utf8'));
  assert.ok(arr.length >= N - 200, `${arr.length} rows`);
  assertSortedUnique(arr.map((c) => c.name));
  assert.ok(served >= 5, `only ${served} handouts during the walk`);
  const max = Math.max(...lat);
  const sorted = [...lat].sort((x, y) => x - y);
  console.log(`  ${served} handouts during the walk of ${arr.length}: p50 ${sorted[Math.floor(served / 2)].toFixed(2)} ms, max ${max.toFixed(2)} ms`);
  // 100 ms, generous for the plain build (the benchmark carries the real
  // target, 20 ms); ASan runs the same code 2-3 times slower.
  const bound = /asan/.test(path.basename(BUILD)) ? 250 : 100;
  assert.ok(max < bound, `a handout took ${max.toFixed(1)} ms during the listing (bound ${bound} ms)`);
});

test('tokenctl list: summary from the counters, --limit, --state, --prefix', { timeout: 120000 }, async () => {
  const st = (await b.api('GET', '/v1/status')).json.connections;
  const total = st.active + st.pending + st.needs_reauth;
  const fmt = (n) => n.toLocaleString('en-US');
  const parts = [['active', st.active], ['pending', st.pending], ['needs_reauth', st.needs_reauth]]
    .filter(([, n]) => n > 0).map(([s, n]) => `${fmt(n)} ${s}`).join(', ');

  const all = await b.ctl(['list']);
  assert.equal(all.code, 0, all.stderr);
  const lines = all.stdout.trimEnd().split('\n');
  assert.match(lines[0], /^NAME\s+PROVIDER\s+STATE/);
  assert.equal(lines.length - 2, total);
  assert.equal(lines[lines.length - 1], `${fmt(total)} connections: ${parts}`);
  assert.match(lines[lines.length - 1], /^\d{2},\d{3} connections: \d{2},\d{3} active, 3 pending$/);
  const names = lines.slice(1, -1).map((l) => l.split(/\s+/)[0]);
  assertSortedUnique(names);

  const lim = await b.ctl(['list', '--limit', '2500']);
  assert.equal(lim.code, 0, lim.stderr);
  const ll = lim.stdout.trimEnd().split('\n');
  assert.deepEqual(ll.slice(1, -1).map((l) => l.split(/\s+/)[0]), names.slice(0, 2500));
  assert.equal(ll[ll.length - 1], `2,500 shown; ${fmt(total)} connections: ${parts}`);

  const j = await b.ctl(['list', '--json', '--limit', '3', '--state', 'active', '--prefix', 'c0001']);
  assert.equal(j.code, 0, j.stderr);
  assert.deepEqual(JSON.parse(j.stdout).map((c) => c.name), names.filter((n) => n.startsWith('c0001')).slice(0, 3));
  const p = await b.ctl(['list', '--state', 'pending']);
  assert.deepEqual(p.stdout.trimEnd().split('\n').slice(1, -1).map((l) => l.split(/\s+/)[0]), ['p-one', 'p-three', 'p-two']);
  const none = await b.ctl(['list', '--json', '--provider', 'nosuch']);
  assert.deepEqual(JSON.parse(none.stdout), []);

  assert.equal((await b.ctl(['list', '--limit', '0'])).code, 2);
  assert.equal((await b.ctl(['list', '--limit', 'x'])).code, 2);
  assert.equal((await b.ctl(['list', 'extra'])).code, 2);
  const badState = await b.ctl(['list', '--state', 'bogus']);
  assert.equal(badState.code, 2);
  assert.match(badState.stderr, /state must be pending, active or needs_reauth/);
});
