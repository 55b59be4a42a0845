'use strict';
/*
 * Issue 12, refresh-token lifetime: refresh_token_lifetime (absolute, from
 * the authorization) and refresh_token_expires_in_pointer give each
 * connection a known end, shown by tokenctl show/list and the API; the
 * refresh-token-expiring event and notify_command fire refresh_token_warn
 * before it, once per end (a restart does not repeat it); /metrics has
 * the seconds to the earliest end and the count of unknown ends.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const { Broker, followAuthorize, waitFor, sleep, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

async function activate(b, name, provider) {
  const r = await b.api('POST', '/v1/connections', { name, provider });
  assert.ok(r.status === 201 || r.status === 200, r.text);
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  await waitFor(async () => (await b.api('GET', `/v1/connections/${name}`)).json.state === 'active', { what: `${name} active` });
}

function metric(text, name) {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

test('refresh-token end: lifetime and pointer, show/list, metric, warning event and notify once', { timeout: 150000 }, async (t) => {
  const fp = await startFakeProvider({ expiresIn: 3600 });
  fp.respond = (rec) => {
    // A GitHub-shaped answer for the "gh" client: refresh_token_expires_in.
    if (rec.path !== '/token' || rec.headers.authorization !== `Basic ${Buffer.from('gh-client:rt-end-secret').toString('base64')}`) return null;
    const n = Math.random().toString(36).slice(2);
    return { body: { access_token: `gho_${n}`, refresh_token: `ghr_${n}`, expires_in: 28800, refresh_token_expires_in: 15811200, token_type: 'bearer' } };
  };
  const b = await Broker.prepare();
  const out = path.join(b.dir, 'notified.log');
  const script = path.join(b.dir, 'notify.sh');
  fs.writeFileSync(script, `#!/bin/sh\n{ echo "argv=$*"; env | grep '^TOKENBROKER_' | sort; echo --; } >> ${out}\n`, { mode: 0o755 });
  b.opts = {
    providers: {
      short: iniProvider({ ...fp.providerConf(), refresh_token_lifetime: '40s' }),
      gh: iniProvider({ ...fp.providerConf(), client_id: 'gh-client', refresh_token_expires_in_pointer: '/refresh_token_expires_in' }),
      plain: iniProvider(fp.providerConf()),
    },
    secrets: { 'fake.secret': 'rt-end-secret' },
    broker: { notify_command: script, refresh_token_warn: '30s' },
  };
  b.writeConfig();
  await b.launch();
  t.after(async () => { await b.stop(); await fp.close(); });

  const t0 = Date.now();
  await activate(b, 's', 'short');
  await activate(b, 'g', 'gh');
  await activate(b, 'p', 'plain');

  let c = (await b.api('GET', '/v1/connections/s')).json;
  assert.ok(c.refresh_token_ends_in > 25 && c.refresh_token_ends_in <= 40, JSON.stringify(c));
  assert.ok(Math.abs(Date.parse(c.refresh_token_ends_at) - (t0 + 40000)) < 15000, c.refresh_token_ends_at);
  c = (await b.api('GET', '/v1/connections/g')).json;
  assert.ok(Math.abs(c.refresh_token_ends_in - 15811200) < 60, JSON.stringify(c));
  c = (await b.api('GET', '/v1/connections/p')).json;
  assert.equal(c.refresh_token_ends_at ?? null, null);

  const show = await b.ctl(['show', 's']);
  assert.equal(show.code, 0, show.stderr);
  assert.match(show.stdout, /refresh token ends: +\d{4}-\d\d-\d\dT/);
  assert.match((await b.ctl(['show', 'p'])).stdout, /refresh token ends: +unknown/);
  const list = await b.ctl(['list']);
  assert.match(list.stdout, /RT ENDS/);
  assert.match(list.stdout, /^g +gh +active +\S+ +18\dd /m);
  assert.match(list.stdout, /^p +plain +active +\S+ +unknown /m);

  let m = await b.api('GET', '/metrics');
  const promtool = spawnSync('promtool', ['check', 'metrics'], { input: m.text, encoding: 'utf8' });
  assert.equal(promtool.status, 0, `${promtool.stdout}${promtool.stderr}`);
  const earliest = metric(m.text, 'tokenbroker_earliest_refresh_token_end_seconds');
  assert.ok(earliest > 0 && earliest <= 40, `earliest ${earliest}`);
  assert.equal(metric(m.text, 'tokenbroker_refresh_token_end_unknown'), 1);

  // refresh_token_warn = 30s before the 40 s end: about 10 s after the grant.
  await waitFor(async () => {
    const ev = await b.api('GET', '/v1/events?connection=s');
    return ev.json.events.some((e) => e.kind === 'refresh-token-expiring');
  }, { timeoutMs: 40000, what: 'the refresh-token-expiring event' });
  assert.ok(Date.now() - t0 >= 8000, 'warned too early');
  await waitFor(() => fs.existsSync(out) && fs.readFileSync(out, 'utf8').includes('TOKENBROKER_EVENT=refresh-token-expiring'),
    { timeoutMs: 10000, what: 'the notification' });
  const text = fs.readFileSync(out, 'utf8');
  assert.match(text, /argv=refresh-token-expiring s/);
  assert.ok(!text.includes('argv=refresh-token-expiring g') && !text.includes('argv=refresh-token-expiring p'));
  for (const x of fp.issued) assert.ok(!text.includes(x.access_token) && !(x.refresh_token && text.includes(x.refresh_token)));
  m = await b.api('GET', '/metrics');
  assert.equal(metric(m.text, 'tokenbroker_refresh_token_warnings_total'), 1);

  // Once per end: a restart does not warn again.
  await b.stop({ keep: true });
  await b.launch();
  await sleep(3000);
  const ev = await b.api('GET', '/v1/events?connection=s');
  assert.equal(ev.json.events.filter((e) => e.kind === 'refresh-token-expiring').length, 1);
  assert.equal(fs.readFileSync(out, 'utf8').split('argv=refresh-token-expiring').length - 1, 1);
  c = (await b.api('GET', '/v1/connections/s')).json;
  assert.ok(c.refresh_token_ends_at, 'the end survives a restart');
});
