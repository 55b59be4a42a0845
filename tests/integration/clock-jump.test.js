'use strict';
/*
 * Wall-clock jumps (libfaketime moves CLOCK_REALTIME of the daemon only;
 * CLOCK_MONOTONIC and CLOCK_BOOTTIME stay real): set back an hour, the
 * broker must not hand out an expired token; set forward an hour, it must
 * not stampede the provider. Deadlines run on CLOCK_BOOTTIME.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { Broker, followAuthorize, sleep, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
const TTL = 4;   // seconds

test('a wall clock set back or forward changes neither expiry nor the refresh rate', { timeout: 90000 }, async (t) => {
  assert.ok(fs.existsSync(LIBFAKETIME), `${LIBFAKETIME} missing: make deps installs libfaketime`);
  const fp = await startFakeProvider({ expiresIn: TTL });
  const b = await Broker.prepare();
  const clock = path.join(b.dir, 'faketime');
  fs.writeFileSync(clock, '+0\n');
  b.opts = {
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'clock-jump-secret' },
    broker: { refresh_margin: '1s', refresh_ratio: '0.25', refresh_jitter: '0s' },
    env: {
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME_TIMESTAMP_FILE: clock,
      FAKETIME_NO_CACHE: '1',
      DONT_FAKE_MONOTONIC: '1',
      ASAN_OPTIONS: `${process.env.ASAN_OPTIONS ? `${process.env.ASAN_OPTIONS}:` : ''}verify_asan_link_order=0`,
    },
  };
  b.writeConfig();
  await b.launch();
  t.after(async () => { await b.stop(); await fp.close(); });

  const r = await b.api('POST', '/v1/connections', { name: 'cj', provider: 'fake' });
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  const issuedAt = (tok) => (fp.issued.find((x) => x.access_token === tok) || {}).at;
  const refreshes = () => fp.requests.filter((x) => x.path === '/token' && x.params.grant_type === 'refresh_token').length;

  async function watch(seconds) {
    const end = Date.now() + seconds * 1000;
    let served = 0;
    while (Date.now() < end) {
      const a = await b.api('GET', '/v1/connections/cj/token');
      assert.equal(a.status, 200, a.text);
      const at = issuedAt(a.json.access_token);
      assert.ok(at, 'a token the provider never issued');
      const age = (Date.now() - at) / 1000;
      assert.ok(age < TTL, `an expired token was handed out (issued ${age.toFixed(2)} s ago, lifetime ${TTL} s)`);
      assert.ok(a.json.expires_in <= TTL, `expires_in ${a.json.expires_in} > lifetime`);
      served++;
      await sleep(150);
    }
    return served;
  }

  // The wall clock goes back an hour: tokens must still expire on time.
  fs.writeFileSync(clock, '-1h\n');
  let n0 = refreshes();
  await watch(10);
  const back = refreshes() - n0;
  // The daemon's wall clock really moved: what it shows as expires_at is an hour behind.
  const shown = Date.parse((await b.api('GET', '/v1/connections/cj')).json.expires_at);
  assert.ok(shown < Date.now() - 3000 * 1000, `libfaketime had no effect (expires_at ${new Date(shown).toISOString()})`);
  assert.ok(back >= 2 && back <= 5, `${back} refreshes in 10 s with ${TTL} s tokens after the clock went back`);

  // Forward an hour: no stampede, tokens still right.
  fs.writeFileSync(clock, '+1h\n');
  n0 = refreshes();
  await watch(10);
  const fwd = refreshes() - n0;
  assert.ok(fwd >= 2 && fwd <= 5, `${fwd} refreshes in 10 s with ${TTL} s tokens after the clock went forward`);
  console.log(`# refreshes in 10 s: ${back} after the wall clock went back 1 h, ${fwd} after it went forward 1 h`);
});
