'use strict';
/*
 * tokenbrokerd --check-config:
 *  - every preset in conf/providers.d/ passes (with its secret file made up);
 *  - each malformed key, unknown placeholder, placeholder not allowed in
 *    that request, missing required endpoint, bad JSON pointer, bad
 *    error_map and failed discovery gives "file:line: message" and a
 *    non-zero exit, and the daemon refuses to start on the same file.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { BUILD, ROOT, noteRun } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

function workdir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-check-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'providers.d'));
  fs.mkdirSync(path.join(dir, 'secrets'));
  // presets_dir = providers.d: a preset file naming another (preset = slack) finds it beside it.
  fs.writeFileSync(path.join(dir, 'tb.conf'), `[broker]\nstate_dir = state\nsocket = tb.sock\nproviders_dir = providers.d\npresets_dir = providers.d\ncallback_listen = 127.0.0.1:1\n`);
  return dir;
}

/* tokenbrokerd run to its end; its output goes to the leak scan and the
 * harness's sanitizer check. A run killed at its timeout is a failure. */
function daemon(label, args, timeout) {
  const r = spawnSync(path.join(BUILD, 'tokenbrokerd'), args,
    { encoding: 'utf8', timeout, env: { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' } });
  noteRun(label, `${r.stdout ?? ''}${r.stderr ?? ''}`);
  assert.ok(Number.isInteger(r.status), `tokenbrokerd ${args.join(' ')}: no exit status (${r.signal ?? r.error?.message}):\n${r.stderr}`);
  return r;
}

function check(dir, extraArgs = []) {
  return daemon('check-config', ['--check-config', '-c', path.join(dir, 'tb.conf'), ...extraArgs], 30000);
}

test('every preset passes --check-config', { timeout: 120000 }, (t) => {
  const dir = workdir(t);
  const presets = fs.readdirSync(path.join(ROOT, 'conf', 'providers.d')).filter((f) => f.endsWith('.conf'));
  assert.ok(presets.length >= 15, `${presets.length} presets`);
  for (const f of presets) {
    const text = fs.readFileSync(path.join(ROOT, 'conf', 'providers.d', f), 'utf8');
    // A comment naming the page it follows, and what to fill in.
    assert.match(text, /^# Follows https:\/\/\S+/m, `${f}: no source page`);
    assert.match(text, /^# Fill in: /m, `${f}: does not say what to fill in`);
    fs.copyFileSync(path.join(ROOT, 'conf', 'providers.d', f), path.join(dir, 'providers.d', f));
    recordSecret('made-up-secret');
    fs.writeFileSync(path.join(dir, 'secrets', f.replace(/\.conf$/, '')), 'made-up-secret\n', { mode: 0o600 });
  }
  const r = check(dir);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`OK \\(${presets.length} providers\\)`));
  for (const want of ['google', 'microsoft', 'github', 'gitlab', 'salesforce', 'slack', 'dropbox', 'box', 'zoom',
    'hubspot', 'atlassian', 'xero', 'intuit', 'okta', 'auth0', 'keycloak', 'zendesk', 'spotify']) {
    assert.ok(presets.includes(`${want}.conf`), `preset ${want} missing`);
  }
});

const BASE = [
  '[provider]',
  'authorize_url = https://id.example.com/authorize',
  'token_url = https://id.example.com/token',
  'client_id = abc',
  'client_secret = s3cret',
];

/* [lines to add (after BASE unless `replace`), line of the error, message regex] */
const CASES = [
  [['frobnicate = 1'], 6, /Unknown key 'frobnicate'\./],
  [['token_method = DELETE'], 6, /Invalid token_method 'DELETE' \(GET, POST, PUT, PATCH\)\./],
  [['token_body = xml'], 6, /Invalid token_body 'xml' \(form, json, query\)\./],
  [['refresh_body = yaml'], 6, /Invalid refresh_body/],
  [['token_param = code=${nope}'], 6, /Unknown placeholder 'nope' in token_param\./],
  [['token_param = rt=${refresh_token}'], 6, /Unknown placeholder 'refresh_token' in token_param\./],
  [['refresh_param = c=${code}'], 6, /Unknown placeholder 'code' in refresh_param\./],
  [['authorize_param = s=${client_secret}'], 6, /Unknown placeholder 'client_secret' in authorize_param\./],
  [['authorize_param = p=${password}'], 6, /Unknown placeholder 'password' in authorize_param\./],
  [['token_header = X-A: ${client_id'], 6, /Unterminated placeholder '\$\{client_id' in token_header\./],
  [['token_header = NoColon ${client_id}'], 6, /token_header must be 'Name: value'/],
  [['refresh_header = X-B: ${state}'], 6, /Unknown placeholder 'state' in refresh_header\./],
  [['token_param = noequals'], 6, /token_param must be 'name=value'/],
  [['expires_at_pointer = expires'], 6, /Invalid JSON pointer for expires_at_pointer: expires/],
  [['identity_pointer = /a~9'], 6, /Invalid JSON pointer for identity_pointer/],
  [['access_token_pointer = data/token'], 6, /Invalid JSON pointer for access_token_pointer/],
  [['never_expires = maybe'], 6, /Invalid boolean for never_expires: maybe/],
  [['error_map = AADSTS70000 retry'], 6, /error_map must be 'pattern -> retry\|reauth\|config/],
  [['error_map = AADSTS70000 -> later'], 6, /error_map: invalid class 'later'/],
  [['error_map = /([a-z/ -> retry'], 6, /error_map: invalid regular expression/],
  [['refresh_url = https://${client_id}.example.com/token'], 6, /refresh_url: no placeholders before the path/],
  [['userinfo_url = http://id.example.com/me'], 6, /userinfo_url must be an https:\/\/ URL/],
  [['device_authorization_url = ftp://id.example.com/d'], 6, /device_authorization_url must be an https:\/\/ URL/],
  [['timeout = 300'], 6, /Invalid timeout '300' \(0 to 120 seconds\)\./],
  [['client_auth = jwt'], 6, /Invalid client_auth 'jwt' \(basic, post, none, headers\)\./],
  [['password_file = missing-file'], 6, /Cannot read password from '.*missing-file'/],
  [['usage_header = Authorization: Bearer ${refresh_token}'], 6, /Unknown placeholder 'refresh_token' in usage_header\./],
  // whole-file checks point at the grant line (else the first key)
  [['[provider]', 'token_url = https://id.example.com/token', 'client_id = abc', 'client_secret = s', '', 'grant = device_code'], 6,
    /grant = device_code needs device_authorization_url\./, true],
  [['[provider]', '# no token endpoint', 'grant = client_credentials', 'client_id = abc', 'client_secret = s'], 3,
    /Missing required key token_url\./, true],
  [['[provider]', 'token_url = https://id.example.com/token', 'client_id = abc', 'client_secret = s'], 2,
    /grant = authorization_code needs authorize_url\./, true],
  [['[provider]', 'grant = client_credentials', 'token_url = https://id.example.com/token', 'client_id = abc', 'client_auth = headers'], 2,
    /client_auth = headers needs at least one token_header\./, true],
  [['[provider]', 'grant = client_credentials', 'token_url = https://id.example.com/token', 'client_id = abc', 'client_auth = none', 'token_header = X-S: ${client_secret}'], 2,
    /\$\{client_secret\} is used but no client_secret/, true],
  [['never_expires = yes', 'default_lifetime = 1h'], 1,
    /never_expires and default_lifetime exclude each other\./, false, 2],
  // an issuer that does not answer, and nothing explicit: an error at the issuer line
  [['[provider]', 'client_id = abc', 'client_secret = s', 'issuer = http://127.0.0.1:1/realms/x'], 4,
    /Discovery at http:\/\/127\.0\.0\.1:1\/realms\/x failed and required endpoints are missing/, true],
];

test('config errors: file:line: message, non-zero exit, and the daemon does not start', { timeout: 180000 }, async (t) => {
  const dir = workdir(t);
  const file = path.join(dir, 'providers.d', 'bad.conf');
  for (const [lines, line, re, replace, wantLine] of CASES) {
    const text = (replace ? lines : [...BASE, ...lines]).join('\n') + '\n';
    fs.writeFileSync(file, text);
    const r = check(dir);
    const expectLine = wantLine ?? line;
    assert.notEqual(r.status, 0, `accepted:\n${text}`);
    const esc = file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    assert.match(r.stderr, new RegExp(`${esc}:${expectLine}: `), `no file:line for:\n${text}\n${r.stderr}`);
    assert.match(r.stderr, re, text);
    // The daemon refuses the same file at start.
    const d = daemon('failing-start', ['-c', path.join(dir, 'tb.conf')], 20000);
    assert.notEqual(d.status, 0);
    assert.match(d.stderr, re);
    assert.ok(!fs.existsSync(path.join(dir, 'tb.sock')), 'the daemon started');
  }
  // A discovery failure is only a warning when the required endpoints are explicit.
  fs.writeFileSync(file, [...BASE, 'issuer = http://127.0.0.1:1'].join('\n') + '\n');
  const r = check(dir);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /bad\.conf:6: discovery at http:\/\/127\.0\.0\.1:1 failed/);
});
