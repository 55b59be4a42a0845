'use strict';
/* GET /metrics passes `promtool check metrics` (Debian's prometheus) and its
 * counters move as refreshes happen; events are listed per connection. */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');

const { Broker, followAuthorize, waitFor, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

function metric(text, name, labels = {}) {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^([a-z_]+)(\{([^}]*)\})? (\S+)$/);
    if (!m || m[1] !== name) continue;
    const have = (m[3] || '').split(',');
    if (want.every((w) => have.includes(w))) return Number(m[4]);
  }
  return undefined;
}

async function activate(b, name) {
  const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
  assert.equal(r.status, 201);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
}

test('metrics are valid Prometheus text and move with refreshes; events per connection', { timeout: 120000 }, async (t) => {
  const fp = await startFakeProvider({ expiresIn: 4 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'metrics-test-secret' },
    broker: { refresh_margin: '1s', refresh_ratio: '0.5', refresh_jitter: '0s' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });

  await activate(b, 'm1');
  await activate(b, 'm2');
  let r = await b.api('GET', '/metrics');
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  const check = spawnSync('promtool', ['check', 'metrics'], { input: r.text, encoding: 'utf8' });
  assert.equal(check.status, 0, `promtool: ${check.stdout}${check.stderr}\n${r.text}`);
  assert.equal(metric(r.text, 'tokenbroker_connections', { provider: 'fake', state: 'active' }), 2);
  const ok0 = metric(r.text, 'tokenbroker_refreshes_total', { provider: 'fake', outcome: 'ok' });
  const exp = metric(r.text, 'tokenbroker_earliest_expiry_seconds');
  assert.ok(exp > 0 && exp <= 4, `earliest expiry ${exp}`);

  // Refreshes run by themselves (4 s tokens): the counters move.
  await waitFor(async () => {
    const m = (await b.api('GET', '/metrics')).text;
    return metric(m, 'tokenbroker_refreshes_total', { provider: 'fake', outcome: 'ok' }) >= ok0 + 2;
  }, { timeoutMs: 15000, what: 'refresh counters to move' });

  // A permanent failure shows up as such, and the state gauge follows.
  fp.respond = (req) => (req.path === '/token' ? { status: 400, body: { error: 'invalid_grant' } } : null);
  r = await b.api('POST', '/v1/connections/m1/refresh');
  assert.equal(r.status, 409);
  fp.respond = null;
  r = await b.api('GET', '/metrics');
  assert.equal(metric(r.text, 'tokenbroker_refreshes_total', { provider: 'fake', outcome: 'permanent_error' }), 1);
  assert.equal(metric(r.text, 'tokenbroker_connections', { provider: 'fake', state: 'needs_reauth' }), 1);
  assert.ok(metric(r.text, 'tokenbroker_provider_request_duration_seconds_count', { provider: 'fake' }) >= 3);
  const served0 = metric(r.text, 'tokenbroker_tokens_served_total');
  await b.api('GET', '/v1/connections/m2/token');
  assert.equal(metric((await b.api('GET', '/metrics')).text, 'tokenbroker_tokens_served_total'), served0 + 1);
  assert.equal(spawnSync('promtool', ['check', 'metrics'], { input: r.text, encoding: 'utf8' }).status, 0);

  // Events: per connection, newest first in JSON; tokenctl prints them.
  const ev = await b.api('GET', '/v1/events?connection=m1');
  assert.equal(ev.status, 200);
  const kinds = ev.json.events.map((e) => e.kind);
  assert.ok(kinds.includes('authorized') && kinds.includes('needs-reauth'), kinds.join(','));
  assert.ok(ev.json.events.every((e) => e.connection === 'm1'));
  const ctl = await b.ctl(['events', 'm1']);
  assert.equal(ctl.code, 0, ctl.stderr);
  assert.match(ctl.stdout, /needs-reauth/);
  assert.equal((await b.api('GET', '/v1/events?limit=0')).status, 400);
});
