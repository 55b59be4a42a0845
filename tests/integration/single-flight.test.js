'use strict';
/* Any number of concurrent min_ttl or invalidate demands for one connection
 * make one provider request; invalidate is rate limited per connection. */
const test = require('node:test');
const assert = require('node:assert/strict');

const { Broker, followAuthorize, sleep, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

test('single-flight: 100 concurrent demands, one provider request; invalidate rate limited', { timeout: 120000 }, async (t) => {
  const fp = await startFakeProvider({ expiresIn: 600 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'single-flight-secret' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  const r = await b.api('POST', '/v1/connections', { name: 'sf', provider: 'fake' });
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  const refreshes = () => fp.requests.filter((x) => x.path === '/token' && x.params.grant_type === 'refresh_token').length;

  // Slow the provider so that all demands overlap one request in flight.
  fp.respond = async (req) => { if (req.path === '/token') await sleep(500); return null; };
  const n0 = refreshes();
  const answers = await Promise.all(Array.from({ length: 100 }, () => b.api('GET', '/v1/connections/sf/token?min_ttl=3000')));
  assert.equal(refreshes() - n0, 1, 'concurrent min_ttl demands made more than one provider request');
  const tokens = new Set(answers.map((a) => a.json.access_token));
  assert.ok(answers.every((a) => a.status === 200));
  assert.equal(tokens.size, 1, 'all waiters get the one new token');

  // invalidate: concurrent ones share one refresh...
  await sleep(5200);   // past the per-connection invalidate interval
  const n1 = refreshes();
  const inv = await Promise.all(Array.from({ length: 50 }, () => b.api('POST', '/v1/connections/sf/invalidate')));
  assert.ok(inv.every((a) => a.status === 200));
  assert.equal(refreshes() - n1, 1);
  // ...and a client hammering invalidate right after gets the current token, no new request.
  for (let i = 0; i < 20; i++) assert.equal((await b.api('POST', '/v1/connections/sf/invalidate')).status, 200);
  assert.equal(refreshes() - n1, 1, 'invalidate was not rate limited');
  fp.respond = null;
});
