'use strict';
/* Issue 11, finding 4: a client on the ACL looping ?min_ttl= beyond any
 * token's life (or mixing it with invalidate) makes at most one refresh per
 * connection per interval; the answer is the valid token there is, saying
 * when the next client-driven refresh is allowed (Retry-After and
 * "refresh_retry_after"). */
const test = require('node:test');
const assert = require('node:assert/strict');

const { Broker, followAuthorize, sleep, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

test('client-driven refreshes: min_ttl and invalidate share one per-connection limit', { timeout: 120000 }, async (t) => {
  const fp = await startFakeProvider({ expiresIn: 600 });
  const b = await Broker.start({
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': 'client-refresh-limit-secret' },
  });
  t.after(async () => { await b.stop(); await fp.close(); });
  const r = await b.api('POST', '/v1/connections', { name: 'cl', provider: 'fake' });
  assert.equal((await followAuthorize(r.json.authorize_url)).status, 200);
  const refreshes = () => fp.requests.filter((x) => x.path === '/token' && x.params.grant_type === 'refresh_token').length;

  const n0 = refreshes();
  const until = Date.now() + 3000;
  let answers = 0;
  let last;
  while (Date.now() < until) {
    last = await b.api('GET', '/v1/connections/cl/token?min_ttl=31536000');
    assert.equal(last.status, 200, last.text);
    answers++;
  }
  assert.ok(answers > 10, `only ${answers} answers in 3 s`);
  assert.equal(refreshes() - n0, 1, `a min_ttl loop made ${refreshes() - n0} refreshes in 3 s`);
  // the answer says when the next client-driven refresh is allowed
  const ra = Number(last.headers['retry-after']);
  assert.ok(ra >= 1 && ra <= 5, `Retry-After: ${last.headers['retry-after']}`);
  assert.ok(last.json.refresh_retry_after >= 1 && last.json.refresh_retry_after <= 5, last.text.replace(/"access_token":"[^"]*"/, ''));
  assert.ok(last.json.access_token);
  // tokenctl says why the token lives shorter than asked
  const ctl = await b.ctl(['token', 'cl', '--min-ttl', '31536000']);
  assert.equal(ctl.code, 0, ctl.stderr);
  assert.match(ctl.stderr, /less than --min-ttl 31536000: refreshes asked by clients are rate limited; the next is allowed in [1-5] s/);
  assert.equal(refreshes() - n0, 1, 'tokenctl token --min-ttl refreshed inside the interval');

  // invalidate counts against the same limit
  await sleep(5200);
  const n1 = refreshes();
  assert.equal((await b.api('GET', '/v1/connections/cl/token?min_ttl=31536000')).status, 200);
  assert.equal(refreshes() - n1, 1, 'min_ttl after the interval refreshes again');
  const inv = await b.api('POST', '/v1/connections/cl/invalidate');
  assert.equal(inv.status, 200);
  assert.ok(inv.headers['retry-after'], 'invalidate right after a min_ttl refresh is limited and says so');
  assert.equal(refreshes() - n1, 1, 'invalidate right after a min_ttl refresh was not rate limited');

  // a plain token request is not limited and says nothing about it
  const plain = await b.api('GET', '/v1/connections/cl/token');
  assert.equal(plain.status, 200);
  assert.equal(plain.headers['retry-after'], undefined);
  assert.equal(plain.json.refresh_retry_after, undefined);
});
