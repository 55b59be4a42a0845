'use strict';
/*
 * Issue 12, the presets added to reach 40: Shopify, Notion, X, Facebook,
 * Instagram, Linear, Airtable, Pipedrive, DocuSign, Zoho, ServiceNow,
 * Bitbucket, Asana, Discord, Twitch, Webex, Figma, Mailchimp, Calendly,
 * Stripe Connect.
 *  - each names the pages it follows and the date it was checked, and
 *    passes --check-config used the way an admin uses it: a file with
 *    `preset = NAME` and its client_id, the secret beside it;
 *  - `tokenctl preview NAME --param ...` shows each one's requests with
 *    its parameters filled in (Shopify's shop, Zoho's accounts host,
 *    ServiceNow's instance, Mailchimp's data center), its own client
 *    authentication and how clients present the token
 *    (X-Shopify-Access-Token, Notion-Version, Twitch's Client-Id, Zoho's
 *    Zoho-oauthtoken, Meta's access_token query parameter); a parameter
 *    left out is named (SHOP); no client secret in any output.
 * The request and answer shapes of each provider are checked against its
 * documentation by the contract fixtures (tests/fixtures/providers/).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { Broker, BUILD, ROOT, noteRun } = require('../lib/broker.js');
const { recordSecret } = require('../lib/suite.js');

const PRESETS = path.join(ROOT, 'conf', 'providers.d');
const CHECKED = '2026-12-03';

/* name -> the --param values a connection gives */
const ADDED = {
  shopify: { shop: 'contoso' },
  notion: {},
  x: {},
  facebook: {},
  instagram: {},
  linear: {},
  airtable: {},
  pipedrive: {},
  docusign: {},
  zoho: { accounts: 'accounts.zoho.eu' },
  servicenow: { instance: 'dev12345' },
  bitbucket: {},
  asana: {},
  discord: {},
  twitch: {},
  webex: {},
  figma: {},
  mailchimp: { dc: 'us6' },
  calendly: {},
  'stripe-connect': {},
};

const secretOf = (n) => `preset-secret-${n}-${process.pid}-7c1d`;
const clientOf = (n) => `${n}-client-4242`;

/* A providers.d that uses every added preset by name, and its secrets. */
function writeProviders(dir) {
  const pdir = path.join(dir, 'providers.d');
  fs.mkdirSync(pdir, { recursive: true });
  fs.mkdirSync(path.join(dir, 'secrets'), { mode: 0o700, recursive: true });
  for (const n of Object.keys(ADDED)) {
    fs.writeFileSync(path.join(pdir, `${n}.conf`), `[provider]\npreset = ${n}\nclient_id = ${clientOf(n)}\n`);
    recordSecret(secretOf(n));
    // the preset's client_secret_file = ../secrets/NAME, read beside the file naming it
    fs.writeFileSync(path.join(dir, 'secrets', n), `${secretOf(n)}\n`, { mode: 0o600 });
  }
}

test('the added presets: named pages, the date checked, and --check-config through preset = NAME', { timeout: 120000 }, (t) => {
  const all = fs.readdirSync(PRESETS).filter((f) => f.endsWith('.conf'));
  assert.ok(all.length >= 40, `${all.length} presets, the issue asks for 40 or more`);
  for (const n of Object.keys(ADDED)) {
    assert.ok(all.includes(`${n}.conf`), `preset ${n} missing`);
    const text = fs.readFileSync(path.join(PRESETS, `${n}.conf`), 'utf8');
    assert.match(text, /^# Follows https:\/\/\S+/m, `${n}: no source page`);
    assert.match(text, /^# Fill in: /m, `${n}: does not say what to fill in`);
    assert.match(text, new RegExp(`^# Checked against the documentation on ${CHECKED}\\.$`, 'm'), `${n}: no date checked`);
    assert.match(text, /^client_id = REPLACE-ME$/m, `${n}: the admin's client_id goes in the admin's file`);
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-presets-added-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  writeProviders(dir);
  fs.writeFileSync(path.join(dir, 'tb.conf'), '[broker]\nstate_dir = state\nsocket = tb.sock\nproviders_dir = providers.d\n' +
    `presets_dir = ${PRESETS}\ncallback_listen = 127.0.0.1:1\n`);
  const r = spawnSync(path.join(BUILD, 'tokenbrokerd'), ['--check-config', '-c', path.join(dir, 'tb.conf')],
    { encoding: 'utf8', timeout: 30000, env: { ...process.env, TOKENBROKER_LOG_LEVEL: 'info' } });
  noteRun('check-config presets-added', `${r.stdout ?? ''}${r.stderr ?? ''}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`OK \\(${Object.keys(ADDED).length} providers\\)`));
  assert.doesNotMatch(`${r.stdout}${r.stderr}`, /warning/i);
  for (const n of Object.keys(ADDED)) assert.ok(!`${r.stdout}${r.stderr}`.includes(secretOf(n)));
});

const header = (step, name) => step.headers.find((h) => h.toLowerCase().startsWith(`${name.toLowerCase()}:`));
const stepOf = (steps, name) => steps.find((s) => s.step === name);
const basic = (n) => `Authorization: Basic base64(${clientOf(n)}:<client_secret>)`;

/* What each preview must show: the exchange's URL, how the client
 * authenticates, and how clients present the token. */
const EXPECT = {
  shopify: {
    authorize: 'https://contoso.myshopify.com/admin/oauth/authorize?', exchange: 'https://contoso.myshopify.com/admin/oauth/access_token',
    body: [`code=<code>&expiring=1&client_id=${clientOf('shopify')}&client_secret=<client_secret>`],
    use: ['X-Shopify-Access-Token: <access_token>'], test: 'https://contoso.myshopify.com/admin/api/',
  },
  notion: {
    authorize: 'https://api.notion.com/v1/oauth/authorize?', exchange: 'https://api.notion.com/v1/oauth/token', auth: basic('notion'),
    body: ['{"grant_type":"authorization_code","code":"<code>"'], use: ['Authorization: Bearer <access_token>', 'Notion-Version: 2025-09-03'],
    revoke: 1,
  },
  x: { authorize: 'https://x.com/i/oauth2/authorize?', exchange: 'https://api.x.com/2/oauth2/token', auth: basic('x'), body: ['code_verifier=<code_verifier>'], revoke: 2 },
  facebook: {
    authorize: 'https://www.facebook.com/v25.0/dialog/oauth?', method: 'GET',
    exchange: `https://graph.facebook.com/v25.0/oauth/access_token?client_id=${clientOf('facebook')}&redirect_uri=`,
    refresh: 'grant_type=fb_exchange_token', query: 'access_token=<access_token>',
  },
  instagram: {
    authorize: 'https://www.instagram.com/oauth/authorize?', exchange: 'https://api.instagram.com/oauth/access_token',
    body: ['grant_type=authorization_code'], refresh: 'https://graph.instagram.com/access_token?grant_type=ig_exchange_token', query: 'access_token=<access_token>',
  },
  linear: { authorize: 'https://linear.app/oauth/authorize?', exchange: 'https://api.linear.app/oauth/token', body: ['client_secret=<client_secret>'], scope: 'scope=read%2Cwrite' },
  airtable: { authorize: 'https://airtable.com/oauth2/v1/authorize?', exchange: 'https://airtable.com/oauth2/v1/token', auth: basic('airtable'), body: ['code_verifier=<code_verifier>'] },
  pipedrive: { authorize: 'https://oauth.pipedrive.com/oauth/authorize?', exchange: 'https://oauth.pipedrive.com/oauth/token', auth: basic('pipedrive'), test: '${metadata.api_domain}/api/v1/users/me', revoke: 2 },
  docusign: { authorize: 'https://account.docusign.com/oauth/auth?', exchange: 'https://account.docusign.com/oauth/token', auth: basic('docusign'), scope: 'scope=signature%20extended' },
  zoho: {
    authorize: 'https://accounts.zoho.eu/oauth/v2/auth?', exchange: 'https://accounts.zoho.eu/oauth/v2/token',
    use: ['Authorization: Zoho-oauthtoken <access_token>'], test: '${metadata.api_domain}/crm/v8/users?type=CurrentUser', revoke: 1,
    scope: 'access_type=offline&prompt=consent',
  },
  servicenow: { authorize: 'https://dev12345.service-now.com/oauth_auth.do?', exchange: 'https://dev12345.service-now.com/oauth_token.do', body: ['client_secret=<client_secret>'] },
  bitbucket: { authorize: 'https://bitbucket.org/site/oauth2/authorize?', exchange: 'https://bitbucket.org/site/oauth2/access_token', auth: basic('bitbucket') },
  asana: { authorize: 'https://app.asana.com/-/oauth_authorize?', exchange: 'https://app.asana.com/-/oauth_token', body: ['client_secret=<client_secret>'], revoke: 1 },
  discord: { authorize: 'https://discord.com/oauth2/authorize?', exchange: 'https://discord.com/api/oauth2/token', auth: basic('discord'), revoke: 2 },
  twitch: {
    authorize: 'https://id.twitch.tv/oauth2/authorize?', exchange: 'https://id.twitch.tv/oauth2/token', body: ['client_secret=<client_secret>'],
    use: ['Authorization: Bearer <access_token>', 'Client-Id: REPLACE-ME'], revoke: 1,
  },
  webex: { authorize: 'https://webexapis.com/v1/authorize?', exchange: 'https://webexapis.com/v1/access_token', body: ['client_secret=<client_secret>'] },
  figma: { authorize: 'https://www.figma.com/oauth?', exchange: 'https://api.figma.com/v1/oauth/token', auth: basic('figma'), refresh: 'https://api.figma.com/v1/oauth/refresh' },
  mailchimp: { authorize: 'https://login.mailchimp.com/oauth2/authorize?', exchange: 'https://login.mailchimp.com/oauth2/token', test: 'https://us6.api.mailchimp.com/3.0/ping' },
  calendly: { authorize: 'https://auth.calendly.com/oauth/authorize?', exchange: 'https://auth.calendly.com/oauth/token', auth: basic('calendly'), revoke: 2 },
  'stripe-connect': {
    authorize: 'https://connect.stripe.com/oauth/authorize?', exchange: 'https://connect.stripe.com/oauth/token',
    auth: 'Authorization: Bearer <client_secret>', body: ['grant_type=authorization_code&code=<code>'], revoke: 1, scope: 'scope=read_write',
  },
};

test('tokenctl preview of each added preset: parameters filled in, client authentication, the usage rule', { timeout: 180000 }, async (t) => {
  const b = await Broker.prepare({ broker: { public_url: 'https://broker.example', presets_dir: PRESETS } });
  t.after(async () => { await b.stop(); });
  b.writeConfig();
  writeProviders(b.dir);
  await b.launch();

  for (const [n, params] of Object.entries(ADDED)) {
    const args = ['--json', 'preview', n];
    for (const [k, v] of Object.entries(params)) args.push('--param', `${k}=${v}`);
    const r = await b.ctl(args);
    assert.equal(r.code, 0, `${n}: ${r.stderr}`);
    for (const m of Object.keys(ADDED)) assert.ok(!r.stdout.includes(secretOf(m)), `${n}: a client secret in the preview`);
    const out = JSON.parse(r.stdout);
    const e = EXPECT[n];
    const steps = out.steps;
    const authz = stepOf(steps, 'authorize');
    assert.ok(authz.url.startsWith(e.authorize), `${n}: authorize ${authz.url}`);
    assert.ok(authz.url.includes(`client_id=${clientOf(n)}`), `${n}: the file's client_id`);
    assert.ok(authz.url.includes(`redirect_uri=${encodeURIComponent(`https://broker.example/oauth/callback/${n}`)}`), `${n}: ${authz.url}`);
    if (e.scope) assert.ok(authz.url.includes(e.scope), `${n}: ${authz.url}`);
    const ex = stepOf(steps, 'exchange');
    assert.equal(ex.method, e.method ?? 'POST', n);
    assert.ok(ex.url.startsWith(e.exchange), `${n}: exchange ${ex.url}`);
    if (e.auth) assert.ok(ex.headers.includes(e.auth), `${n}: ${ex.headers.join(' | ')}`);
    else assert.equal(header(ex, 'Authorization'), undefined, `${n}: no Authorization header on the exchange`);
    for (const s of e.body ?? []) assert.ok((ex.body ?? '').includes(s), `${n}: exchange body ${ex.body}`);
    const rf = stepOf(steps, 'refresh');
    if (e.refresh) assert.ok(`${rf.url} ${rf.body ?? ''}`.includes(e.refresh), `${n}: refresh ${rf.url} ${rf.body}`);
    const use = stepOf(steps, 'use');
    if (e.query) assert.equal(use.query, e.query, n);
    else assert.deepEqual(use.headers, e.use ?? ['Authorization: Bearer <access_token>'], n);
    if (e.test) assert.ok(stepOf(steps, 'test').url.startsWith(e.test), `${n}: test ${stepOf(steps, 'test').url}`);
    assert.equal(steps.filter((s) => s.step === 'revoke').length, e.revoke ?? 0, `${n}: revocation requests`);
    if (Object.keys(params).length) assert.deepEqual(out.params, params, n);
  }

  // a parameter left out: named in capitals where its value would stand, never empty
  const bare = await b.ctl(['--json', 'preview', 'shopify']);
  assert.equal(bare.code, 0, bare.stderr);
  assert.ok(stepOf(JSON.parse(bare.stdout).steps, 'authorize').url.startsWith('https://SHOP.myshopify.com/admin/oauth/authorize?'), bare.stdout);
});
