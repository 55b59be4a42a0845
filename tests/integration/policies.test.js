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

async function activate(b, name) {
  const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
  assert.ok(r.status === 201 || r.status === 200, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
}

const refreshes = (fp, since = 0) => fp.requests.filter((r) => r.path === '/token' && r.params.grant_type === 'refresh_token' && r.time >= since);

test('notify_command runs on needs_reauth (rate limited) and on recovery, without secrets', { timeout: 60000 }, async (t) => {
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
  await waitFor(() => fs.existsSync(out) && fs.readFileSync(out, 'utf8').includes('--'), { timeoutMs: 5000, what: 'the notification' });
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
  assert.equal(fs.readFileSync(out, 'utf8').split('--').length - 1, 1, 'notify_command was not rate limited');

  // Re-authorized: the recovery is told.
  fp.respond = null;
  await activate(b, 'n');
  await waitFor(() => fs.readFileSync(out, 'utf8').includes('TOKENBROKER_EVENT=recovered'), { timeoutMs: 5000, what: 'the recovery notification' });
  text = fs.readFileSync(out, 'utf8');
  assert.match(text, /argv=recovered n/);
});

test('refresh_at_least refreshes long-lived tokens; max_in_flight caps one provider; backoff_max caps retries', { timeout: 90000 }, async (t) => {
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
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf({ refresh_at_least: '2s', max_in_flight: 1 })) },
    secrets: { 'fake.secret': 'policy-secret' },
    broker: { backoff_max: '1s' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  for (const n of ['a', 'b', 'c', 'd']) await activate(b, n);

  // refresh_at_least = 2 s on a 1 h token: each connection refreshes within ~2 s.
  const t0 = Date.now();
  await waitFor(() => new Set(refreshes(fp, t0).map((r) => r.params.refresh_token)).size >= 8, { timeoutMs: 15000, what: 'idle refreshes' });

  // max_in_flight = 1: concurrent demands reach the provider one at a time.
  slow = true;
  const answers = await Promise.all(['a', 'b', 'c', 'd'].map((n) => b.api('POST', `/v1/connections/${n}/refresh`)));
  slow = false;
  assert.ok(answers.every((a) => a.status === 200), answers.map((a) => a.status).join(','));
  assert.equal(maxSeen, 1, `the provider saw ${maxSeen} requests at once with max_in_flight = 1`);

  // backoff_max = 1 s: retries come every 1..2 s however many failures.
  let fails = 5;
  fp.respond = (req) => (req.path === '/token' && fails-- > 0 ? { status: 500, body: {} } : null);
  const t1 = Date.now();
  assert.equal((await b.api('POST', '/v1/connections/a/refresh')).status, 503);
  await waitFor(() => refreshes(fp, t1).filter((r) => r.params.refresh_token && true).length >= 6, { timeoutMs: 20000, what: 'retries' });
  const times = refreshes(fp, t1).map((r) => r.time);
  for (let k = 1; k < Math.min(times.length, 5); k++) {
    const gap = (times[k] - times[k - 1]) / 1000;
    assert.ok(gap <= 2.6, `retry ${k} after ${gap.toFixed(2)} s with backoff_max 1 s`);
  }
  fp.respond = null;
});

test('socket_mode and socket_group', { timeout: 30000 }, async (t) => {
  const b = await Broker.start({ providers: {}, broker: { socket_mode: '0660', socket_group: 'daemon' } });
  t.after(async () => { await b.stop(); });
  const st = fs.statSync(b.socket);
  assert.equal(st.mode & 0o777, 0o660);
  const gid = Number(require('node:child_process').execFileSync('getent', ['group', 'daemon'], { encoding: 'utf8' }).split(':')[2]);
  assert.equal(st.gid, gid);
});
