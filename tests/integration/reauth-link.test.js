'use strict';
/*
 * Re-authorization links (issue 13, "must show" 3), against a real
 * authorization server (npm oidc-provider) and a real browser (Debian's
 * chromium via playwright-core):
 *
 *   a connection with an ACL, authorized -> the provider ends its grant ->
 *   refresh: needs_reauth -> notify_command gets TOKENBROKER_REAUTH_URL ->
 *   chromium opens the link: a page naming the connection and provider
 *   (screenshot kept in tests/artifacts/) -> its button -> oidc-provider's
 *   login and consent -> active again, same name, ACL and scope -> the link
 *   then answers "already used"; an expired, a forged and a revoked link
 *   each show an error page and change nothing.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { startOidc } = require('../lib/oidc-server.js');
const { runFlow, commonStep } = require('../lib/browser.js');
const { Broker, waitFor, sleep, httpGet, httpPost, oidcProviderConf, ROOT } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

const ARTIFACTS = process.env.TB_ARTIFACTS_DIR || path.join(ROOT, 'tests', 'artifacts');
const LINK_RE = /^http:\/\/127\.0\.0\.1:\d+\/oauth\/start\/[A-Za-z0-9_-]{43}$/;

async function show(b, name) {
  const r = await b.ctl(['--json', 'show', name]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

async function events(b, name) {
  const r = await b.api('GET', `/v1/events?connection=${name}&limit=1000`);
  assert.equal(r.status, 200, r.text);
  return r.json.events;
}

const count = (evs, kind) => evs.filter((e) => e.kind === kind).length;

/** What a refused link must leave alone. */
async function snapshot(b, name) {
  const c = await show(b, name);
  const evs = await events(b, name);
  return {
    state: c.state, updated_at: c.updated_at, allow_users: c.allow_users, requested_scope: c.requested_scope,
    pending: c.authorization_pending_until ?? null,
    started: count(evs, 'authorization-started'), used: count(evs, 'link-used'),
  };
}

async function mint(b, args) {
  const r = await b.ctl(['--json', 'authorize', ...args]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.match(j.url, LINK_RE);
  recordSecret(j.url.split('/').pop());
  return j;
}

async function refusedPage(url, status, re) {
  const g = await httpGet(url);
  assert.equal(g.status, status, g.text);
  assert.match(g.text, re);
  assert.match(g.headers['content-security-policy'], /default-src 'none'/);
  assert.doesNotMatch(g.text, /<form|<script/i);
  const p = await httpPost(url);
  assert.equal(p.status, status, p.text);
  assert.match(p.text, re);
  assert.equal(p.headers.location, undefined);
}

test('re-authorization link: needs_reauth -> notify -> page -> oidc-provider -> active; used, expired, forged, revoked links change nothing',
  { timeout: 240000 }, async (t) => {
    const b = await Broker.prepare();
    const op = await startOidc({ accessTokenTtl: 600, redirectUris: b.redirectUrisFor('local'), quiet: true });
    const out = path.join(b.dir, 'notified.log');
    const script = path.join(b.dir, 'notify.sh');
    fs.writeFileSync(script, `#!/bin/sh\n{ echo "argv=$*"; env | grep '^TOKENBROKER_' | sort; echo --; } >> ${out}\n`, { mode: 0o755 });
    b.opts = {
      providers: { local: oidcProviderConf(op) },
      secrets: { 'local.secret': op.clientSecret },
      broker: { notify_command: script, notify_interval: '1h' },
    };
    b.writeConfig();
    await b.launch();
    t.after(async () => { await b.stop(); await op.close(); });

    // 1. A connection with an ACL and a scope of its own, authorized in the browser.
    const SCOPE = 'openid email offline_access api:read';
    const cr = await b.api('POST', '/v1/connections', { name: 'alice', provider: 'local', scope: SCOPE, allow_users: [4242, 4343] });
    assert.equal(cr.status, 201, cr.text);
    const first = await runFlow(cr.json.authorize_url, { timeoutMs: 60000, screenshotDir: ARTIFACTS },
      (st, page, ctl) => commonStep(st, page, ctl, { login: 'alice', password: 'x', consent: true }));
    assert.equal(first.status, 200, first.text);
    const before = await show(b, 'alice');
    assert.equal(before.state, 'active');
    assert.deepEqual(before.allow_users, [4242, 4343]);

    // 2. The provider ends the grant (its access token revoked: oidc-provider
    // revokes the whole grant), then a refresh: needs_reauth.
    const tok = (await b.ctl(['token', 'alice'])).stdout.trim();
    assert.ok(tok.length > 10);
    assert.equal(await op.revoke(tok), 200);
    let grant = [...op.grants.values()][0];
    if (!grant.revoked) {
      // this oidc-provider keeps the grant on an access token's revocation: end it at the source
      const g = await op.provider.Grant.find(grant.grantId ?? grant.id);
      if (g) await g.destroy();
    }
    const rr = await b.api('POST', '/v1/connections/alice/refresh');
    assert.equal(rr.status, 409, rr.text);
    await waitFor(async () => (await show(b, 'alice')).state === 'needs_reauth', { timeoutMs: 20000, what: 'needs_reauth' });

    // 3. notify_command gets the link (and nothing secret besides it).
    await waitFor(() => fs.existsSync(out) && fs.readFileSync(out, 'utf8').includes('--'), { timeoutMs: 10000, what: 'the notification' });
    const note = fs.readFileSync(out, 'utf8');
    assert.match(note, /argv=needs-reauth alice/);
    const m = note.match(/^TOKENBROKER_REAUTH_URL=(.*)$/m);
    assert.ok(m, 'notify_command got no TOKENBROKER_REAUTH_URL');
    const link = m[1];
    recordSecret(link.split('/').pop());
    assert.match(link, LINK_RE);
    assert.ok(link.startsWith(`${b.publicUrl}/oauth/start/`));
    assert.ok(!note.includes(tok), 'a token reached notify_command');
    let links = JSON.parse((await b.ctl(['--json', 'links'])).stdout);
    assert.equal(links.length, 1);
    assert.equal(links[0].connection, 'alice');
    assert.equal(links[0].state, 'unused');
    assert.equal(links[0].created_by, null);
    assert.ok(!JSON.stringify(links).includes(link.split('/').pop()), 'tokenctl links shows the secret');

    // 4. The page, fetched first: GET changes nothing; strict CSP, no script.
    const snap0 = await snapshot(b, 'alice');
    const g = await httpGet(link);
    assert.equal(g.status, 200, g.text);
    const csp = g.headers['content-security-policy'];
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /style-src 'unsafe-inline'/);
    assert.match(csp, new RegExp(`form-action 'self' http://127\\.0\\.0\\.1:${op.port}(;|$)`));
    assert.equal(g.headers['referrer-policy'], 'no-referrer');
    assert.match(g.headers['cache-control'], /no-store/);
    assert.doesNotMatch(g.text, /<script|javascript:|\son[a-z]+=/i);
    assert.match(g.text, /<meta name="viewport" content="width=device-width/);
    assert.match(g.text, /<form method="post">/);
    assert.match(g.text, /alice/);
    assert.match(g.text, /local/);
    assert.match(g.text, /api:read/);
    assert.match(g.text, /needs re-authorization/);
    assert.match(g.text, /Link valid until<\/dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d UTC</);
    assert.deepEqual(await snapshot(b, 'alice'), snap0, 'opening the page changed something');

    // 5. In chromium: the page, its button, oidc-provider's login and consent, the callback.
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, 'reauth-link-page.png');
    let clicked = false, pageText = '';
    const res = await runFlow(link, { timeoutMs: 90000, screenshotDir: ARTIFACTS, args: ['--window-size=412,915'] }, async (st, page, ctl) => {
      if (!clicked && st.title.startsWith('Authorize alice')) {
        pageText = st.text;
        await page.setViewportSize({ width: 412, height: 915 });   // a phone
        await page.screenshot({ path: shot, fullPage: true, timeout: 10000 });
        ctl.steps.push('link-page');
        clicked = true;
        await page.click('form button[type="submit"]');
        return 'acted';
      }
      return commonStep(st, page, ctl, { login: 'alice', password: 'x', consent: true });
    });
    t.diagnostic(`screenshot of the link page: ${shot}`);
    assert.ok(fs.statSync(shot).size > 1000, 'no screenshot');
    assert.ok(clicked, `the link page never showed (steps: ${res.steps.join(' > ')})`);
    assert.match(pageText, /Connection\s+alice/);
    assert.match(pageText, /Provider\s+local/);
    assert.match(pageText, /Requested by\s+the broker/);
    assert.deepEqual(res.steps.slice(0, 3), ['goto', 'link-page', 'login']);
    assert.equal(res.status, 200, res.text);
    assert.match(res.text, /Connection 'alice' is active/);

    // 6. Active again: same name, ACL and parameters.
    const after = await show(b, 'alice');
    assert.equal(after.state, 'active');
    assert.equal(after.name, 'alice');
    assert.equal(after.provider, 'local');
    assert.deepEqual(after.allow_users, before.allow_users);
    assert.deepEqual(after.allow_groups, before.allow_groups);
    assert.equal(after.requested_scope, SCOPE);
    assert.equal(after.requested_scope, before.requested_scope);
    assert.equal(after.identity, 'alice@example.com');
    const tok2 = await b.ctl(['token', 'alice']);
    assert.equal(tok2.code, 0, tok2.stderr);
    assert.equal((await op.introspect(tok2.stdout.trim())).active, true);
    let evs = await events(b, 'alice');
    assert.equal(count(evs, 'link-created'), 1);
    assert.equal(count(evs, 'link-used'), 1);

    // 7. Used: the link answers "already used", GET and POST alike, and changes nothing.
    const snap1 = await snapshot(b, 'alice');
    await refusedPage(link, 410, /already used/);
    assert.deepEqual(await snapshot(b, 'alice'), snap1);

    // 8. Expired (--valid 2s).
    const exp = await mint(b, ['alice', '--link', '--valid', '2s']);
    assert.equal(exp.state, 'unused');
    await sleep(3000);
    await refusedPage(exp.url, 410, /expired/);
    // 9. Forged: a well-formed token the broker never made, and malformed ones.
    await refusedPage(`${b.publicUrl}/oauth/start/${crypto.randomBytes(32).toString('base64url')}`, 404, /does not exist/);
    await refusedPage(`${b.publicUrl}/oauth/start/${exp.url.split('/').pop().slice(0, 42)}`, 404, /does not exist/);
    await refusedPage(`${b.publicUrl}/oauth/start/%3Cscript%3E`, 404, /does not exist/);
    // 10. Revoked: tokenctl links lists it (without its secret), tokenctl unlink ID revokes it.
    const rev = await mint(b, ['alice', '--link']);
    let l = await b.ctl(['links']);
    assert.equal(l.code, 0, l.stderr);
    assert.match(l.stdout, new RegExp(`^${rev.id}\\s+unused\\s+alice\\s+local`, 'm'));
    assert.match(l.stdout, new RegExp(`^${exp.id}\\s+expired\\s+alice`, 'm'));
    assert.ok(!l.stdout.includes(rev.url.split('/').pop()));
    const u = await b.ctl(['unlink', String(rev.id)]);
    assert.equal(u.code, 0, u.stderr);
    assert.match(u.stdout, new RegExp(`Revoked link ${rev.id}\\.`));
    await refusedPage(rev.url, 410, /revoked/);
    assert.deepEqual(await snapshot(b, 'alice'), snap1, 'a refused link changed the connection');
    links = JSON.parse((await b.ctl(['--json', 'links', 'alice'])).stdout);
    assert.equal(links.find((x) => x.id === rev.id).state, 'revoked');
    assert.equal(links.find((x) => x.id === exp.id).state, 'expired');

    // unlink NAME revokes every unused link of the connection; a second time there is none.
    const a1 = await mint(b, ['alice', '--link', '--valid', '1h']);
    const a2 = await mint(b, ['alice', '--link', '--valid', '30d']);
    const un = await b.ctl(['--json', 'unlink', 'alice']);
    assert.equal(un.code, 0, un.stderr);
    assert.deepEqual(JSON.parse(un.stdout).revoked.sort(), [a1.id, a2.id].sort());
    await refusedPage(a2.url, 410, /revoked/);
    assert.equal((await b.ctl(['unlink', 'alice'])).code, 4);

    // 11. Bad input: clear messages and exit codes.
    let bad = await b.ctl(['authorize', 'alice', '--link', '--valid', '31d']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--valid takes a time from 1s to 30d/);
    bad = await b.ctl(['authorize', 'bob', '--link']);
    assert.equal(bad.code, 4, bad.stderr);
    assert.match(bad.stderr, /no such connection: give --provider/);
    bad = await b.ctl(['authorize', 'alice', '--link', '--provider', 'other']);
    assert.notEqual(bad.code, 0);
    bad = await b.ctl(['authorize', 'alice', '--valid', '1d', '--provider', 'local']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--valid needs --link/);

    // 12. Events record making, using and revoking; no link secret in events or the log.
    evs = await events(b, 'alice');
    assert.ok(count(evs, 'link-created') >= 5);
    assert.equal(count(evs, 'link-used'), 1);
    assert.ok(count(evs, 'link-revoked') >= 3);
    const created = evs.find((e) => e.kind === 'link-created' && e.message.includes(`link ${rev.id} `));
    assert.match(created.message, /made by uid \d+/);
    const evText = JSON.stringify(evs);
    const log = b.log();
    for (const x of [link, exp.url, rev.url, a1.url, a2.url]) {
      const secret = x.split('/').pop();
      assert.ok(!evText.includes(secret), 'a link secret reached the events');
      assert.ok(!log.includes(secret), 'a link secret reached the daemon log');
    }

    // 13. After a restart the links are still known, by their hash only.
    await b.restart();
    await refusedPage(link, 410, /already used/);
    await refusedPage(rev.url, 410, /revoked/);
    const dump = JSON.stringify(b.sql('SELECT * FROM links;'));
    for (const x of [link, rev.url]) {
      const secret = x.split('/').pop();
      assert.ok(!dump.includes(secret), 'the store holds a link secret');
      assert.ok(dump.includes(crypto.createHash('sha256').update(secret).digest('hex')), 'the store lacks the hash');
    }
  });

test('tokenctl authorize --link for a connection still to make (--provider), and the page escapes what it shows', { timeout: 120000 }, async (t) => {
  const b = await Broker.prepare();
  const op = await startOidc({ accessTokenTtl: 600, redirectUris: b.redirectUrisFor('local'), quiet: true });
  b.opts = { providers: { local: oidcProviderConf(op) }, secrets: { 'local.secret': op.clientSecret } };
  b.writeConfig();
  await b.launch();
  t.after(async () => { await b.stop(); await op.close(); });

  const j = await mint(b, ['newconn', '--link', '--provider', 'local', '--scope', 'openid', '--scope', '<b>email</b>']);
  assert.equal(j.creates, true);
  assert.equal((await b.api('GET', '/v1/connections/newconn')).status, 404, 'minting created the connection');
  const g = await httpGet(j.url);
  assert.equal(g.status, 200);
  assert.match(g.text, /openid &lt;b&gt;email&lt;\/b&gt;/);
  assert.doesNotMatch(g.text, /<b>email/);
  assert.match(g.text, /new connection, not authorized yet/);
  // The click: a 303 to the provider with a fresh state and PKCE; the connection now pends.
  const p = await httpPost(j.url);
  assert.equal(p.status, 303, p.text);
  assert.ok(p.headers.location.startsWith(op.endpoints.authorization));
  assert.match(p.headers.location, /code_challenge_method=S256/);
  assert.match(p.headers.location, /[?&]state=[A-Za-z0-9_-]{43}(&|$)/);
  recordSecret(new URL(p.headers.location).searchParams.get('state'));
  const c = JSON.parse((await b.ctl(['--json', 'show', 'newconn'])).stdout);
  assert.equal(c.state, 'pending');
  await refusedPage(j.url, 410, /already used/);
  const links = await b.api('GET', '/v1/links');
  assert.equal(links.status, 200);
  assert.equal(links.json.links[0].state, 'used');

  // A link outlives nothing: its connection revoked (and a new one of the same name) -> 410.
  assert.equal((await b.api('POST', '/v1/connections', { name: 'gone', provider: 'local' })).status, 201);
  const gone = await mint(b, ['gone', '--link']);
  assert.equal((await b.api('DELETE', '/v1/connections/gone')).status, 200);
  await refusedPage(gone.url, 410, /no longer exists/);
  assert.equal((await b.api('POST', '/v1/connections', { name: 'gone', provider: 'local' })).status, 201);
  await refusedPage(gone.url, 410, /no longer exists/);

  // Not an admin (nobody, through setpriv): every links route is refused, nothing made.
  fs.chmodSync(b.dir, 0o755);   // mkdtemp made it 0700; the socket is 0666
  const nobody = (method, body) => spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--',
    'curl', '-q', '-sS', '--max-time', '20', '--unix-socket', b.socket, '-X', method, '-o', '/dev/null', '-w', '%{http_code}',
    ...(body ? ['-H', 'content-type: application/json', '--data-binary', body] : []), 'http://localhost/v1/links'],
  { encoding: 'utf8', timeout: 30000 });
  for (const [method, body] of [['GET'], ['POST', '{"name":"newconn"}'], ['DELETE']]) {
    const r = nobody(method, body);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '403', `${method} /v1/links as nobody`);
  }
  assert.equal((await b.api('GET', '/v1/links?connection=newconn')).json.links.length, 1);
});
