'use strict';
/*
 * Issue 12, preset mechanics and request shapes:
 *  - `preset = NAME` inherits an installed preset from [broker] presets_dir;
 *    the file overrides keys, and a key the file sets (once or repeated)
 *    replaces all the preset's lines for it; bad presets (missing, the
 *    file itself, a cycle, not the first key) are file:line errors;
 *  - revocation templates (revoke_param, revoke_ok_pointer): an error
 *    answered with HTTP 200 is a failed revocation;
 *  - client_secret_file repeated: invalid_client on the first, the next
 *    works and stays in use;
 *  - ${access_token} in refresh templates (Meta's fb_exchange_token): a
 *    refresh without any refresh token.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { startFakeProvider } = require('../lib/fake-provider.js');
const { Broker, BUILD, waitFor, httpGet, iniProvider, noteRun } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

const SECRET = 'fake-secret-Pv7';
const OLD_SECRET = 'old-secret-Qw3';

function tmpdir(t, prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function setup(t, providers, { fpOpts = {}, broker = {}, secrets = {} } = {}) {
  const fp = await startFakeProvider(fpOpts);
  const files = {};
  for (const [name, fields] of Object.entries(providers(fp))) files[name] = typeof fields === 'string' ? fields : iniProvider(fields);
  const b = await Broker.start({ providers: files, secrets: { 'fake.secret': SECRET, ...secrets }, broker, logLevel: 'debug' });
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
  });
  return { fp, b };
}

async function authorize(b, name, provider) {
  const r = await b.ctl(['--json', 'authorize', name, '--provider', provider, '--no-wait']);
  assert.equal(r.code, 0, r.stderr);
  const url = JSON.parse(r.stdout).authorize_url;
  const redirect = await httpGet(url);
  assert.equal(redirect.status, 302);
  const page = await httpGet(redirect.headers.location);
  assert.equal(page.status, 200, page.text);
  await waitFor(async () => (await b.api('GET', `/v1/connections/${name}`)).json.state === 'active', { what: `${name} active` });
  return new URL(url);
}

async function token(b, name) {
  const r = await b.api('GET', `/v1/connections/${name}/token`);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

const reqsAt = (fp, p) => fp.requests.filter((q) => q.path === p);

test('preset = NAME: inherited keys, overrides, a repeated key replaces the whole list', { timeout: 120000 }, async (t) => {
  const presets = tmpdir(t, 'tb-presets-');
  const { fp, b } = await setup(t, (fp) => {
    // The installed preset: endpoints, a secret file relative to the file
    // that names the preset, two token_header lines and a scope.
    fs.writeFileSync(path.join(presets, 'fakepreset.conf'), iniProvider({
      ...fp.providerConf(),
      client_id: 'preset-client',
      scopes: 'preset-scope',
      token_header: ['X-Preset-A: a', 'X-Preset-B: b'],
      error_map: 'weird_error -> reauth',
    }));
    return {
      mine: '[provider]\npreset = fakepreset\nclient_id = fake-client\ntoken_header = X-Mine: ${client_id}\n',
    };
  }, { broker: { presets_dir: presets } });
  const url = await authorize(b, 'c', 'mine');
  assert.equal(url.origin + url.pathname, fp.url('/authorize'), 'authorize_url inherited');
  assert.equal(url.searchParams.get('client_id'), 'fake-client', 'client_id overridden');
  assert.equal(url.searchParams.get('scope'), 'preset-scope', 'scopes inherited');
  const ex = reqsAt(fp, '/token')[0];
  assert.equal(ex.headers['x-mine'], 'fake-client');
  assert.equal(ex.headers['x-preset-a'], undefined, 'the file\'s token_header replaces the preset\'s list');
  assert.equal(ex.headers['x-preset-b'], undefined);
  assert.equal(ex.headers.authorization, `Basic ${Buffer.from(`fake-client:${SECRET}`).toString('base64')}`,
    'the preset\'s client_secret_file is read beside the file naming the preset');
  const tok = await token(b, 'c');
  assert.equal(tok.access_token, fp.issued[0].access_token);
  const prov = await b.api('GET', '/v1/providers');
  assert.equal(prov.status, 200);
});

function checkConfig(label, conf) {
  const r = spawnSync(path.join(BUILD, 'tokenbrokerd'), ['--check-config', '-c', conf],
    { encoding: 'utf8', timeout: 30000, env: { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' } });
  noteRun(label, `${r.stdout ?? ''}${r.stderr ?? ''}`);
  assert.ok(Number.isInteger(r.status), `no exit status: ${r.stderr}`);
  return r;
}

test('bad presets: missing, the file itself, a cycle, not first: file:line', { timeout: 120000 }, (t) => {
  const dir = tmpdir(t, 'tb-presets-bad-');
  const pdir = path.join(dir, 'providers.d');
  const presets = path.join(dir, 'presets');
  fs.mkdirSync(pdir);
  fs.mkdirSync(presets);
  recordSecret('made-up-secret');
  fs.writeFileSync(path.join(pdir, 'x.secret'), 'made-up-secret\n', { mode: 0o600 });
  const base = '[provider]\ntoken_url = https://x.example/token\nauthorize_url = https://x.example/auth\nclient_id = x\nclient_secret_file = x.secret\n';
  fs.writeFileSync(path.join(presets, 'good.conf'), base);
  fs.writeFileSync(path.join(presets, 'a.conf'), '[provider]\npreset = b\n');
  fs.writeFileSync(path.join(presets, 'b.conf'), '[provider]\npreset = a\n');
  const conf = (pd) => {
    fs.writeFileSync(path.join(dir, 'tb.conf'),
      `[broker]\nstate_dir = state\nsocket = tb.sock\nproviders_dir = providers.d\ncallback_listen = 127.0.0.1:1\npresets_dir = ${pd}\n`);
    return path.join(dir, 'tb.conf');
  };
  const one = (text, pd = presets) => {
    for (const f of fs.readdirSync(pdir)) if (f.endsWith('.conf')) fs.unlinkSync(path.join(pdir, f));
    fs.writeFileSync(path.join(pdir, 'mine.conf'), text);
    return checkConfig('presets', conf(pd));
  };
  const mine = path.join(pdir, 'mine.conf');

  let r = one('[provider]\npreset = good\n');
  assert.equal(r.status, 0, r.stderr);

  r = one('[provider]\n# comment\npreset = nope\n');
  assert.notEqual(r.status, 0);
  assert.ok(r.stderr.includes(`${mine}:3: preset 'nope' not found`), r.stderr);

  r = one('[provider]\nclient_id = y\npreset = good\n');
  assert.notEqual(r.status, 0);
  assert.ok(r.stderr.includes(`${mine}:3: preset must be the first key`), r.stderr);

  // presets_dir = providers_dir: mine.conf naming mine is the file itself.
  r = one('[provider]\npreset = mine\n', pdir);
  assert.notEqual(r.status, 0);
  assert.ok(r.stderr.includes(`${mine}:2: preset 'mine' is this file itself`), r.stderr);

  r = one('[provider]\npreset = a\n');
  assert.notEqual(r.status, 0);
  assert.ok(r.stderr.includes(`${path.join(presets, 'b.conf')}:2: preset 'a' makes a cycle`), r.stderr);

  r = one('[provider]\npreset = ../good\n');
  assert.notEqual(r.status, 0);
  assert.ok(r.stderr.includes(`${mine}:2: Invalid preset name`), r.stderr);

  // An error in the preset names the preset's file and line.
  fs.writeFileSync(path.join(presets, 'broken.conf'), '[provider]\ntoken_url = https://x.example/token\ntimeout = forever\n');
  r = one('[provider]\npreset = broken\nclient_id = x\n');
  assert.notEqual(r.status, 0);
  assert.ok(r.stderr.includes(`${path.join(presets, 'broken.conf')}:3: Invalid timeout`), r.stderr);
});

test('revocation templates: one request with ${access_token}; an error in a 200 answer is a failure', { timeout: 120000 }, async (t) => {
  let answer = { ok: false, error: 'invalid_auth' };
  const { fp, b } = await setup(t, (fp) => ({
    p: {
      ...fp.providerConf(),
      revoke_url: fp.url('/api/auth.revoke'),
      revoke_param: 'token=${access_token}',
      revoke_header: 'X-Revoke: ${client_id}',
      revoke_ok_pointer: '/ok',
    },
  }), { fpOpts: { respond: (rec) => (rec.path === '/api/auth.revoke' ? { status: 200, body: answer } : null) } });
  await authorize(b, 'c', 'p');
  const at = (await token(b, 'c')).access_token;

  let r = await b.ctl(['revoke', 'c']);
  assert.notEqual(r.code, 0, 'a revocation refused with HTTP 200 must fail');
  assert.match(r.stderr, /invalid_auth/);
  assert.equal((await b.api('GET', '/v1/connections/c')).status, 200, 'the connection is kept');
  let rq = reqsAt(fp, '/api/auth.revoke');
  assert.equal(rq.length, 1);
  assert.deepEqual(rq[0].params, { token: at });
  assert.equal(rq[0].headers['x-revoke'], 'fake-client');

  answer = { ok: true, revoked: true };
  r = await b.ctl(['revoke', 'c']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /revoked at the provider/);
  rq = reqsAt(fp, '/api/auth.revoke');
  assert.equal(rq.length, 2, 'templates without ${token}: one request, not one per token');
  assert.equal((await b.api('GET', '/v1/connections/c')).status, 404);
});

test('client_secret_file repeated: invalid_client on the first, the next works and stays in use', { timeout: 120000 }, async (t) => {
  let rotated = false;
  const basic = (s) => `Basic ${Buffer.from(`fake-client:${s}`).toString('base64')}`;
  const refused = (rec) => {
    const m = /^Basic (\S+)$/.exec(rec.headers.authorization || '');
    const [id, secret] = m ? Buffer.from(m[1], 'base64').toString().split(':') : [];
    return secret === OLD_SECRET && (rotated || id === 'q-client');   // q's old secret is refused from the start
  };
  const { fp, b } = await setup(t, (fp) => ({
    p: { ...fp.providerConf(), client_secret_file: ['old.secret', 'fake.secret'] },
    q: { ...fp.providerConf(), client_id: 'q-client', client_secret_file: ['old.secret', 'fake.secret'] },
  }), {
    secrets: { 'old.secret': OLD_SECRET },
    fpOpts: {
      respond: (rec) => (rec.path === '/token' && refused(rec)
        ? { status: 401, body: { error: 'invalid_client', error_description: 'client secret expired' } } : null),
    },
  });
  await authorize(b, 'c', 'p');
  assert.equal(reqsAt(fp, '/token')[0].headers.authorization, basic(OLD_SECRET), 'the first secret is used first');
  rotated = true;   // the provider now refuses the old secret

  let r = await b.ctl(['refresh', 'c']);
  assert.equal(r.code, 0, r.stderr);
  let rq = reqsAt(fp, '/token');
  assert.equal(rq.length, 3);
  assert.equal(rq[1].headers.authorization, basic(OLD_SECRET));
  assert.equal(rq[2].headers.authorization, basic(SECRET), 'the next secret after invalid_client');
  assert.equal((await token(b, 'c')).access_token, fp.issued[1].access_token);
  assert.equal((await b.api('GET', '/v1/connections/c')).json.state, 'active');

  r = await b.ctl(['refresh', 'c']);
  assert.equal(r.code, 0, r.stderr);
  rq = reqsAt(fp, '/token');
  assert.equal(rq.length, 4, 'the working secret is remembered');
  assert.equal(rq[3].headers.authorization, basic(SECRET));

  // The code exchange too: refused with the first secret, the same code with the next.
  const before = reqsAt(fp, '/token').length;
  await authorize(b, 'd', 'q');
  rq = reqsAt(fp, '/token').slice(before);
  assert.equal(rq.length, 2);
  assert.equal(rq[0].params.code, rq[1].params.code);
  assert.equal(rq[1].headers.authorization, `Basic ${Buffer.from(`q-client:${SECRET}`).toString('base64')}`);
  assert.ok(!b.log().includes(SECRET) && !b.log().includes(OLD_SECRET), 'a client secret reached the log');
});

test('${access_token} in refresh templates: a refresh with no refresh token (fb_exchange_token)', { timeout: 120000 }, async (t) => {
  let n = 0;
  const { fp, b } = await setup(t, (fp) => ({
    p: {
      ...fp.providerConf(),
      client_auth: 'post',
      refresh_url: fp.url('/oauth/access_token'),
      refresh_method: 'GET',
      refresh_param: ['grant_type=fb_exchange_token', 'client_id=${client_id}', 'client_secret=${client_secret}',
        'fb_exchange_token=${access_token}'],
    },
  }), {
    fpOpts: {
      respond: (rec) => {
        if (rec.path === '/token') return { body: { access_token: `at-ll-${++n}-${Math.random().toString(36).slice(2)}`, token_type: 'bearer', expires_in: 5184000 } };
        if (rec.path === '/oauth/access_token') return { body: { access_token: `at-ll-${++n}-${Math.random().toString(36).slice(2)}`, token_type: 'bearer', expires_in: 5184000 } };
        return null;
      },
    },
  });
  await authorize(b, 'c', 'p');
  const show = await b.api('GET', '/v1/connections/c');
  assert.equal(show.json.has_refresh_token, false);
  let prev = (await token(b, 'c')).access_token;
  for (let i = 0; i < 2; i++) {
    const r = await b.ctl(['refresh', 'c']);
    assert.equal(r.code, 0, r.stderr);
    const rq = reqsAt(fp, '/oauth/access_token')[i];
    assert.equal(rq.method, 'GET');
    assert.equal(rq.query.grant_type, 'fb_exchange_token');
    assert.equal(rq.query.fb_exchange_token, prev);
    assert.equal(rq.query.client_secret, SECRET);
    const now = (await token(b, 'c')).access_token;
    assert.notEqual(now, prev);
    prev = now;
  }
});
