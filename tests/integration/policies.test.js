'use strict';
/* Operator policies: notify_command on needs_reauth and recovery (rate
 * limited, no secrets), refresh_at_least for idle refresh tokens, a
 * per-provider cap on requests in flight, backoff_max, socket mode/group. */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { Broker, followAuthorize, waitFor, sleep, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

async function activate(b, name, provider = 'fake') {
  const r = await b.api('POST', '/v1/connections', { name, provider });
  assert.ok(r.status === 201 || r.status === 200, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
}

const refreshes = (fp, since = 0) => fp.requests.filter((r) => r.path === '/token' && r.params.grant_type === 'refresh_token' && r.time >= since);

test('notify_command runs on needs_reauth (rate limited) and on recovery, without secrets', { timeout: 90000 }, async (t) => {
  const fp = await startFakeProvider();
  const b = await Broker.prepare();
  const out = path.join(b.dir, 'notified.log');
  const script = path.join(b.dir, 'notify.sh');
  fs.writeFileSync(script, `#!/bin/sh\n{ echo "argv=$*"; env | grep '^TOKENBROKER_' | sort; echo --; } >> ${out}\n`, { mode: 0o755 });
  b.opts = {
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'notify-secret-value' },
    broker: { notify_command: script, notify_interval: '1h' },
  };
  b.writeConfig();
  await b.launch();
  t.after(async () => { await b.stop(); await fp.close(); });

  await activate(b, 'n');
  fp.respond = (req) => (req.path === '/token' ? { status: 400, body: { error: 'invalid_grant', error_description: 'consent revoked' } } : null);
  assert.equal((await b.api('POST', '/v1/connections/n/refresh')).status, 409);
  await waitFor(() => fs.existsSync(out) && /^--$/m.test(fs.readFileSync(out, 'utf8')), { timeoutMs: 5000, what: 'the notification' });
  let text = fs.readFileSync(out, 'utf8');
  assert.match(text, /argv=needs-reauth n/);
  assert.match(text, /TOKENBROKER_CONNECTION=n\n/);
  assert.match(text, /TOKENBROKER_PROVIDER=fake\n/);
  assert.match(text, /TOKENBROKER_EVENT=needs-reauth\n/);
  assert.match(text, /TOKENBROKER_REASON=HTTP 400: invalid_grant: consent revoked/);
  for (const x of fp.issued) {
    assert.ok(!text.includes(x.access_token) && !(x.refresh_token && text.includes(x.refresh_token)), 'a token reached notify_command');
  }
  assert.ok(!text.includes('notify-secret-value'));

  // Again within notify_interval: no second run.
  assert.equal((await b.api('POST', '/v1/connections/n/refresh')).status, 409);
  await sleep(1000);
  // one record a run, ended by a line "--" (TOKENBROKER_REAUTH_URL's
  // base64url token may hold "--" itself: count whole lines)
  assert.equal((fs.readFileSync(out, 'utf8').match(/^--$/gm) || []).length, 1, 'notify_command was not rate limited');

  // Re-authorized: the recovery is told.
  fp.respond = null;
  await activate(b, 'n');
  await waitFor(() => fs.readFileSync(out, 'utf8').includes('TOKENBROKER_EVENT=recovered'), { timeoutMs: 5000, what: 'the recovery notification' });
  text = fs.readFileSync(out, 'utf8');
  assert.match(text, /argv=recovered n/);
});

test('refresh_at_least refreshes long-lived tokens; max_in_flight caps one provider; backoff_max caps retries', { timeout: 150000 }, async (t) => {
  const fp = await startFakeProvider({ expiresIn: 3600 });
  let inFlight = 0, maxSeen = 0, slow = false;
  fp.respond = async (req) => {
    if (req.path !== '/token' || !slow) return null;
    inFlight++;
    maxSeen = Math.max(maxSeen, inFlight);
    await sleep(300);
    inFlight--;
    return null;
  };
  // 'fake' has refresh_at_least; 'steady' (the same provider, another
  // client) has not, so its connection refreshes only when it must.
  const b = await Broker.start({
    providers: {
      fake: iniProvider(fp.providerConf({ refresh_at_least: '2s', max_in_flight: 1 })),
      steady: iniProvider(fp.providerConf({ client_id: 'steady-client' })),
    },
    secrets: { 'fake.secret': 'policy-secret' },
    broker: { backoff_max: '1s' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  const busy = ['a', 'b', 'c', 'd'];
  for (const n of busy) await activate(b, n);
  await activate(b, 'e', 'steady');

  // Which provider grant each connection is (the fake provider keeps the
  // grant across rotations), and whose refresh token a request presented.
  const grantOfRt = (rt) => fp.issued.find((x) => x.refresh_token === rt)?.grant;
  const grants = {};
  for (const n of [...busy, 'e']) {
    const r = await b.api('GET', `/v1/connections/${n}/token`);
    assert.equal(r.status, 200, r.text);
    grants[n] = fp.issued.find((x) => x.access_token === r.json.access_token)?.grant;
    assert.ok(grants[n], `${n}: the provider never issued its access token`);
  }
  assert.equal(new Set(Object.values(grants)).size, 5, 'two connections share a grant');
  const refreshesOf = (n, since) => refreshes(fp, since).filter((r) => grantOfRt(r.params.refresh_token) === grants[n]);

  // refresh_at_least = 2 s on a 1 h token: EACH connection of 'fake'
  // refreshes every ~2 s; 'e' of 'steady' not at all.
  const t0 = Date.now();
  const counts = (since) => busy.map((n) => `${n}: ${refreshesOf(n, since).length}`).join(', ');
  await waitFor(() => busy.every((n) => refreshesOf(n, t0).length >= 3), { timeoutMs: 15000, what: `three idle refreshes of each of ${busy.join(', ')}` })
    .catch((e) => { throw new Error(`${e.message}; refreshes: ${counts(t0)}`); });
  assert.equal(refreshesOf('e', t0).length, 0, 'a connection of a provider without refresh_at_least was refreshed');

  // max_in_flight = 1: concurrent demands reach the provider one at a time.
  slow = true;
  const answers = await Promise.all(busy.map((n) => b.api('POST', `/v1/connections/${n}/refresh`)));
  slow = false;
  assert.ok(answers.every((a) => a.status === 200), answers.map((a) => a.status).join(','));
  assert.equal(maxSeen, 1, `the provider saw ${maxSeen} requests at once with max_in_flight = 1`);

  // backoff_max = 1 s: the retries of ONE connection (of a provider without
  // refresh_at_least, so nothing else makes it retry) come 1..2 s apart
  // however many failures. Uncapped, the delays would grow as 1 + rand(2^n) s.
  let fails = 6;
  fp.respond = (req) => (req.path === '/token' && grantOfRt(req.params.refresh_token) === grants.e && fails-- > 0
    ? { status: 500, body: {} } : null);
  const t1 = Date.now();
  assert.equal((await b.api('POST', '/v1/connections/e/refresh')).status, 503);
  const gaps = () => refreshesOf('e', t1).map((r, k, a) => (k ? ((r.time - a[k - 1].time) / 1000).toFixed(2) : null)).slice(1).join(', ');
  await waitFor(() => refreshesOf('e', t1).length >= 7, { timeoutMs: 20000, what: 'six retries of e' })
    .catch((e) => { throw new Error(`${e.message}; retried after ${gaps()} s`); });
  const times = refreshesOf('e', t1).map((r) => r.time);
  for (let k = 1; k < 7; k++) {
    const gap = (times[k] - times[k - 1]) / 1000;
    assert.ok(gap >= 0.9 && gap <= 2.5, `retry ${k} of e after ${gap.toFixed(2)} s with backoff_max 1 s`);
  }
  await waitFor(async () => (await b.api('GET', '/v1/connections/e')).json?.state === 'active', { what: 'e active after the retries' });
  fp.respond = null;
});

test('socket_mode and socket_group', { timeout: 90000 }, async (t) => {
  const b = await Broker.start({ providers: {}, broker: { socket_mode: '0660', socket_group: 'daemon' } });
  t.after(async () => { await b.stop(); });
  const st = fs.statSync(b.socket);
  assert.equal(st.mode & 0o777, 0o660);
  const gid = Number(require('node:child_process').execFileSync('getent', ['group', 'daemon'], { encoding: 'utf8' }).split(':')[2]);
  assert.equal(st.gid, gid);
});
