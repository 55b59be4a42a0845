'use strict';
/*
 * Issue 11, finding 3: a provider that quotes the request in its error
 * text, with the parameters in the URL (refresh_method = GET, and
 * refresh_body = query), client_auth = post so the client secret travels
 * there too, and Basic for the other. Every value the broker sent (the
 * refresh token, the client secret, both as sent percent-encoded and
 * decoded, the Authorization header) is redacted from what reaches
 * tokenctl show, the log, the events table and API answers, also when
 * the quote straddles the point where the description is cut; a client on
 * the ACL that is not an admin gets the error code only.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');

const { Broker, waitFor, httpGet, iniProvider } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const ALICE = 'tbtest-alice';
const SECRET = 'redaction-client-secret-4711';

function ensureUser(u) {
  if (spawnSync('getent', ['passwd', u]).status === 0) return;
  const r = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', u], { encoding: 'utf8' });
  assert.ok(r.status === 0 || r.status === 9, `useradd ${u}: ${r.stderr}`);
}

/** One socket API request as user u via curl (setpriv); bounded. */
function apiAs(b, u, method, urlPath) {
  return new Promise((resolve) => {
    const args = [`--reuid=${u}`, `--regid=${u}`, '--clear-groups', '--', 'curl', '-q', '-sS', '--max-time', '20',
      '--unix-socket', b.socket, '-X', method, '-o', '-', '-w', '\n%{http_code}', `http://localhost${urlPath}`];
    const p = spawn('setpriv', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH, HOME: '/' } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 30000);
    p.on('close', (code) => {
      clearTimeout(timer);
      const nl = out.lastIndexOf('\n');
      let json = null;
      try { json = JSON.parse(out.slice(0, nl)); } catch { /* not JSON */ }
      resolve({ code, stderr: err, status: Number(out.slice(nl + 1)), json });
    });
  });
}

test('provider error text quoting the request: every value sent redacted; non-admins get the code only', { timeout: 180000 }, async (t) => {
  ensureUser(ALICE);
  let quoting = false;
  let pad = 0;
  const fp = await startFakeProvider({
    respond: (rec) => {
      const q = { ...rec.query, ...rec.params };
      if (!quoting || rec.path !== '/token' || q.grant_type !== 'refresh_token') return null;
      const rawQuery = new URLSearchParams(rec.query).toString();
      // a padded quote first, so that the refresh token straddles where a description is cut
      const desc = `${'x'.repeat(pad)}${q.refresh_token} is not valid: ${rec.method} /token?${rawQuery} body=${rec.raw} ` +
        `client_secret=${q.client_secret ?? ''} authorization=${rec.headers.authorization ?? ''} refresh_token=${q.refresh_token}`;
      return { status: 400, body: { error: 'invalid_grant', error_description: desc } };
    },
  });
  const b = await Broker.start({
    providers: {
      qget: iniProvider(fp.providerConf({ refresh_method: 'GET', client_auth: 'post', timeout: '15s' })),
      qquery: iniProvider(fp.providerConf({ refresh_body: 'query', timeout: '15s' })),
    },
    secrets: { 'fake.secret': SECRET },
  });
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  fs.chmodSync(b.dir, 0o755);   // the socket (0666) reachable by alice

  for (const [name, provider, padding] of [['c-get', 'qget', 0], ['c-query', 'qquery', 0], ['c-cut', 'qget', 186]]) {
    const r = await b.ctl(['--json', 'authorize', name, '--provider', provider, '--no-wait', '--allow-user', ALICE]);
    assert.equal(r.code, 0, r.stderr);
    const redirect = await httpGet(JSON.parse(r.stdout).authorize_url);
    assert.equal((await httpGet(redirect.headers.location)).status, 200);
    await waitFor(async () => (await b.api('GET', `/v1/connections/${name}`)).json.state === 'active', { what: `${name} active` });
    const rt = fp.issued[fp.issued.length - 1].refresh_token;

    quoting = true;
    pad = padding;
    const res = await b.ctl(['refresh', name]);
    quoting = false;
    assert.equal(res.code, 5, `${name}: ${res.stderr}`);   // invalid_grant: needs re-authorization
    const sent = fp.requests.filter((x) => x.path === '/token').pop();
    if (provider === 'qget') {
      assert.equal(sent.method, 'GET', name);
      assert.equal(sent.query.refresh_token, rt, `${name}: the refresh token was not in the URL`);
      assert.equal(sent.query.client_secret, SECRET, `${name}: the client secret was not in the URL`);
    } else assert.equal(sent.query.refresh_token, rt, `${name}: the refresh token was not in the URL`);

    const show = await b.ctl(['show', name]);
    const showJson = await b.api('GET', `/v1/connections/${name}`);
    const rootTok = await b.api('GET', `/v1/connections/${name}/token`);
    const alice = await apiAs(b, ALICE, 'GET', `/v1/connections/${name}/token`);
    assert.equal(alice.code, 0, alice.stderr);
    const events = b.sql(`SELECT message FROM events WHERE connection = '${name}'`).map((e) => e.message).join('\n');
    await waitFor(() => /invalid_grant/.test(b.log()), { what: 'the failure in the log' });
    const places = {
      'tokenctl show': show.stdout + show.stderr,
      'refresh stderr': res.stderr,
      'GET connection': showJson.text,
      '409 to root': rootTok.text,
      '409 to a non-admin': JSON.stringify(alice.json),
      events,
      log: b.log(),
    };
    const basic = sent.headers.authorization ? sent.headers.authorization.replace(/^Basic /, '') : null;
    for (const [where, text] of Object.entries(places)) {
      for (const [what, v] of [['refresh token', rt], ['refresh token prefix', rt.slice(0, 12)], ['client secret', SECRET],
        ['client secret, encoded', encodeURIComponent(SECRET)], ['Basic credentials', basic]]) {
        if (v) assert.ok(!text.includes(v), `${name}: the ${what} reached ${where}: ${text.replaceAll(v, '<HERE>').slice(0, 600)}`);
      }
    }
    assert.match(showJson.json.last_error, /invalid_grant/, name);
    assert.match(show.stdout, /\[redacted\]/, `${name}: ${show.stdout}`);
    // the admin sees the redacted description; a non-admin client the code only
    assert.equal(rootTok.status, 409);
    assert.match(rootTok.json.error_description, /invalid_grant: .*\[redacted\]/);
    assert.equal(alice.status, 409, JSON.stringify(alice.json));
    assert.equal(alice.json.error, 'needs_reauth');
    assert.equal(alice.json.error_description, 'HTTP 400: invalid_grant');
  }
});
