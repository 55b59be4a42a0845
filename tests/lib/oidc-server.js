#!/usr/bin/env node
'use strict';
/*
 * A real OAuth 2.0 / OpenID Connect authorization server for tokenbroker's
 * tests, built on npm `oidc-provider` 9.x. Module and CLI.
 *
 *   const { startOidc } = require('./lib/oidc-server.js');
 *   const op = await startOidc({ redirectUris: ['http://127.0.0.1:8421/oauth/callback'] });
 *   ... op.issuer, op.clientSecret, op.tokenRequests, op.events ...
 *   await op.close();
 *
 *   node tests/lib/oidc-server.js [--port 9000] [--redirect-uri URI]... \
 *        [--client-secret S] [--secret-file F] [--access-token-ttl N]
 *
 * Loopback only (127.0.0.1), plain http, all state in memory.
 *
 * oidc-provider facts that the configuration below relies on (9.13.x):
 *  - It is ESM-only; this file is CommonJS and loads it with import().
 *  - `offline_access` is dropped unless the authorization request carries
 *    prompt=consent; `issueRefreshToken` below issues a refresh token anyway
 *    whenever the client is allowed the refresh_token grant (such tokens
 *    then "expire with the session", the server-side session, which lives
 *    as long as this process does in practice).
 *  - Presenting an already-rotated refresh token is treated as theft: the
 *    whole grant is revoked, the newest refresh token dies too.
 *  - It refuses to introspect/revoke JWT access tokens: access tokens here
 *    are opaque.
 */

const crypto = require('node:crypto');
const http = require('node:http');
const fs = require('node:fs');
const { recordSecret } = require('./suite.js');
const { recordSecretsIn, recordAuthorization } = require('./fake-provider.js');

const DEFAULT_REDIRECT_URI = 'http://127.0.0.1:8421/oauth/callback';
const DEFAULT_SCOPE = 'openid email profile offline_access api:read';
const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const CLIENT_AUTH_PATHS = new Set(['/token', '/token/introspection', '/token/revocation', '/device/auth']);

/** sha256 hex prefix of a token value: what the logs keep instead of tokens. */
function tokenHash(value) {
  if (typeof value !== 'string' || value === '') return null;
  return crypto.createHash('sha256').update(value).digest('hex').slice(0, 16);
}

function htmlEscape(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

/* Plain pages: no external fonts or scripts (the stock pages @import a
 * web font, which a sandbox without network must not try to fetch). */
function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${htmlEscape(title)}</title>
<style>body{font-family:sans-serif;margin:2em auto;max-width:28em}
input,button{display:block;width:100%;margin:.4em 0;padding:.4em;box-sizing:border-box}
.error{color:#b00}</style></head>
<body><h1>${htmlEscape(title)}</h1>
${body}
</body></html>`;
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function basicAuth(clientId, clientSecret) {
  // RFC 6749 2.3.1: form-urlencode both parts before base64.
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(clientId)}:${enc(clientSecret)}`).toString('base64')}`;
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/**
 * Start an oidc-provider on 127.0.0.1.
 *
 * opts:
 *   port             listen port (default 0 = ephemeral)
 *   clientSecret     secret of both default clients (default: random)
 *   redirectUris     redirect_uris of the default clients
 *                    (default ['http://127.0.0.1:8421/oauth/callback'])
 *   accessTokenTtl   seconds, access tokens and client_credentials tokens (default 10)
 *   refreshTokenTtl  seconds (default 86400)
 *   idTokenTtl       seconds (default 3600)
 *   deviceCodeTtl    seconds (default 600)
 *   clients          array of extra client metadata objects; one whose client_id
 *                    is 'tokenbroker' or 'tokenbroker-post' replaces (is merged
 *                    over) the default one
 *   devInteractions  false: serve this module's own login/consent pages (same
 *                    URLs and form fields as the stock dev pages) which can
 *                    refuse; default true: oidc-provider's dev pages, any
 *                    login and password accepted, consent always possible
 *   users            (own pages only) { login: password }; when given, other
 *                    logins or wrong passwords are refused ("Invalid login")
 *   authenticate     (own pages only) async (login, password) => accountId|null
 *   consent          (own pages only) boolean or async ({accountId, clientId,
 *                    scopes}) => boolean; false answers access_denied (default true)
 *   strictClientAuth default true: a client that authenticates with the other
 *                    secret method than its registered token_endpoint_auth_method
 *                    gets 401 invalid_client (oidc-provider 9 itself accepts
 *                    basic and post interchangeably for any secret client)
 *   configure        (config) => void: last-chance edit of the provider config
 *   quiet            true: do not print oidc-provider's NOTICE lines
 */
async function startOidc(opts = {}) {
  const { default: Provider } = await import('oidc-provider');

  const state = {
    accessTokenTtl: Number(opts.accessTokenTtl ?? 10),
    refreshTokenTtl: Number(opts.refreshTokenTtl ?? 24 * 60 * 60),
  };
  const clientSecret = opts.clientSecret ?? crypto.randomBytes(24).toString('base64url');
  recordSecret(clientSecret);   // a secret of the suite (tests/lib/suite.js), like all below
  const redirectUris = opts.redirectUris ?? [DEFAULT_REDIRECT_URI];
  const devInteractions = opts.devInteractions !== false;

  const baseClient = {
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials', DEVICE_CODE_GRANT],
    response_types: ['code'],
    scope: DEFAULT_SCOPE,
  };
  const clientMap = new Map();
  clientMap.set('tokenbroker', {
    ...baseClient, client_id: 'tokenbroker', token_endpoint_auth_method: 'client_secret_basic',
  });
  clientMap.set('tokenbroker-post', {
    ...baseClient, client_id: 'tokenbroker-post', token_endpoint_auth_method: 'client_secret_post',
  });
  for (const c of opts.clients ?? []) {
    recordSecret(c.client_secret);
    clientMap.set(c.client_id, { ...(clientMap.get(c.client_id) ?? {}), ...c });
  }
  const clients = Object.fromEntries(clientMap);

  // Keys made here, no network: cookie signing keys and one RS256 JWK.
  // The key comes out as PEM and is exported to a JWK through a KeyObject
  // of its own: exporting the generated KeyObject straight to a JWK hung
  // Node 20 once for good (a garbage collection during the export ran the
  // key generation job's destructor, which waited for the mutex the export
  // held: gdb showed ~KeyGenJob under ExportJWKRsaKey).
  const { privateKey: pem } = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const jwk = { ...crypto.createPrivateKey(pem).export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: `test-${crypto.randomBytes(6).toString('hex')}` };
  const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

  // ---- records -----------------------------------------------------------
  const events = [];
  const tokenRequests = [];
  const grants = new Map(); // grantId -> summary
  const issuedRefresh = new Map(); // rt hash -> grantId
  let seq = 0;
  const record = (type, fields) => {
    const e = { seq: ++seq, type, time: Date.now(), ...fields };
    events.push(e);
    return e;
  };
  const grantEntry = (grantId, fields = {}) => {
    if (!grantId) return null;
    let g = grants.get(grantId);
    if (!g) {
      g = {
        grantId, clientId: null, accountId: null, createdAt: Date.now(),
        currentRefreshTokenHash: null, refreshTokenHashes: [], refreshCount: 0,
        revoked: false, revokedAt: null,
      };
      grants.set(grantId, g);
    }
    for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null) g[k] = v;
    return g;
  };

  const accountFor = (sub) => ({
    accountId: sub,
    async claims() {
      const email = sub.includes('@') ? sub : `${sub}@example.com`;
      return {
        sub, email, email_verified: true, name: sub, preferred_username: sub,
      };
    },
  });

  const deviceSources = {
    async userCodeInputSource(ctx, form, out, err) {
      let msg = '<p>Enter the code displayed on your device</p>';
      if (err && (err.userCode || err.name === 'NoCodeError')) msg = '<p class="error">The code you entered is incorrect. Try again</p>';
      else if (err && err.name === 'AbortedError') msg = '<p class="error">The Sign-in request was interrupted</p>';
      else if (err) msg = '<p class="error">There was an error processing your request</p>';
      ctx.body = page('Sign-in', `${msg}${form}<button type="submit" form="op.deviceInputForm">Continue</button>`);
    },
    async userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
      ctx.body = page('Confirm Device', `<p><strong>${htmlEscape(client.clientName || client.clientId)}</strong></p>
<p>The following code should be displayed on your device: <code id="user-code">${htmlEscape(userCode)}</code></p>
${form}
<button autofocus type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">[ Abort ]</button>`);
    },
    async successSource(ctx) {
      ctx.body = page('Sign-in Success', '<p id="device-success">Your sign-in was successful, you can now close this page.</p>');
    },
  };

  const ourClientIds = new Set(clientMap.keys());

  const configuration = {
    clients: [...clientMap.values()],
    jwks: { keys: [jwk] },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'api:read'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
    },
    // Put scope-requested claims (email) into the ID token too, not only userinfo.
    conformIdTokenClaims: false,
    async findAccount(ctx, sub) { return accountFor(sub); },
    pkce: { required: () => true }, // S256 is the only method 9.x knows
    rotateRefreshToken: true,
    async issueRefreshToken(ctx, client) { return client.grantTypeAllowed('refresh_token'); },
    ttl: {
      AccessToken: () => state.accessTokenTtl,
      ClientCredentials: () => state.accessTokenTtl,
      RefreshToken: () => state.refreshTokenTtl,
      AuthorizationCode: 60,
      IdToken: Number(opts.idTokenTtl ?? 3600),
      DeviceCode: Number(opts.deviceCodeTtl ?? 600),
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
      BackchannelAuthenticationRequest: 600,
      PreAuthorizedCode: 600,
    },
    features: {
      devInteractions: { enabled: devInteractions },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // any authenticated confidential client may introspect any token
        async allowedPolicy(ctx, client, token) {
          return client.clientAuthMethod !== 'none' || token.clientId === client.clientId;
        },
      },
      revocation: {
        enabled: true,
        async allowedPolicy(ctx, client, token) {
          return token.clientId === client.clientId || ourClientIds.has(client.clientId);
        },
      },
      deviceFlow: { enabled: true, ...deviceSources },
      userinfo: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('Logout', `${form}<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>`);
        },
        async postLogoutSuccessSource(ctx) { ctx.body = page('Signed out', '<p>Signed out.</p>'); },
      },
    },
    responseTypes: ['code'],
    clientBasedCORS: () => true,
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out).map(([k, v]) => `<pre><strong>${htmlEscape(k)}</strong>: ${htmlEscape(v)}</pre>`).join('\n'));
    },
  };
  if (!devInteractions) {
    configuration.interactions = { url: (ctx, interaction) => `/interaction/${interaction.uid}` };
  }
  if (typeof opts.configure === 'function') opts.configure(configuration);

  // oidc-provider prints NOTICE lines through console.info; let --quiet drop them.
  const restoreInfo = console.info;
  const restoreWarn = console.warn;
  if (opts.quiet) {
    console.info = (...a) => { if (!String(a[0]).startsWith('oidc-provider NOTICE')) restoreInfo(...a); };
    console.warn = (...a) => { if (!String(a[0]).includes('already parsed request body detected')) restoreWarn(...a); };
  }

  // Listen first so the issuer carries the real port.
  const server = http.createServer();
  server.keepAliveTimeout = 5000;
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  let provider;
  try {
    provider = new Provider(issuer, configuration);
  } catch (e) {
    await new Promise((r) => server.close(r));
    if (opts.quiet) { console.info = restoreInfo; console.warn = restoreWarn; }
    throw e;
  }

  // ---- token endpoint log (post-processing middleware) --------------------
  const authSeen = new WeakMap(); // req -> { method, clientId } (set by the http handler)
  provider.use(async (ctx, next) => {
    await next();
    // Every route: what the client sent (state, code, PKCE verifier, refresh
    // token, client secret) and what it got (tokens, ID token, device code).
    recordSecretsIn(ctx.oidc?.params);
    if (ctx.body && typeof ctx.body === 'object' && !Buffer.isBuffer(ctx.body) && typeof ctx.body.pipe !== 'function') recordSecretsIn(ctx.body);
    const loc = ctx.response?.get?.('location');
    if (loc) { try { recordSecretsIn(Object.fromEntries(new URL(loc, issuer).searchParams)); } catch { /* not a URL */ } }
    if (ctx.oidc?.route !== 'token') return;
    const params = ctx.oidc.params || {};
    const body = ctx.body && typeof ctx.body === 'object' ? ctx.body : {};
    const presented = tokenHash(params.refresh_token);
    const entities = ctx.oidc.entities || {};
    let grantId = entities.Grant?.jti || entities.RefreshToken?.grantId
      || entities.AuthorizationCode?.grantId || entities.DeviceCode?.grantId
      || (presented && issuedRefresh.get(presented)) || null;
    const entry = {
      seq: ++seq,
      time: Date.now(),
      grant_type: params.grant_type ?? null,
      client_id: ctx.oidc.client?.clientId ?? null,
      client_auth: authSeen.get(ctx.req)?.method ?? null,
      status: ctx.status,
      ok: ctx.status === 200,
      error: body.error ?? null,
      error_description: body.error_description ?? null,
      grant_id: grantId,
      refresh_token_hash: presented,
      refresh_token_known: presented ? issuedRefresh.has(presented) : null,
      refresh_token_was_current: null,
      issued_refresh_token_hash: tokenHash(body.refresh_token),
      issued_access_token_hash: tokenHash(body.access_token),
      scope: body.scope ?? null,
      expires_in: body.expires_in ?? null,
    };
    if (presented) {
      const g = grantId ? grants.get(grantId) : null;
      entry.refresh_token_was_current = !!(g && g.currentRefreshTokenHash === presented);
    }
    if (ctx.status === 200 && grantId) {
      const g = grantEntry(grantId, {
        clientId: entry.client_id,
        accountId: entities.Account?.accountId || entities.Grant?.accountId,
      });
      if (entry.grant_type === 'refresh_token') g.refreshCount += 1;
      if (entry.issued_refresh_token_hash) {
        g.currentRefreshTokenHash = entry.issued_refresh_token_hash;
        g.refreshTokenHashes.push(entry.issued_refresh_token_hash);
        issuedRefresh.set(entry.issued_refresh_token_hash, grantId);
      }
    }
    tokenRequests.push(entry);
  });

  // ---- provider events -----------------------------------------------------
  const ctxFields = (ctx) => ({
    route: ctx?.oidc?.route,
    client_id: ctx?.oidc?.client?.clientId,
    grant_type: ctx?.oidc?.params?.grant_type,
  });
  const errFields = (err) => ({ error: err?.error || err?.message, error_description: err?.error_description });
  for (const name of [
    'grant.success', 'authorization.success', 'authorization.accepted',
    'device_authorization.success', 'interaction.started', 'interaction.ended',
    'end_session.success',
  ]) {
    provider.on(name, (ctx) => record(name, ctxFields(ctx)));
  }
  for (const name of [
    'grant.error', 'authorization.error', 'introspection.error', 'revocation.error',
    'device_authorization.error', 'code_verification.error', 'userinfo.error',
    'end_session.error', 'server_error', 'jwks.error', 'discovery.error',
  ]) {
    provider.on(name, (ctx, err) => record(name, { ...ctxFields(ctx), ...errFields(err) }));
  }
  provider.on('grant.revoked', (ctx, grantId) => {
    const g = grantEntry(grantId);
    if (g) { g.revoked = true; g.revokedAt = Date.now(); }
    record('grant.revoked', { ...ctxFields(ctx), grant_id: grantId });
  });
  const modelFields = (t) => ({
    kind: t.kind,
    token_hash: tokenHash(t.jti), // for opaque tokens jti is the token value
    grant_id: t.grantId,
    client_id: t.clientId,
    account_id: t.accountId,
    scope: t.scope,
    exp: t.exp,
    rotations: t.rotations,
  });
  for (const kind of ['access_token', 'refresh_token', 'authorization_code', 'client_credentials', 'device_code', 'grant']) {
    for (const what of ['saved', 'consumed', 'destroyed']) {
      const name = `${kind}.${what}`;
      provider.on(name, (t) => {
        if (kind !== 'grant' && what === 'saved') recordSecret(t.jti);   // opaque tokens and codes: the value itself
        if (kind === 'grant') {
          record(name, { kind: 'Grant', grant_id: t.jti, client_id: t.clientId, account_id: t.accountId });
          if (what === 'saved') grantEntry(t.jti, { clientId: t.clientId, accountId: t.accountId });
          return;
        }
        record(name, modelFields(t));
      });
    }
  }

  // ---- failure injection and own interaction pages -------------------------
  const injections = [];
  const providerCallback = provider.callback();

  async function ownInteraction(req, res, url) {
    const m = url.pathname.match(/^\/interaction\/([^/]+)(\/abort)?$/);
    if (!m) return false;
    const send = (status, html) => {
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(html);
    };
    const uid = m[1];
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch (e) {
      send(400, page('Error', `<p class="error">${htmlEscape(e.message)}</p>`));
      return true;
    }
    const { prompt, params, session, grantId } = details;
    const abortLink = `<p><a id="abort" href="/interaction/${htmlEscape(uid)}/abort">[ Cancel ]</a></p>`;
    const loginPage = (err) => page('Sign-in', `${err ? `<p class="error">${htmlEscape(err)}</p>` : ''}
<form autocomplete="off" action="/interaction/${htmlEscape(uid)}" method="post">
<input type="hidden" name="prompt" value="login"/>
<input required type="text" name="login" placeholder="Enter any login" autofocus>
<input required type="password" name="password" placeholder="and password">
<button type="submit" class="login login-submit">Sign-in</button>
</form>${abortLink}`);
    const consentPage = () => page('Authorize', `<p>${htmlEscape(params.client_id)} asks for: ${htmlEscape(params.scope || '')}</p>
<form autocomplete="off" action="/interaction/${htmlEscape(uid)}" method="post">
<input type="hidden" name="prompt" value="consent"/>
<button autofocus type="submit" class="login login-submit">Continue</button>
</form>${abortLink}`);

    if (m[2]) { // abort
      record('interaction.aborted', { client_id: params.client_id, prompt: prompt.name });
      await provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
      return true;
    }
    if (req.method === 'GET') {
      if (prompt.name === 'login') send(200, loginPage());
      else if (prompt.name === 'consent') send(200, consentPage());
      else send(501, page('Error', 'not implemented'));
      return true;
    }
    if (req.method !== 'POST') { send(405, page('Error', 'method not allowed')); return true; }
    const form = new URLSearchParams(await readBody(req));
    if (form.get('prompt') === 'login' && prompt.name === 'login') {
      const login = form.get('login') || '';
      const password = form.get('password') || '';
      let accountId = login || null;
      if (typeof opts.authenticate === 'function') accountId = await opts.authenticate(login, password);
      else if (opts.users) accountId = Object.hasOwn(opts.users, login) && opts.users[login] === password ? login : null;
      if (!accountId) {
        record('interaction.login_failed', { client_id: params.client_id, login });
        send(200, loginPage('Invalid login or password'));
        return true;
      }
      record('interaction.login', { client_id: params.client_id, account_id: accountId });
      await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
      return true;
    }
    if (form.get('prompt') === 'consent' && prompt.name === 'consent') {
      const scopes = (params.scope || '').split(' ').filter(Boolean);
      let allowed = opts.consent ?? true;
      if (typeof allowed === 'function') {
        allowed = await allowed({ accountId: session?.accountId, clientId: params.client_id, scopes });
      }
      if (!allowed) {
        record('interaction.consent_denied', { client_id: params.client_id, account_id: session?.accountId });
        await provider.interactionFinished(req, res, {
          error: 'access_denied', error_description: 'End-User refused consent',
        }, { mergeWithLastSubmission: false });
        return true;
      }
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      if (d.missingResourceScopes) {
        for (const [indicator, s] of Object.entries(d.missingResourceScopes)) grant.addResourceScope(indicator, s.join(' '));
      }
      record('interaction.consent', { client_id: params.client_id, account_id: session?.accountId });
      await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
      return true;
    }
    send(400, page('Error', '<p class="error">unexpected form submission</p>'));
    return true;
  }

  server.on('request', (req, res) => {
    (async () => {
      const url = new URL(req.url, issuer);
      const inj = injections.find((i) => i.count > 0 && url.pathname === i.path
        && (!i.method || i.method === req.method));
      if (inj) {
        inj.count -= 1;
        if (inj.delayMs) await sleep(inj.delayMs);
        await readBody(req).catch(() => {});
        record('injected_failure', { path: url.pathname, status: inj.status });
        if (url.pathname === '/token') {
          tokenRequests.push({
            seq: ++seq, time: Date.now(), grant_type: null, client_id: null, status: inj.status,
            ok: false, injected: true, error: inj.body?.error ?? null,
          });
        }
        if (inj.status === 0) { req.socket.destroy(); return; }
        res.writeHead(inj.status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(JSON.stringify(inj.body ?? { error: 'temporarily_unavailable', error_description: 'injected failure' }));
        return;
      }
      recordAuthorization(req.headers.authorization);
      recordSecretsIn(Object.fromEntries(url.searchParams));
      if (req.method === 'POST' && CLIENT_AUTH_PATHS.has(url.pathname)) {
        // Read the form here (oidc-provider then uses req.body) to see which
        // client authentication method the caller used.
        const raw = await readBody(req, 56 * 1024);
        req.body = raw;
        const form = new URLSearchParams(raw);
        recordSecretsIn(Object.fromEntries(form));
        let method = 'none';
        let cid = form.get('client_id');
        const authz = req.headers.authorization || '';
        if (/^basic /i.test(authz)) {
          method = 'client_secret_basic';
          const dec = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
          const i = dec.indexOf(':');
          try { cid = decodeURIComponent((i < 0 ? dec : dec.slice(0, i)).replace(/\+/g, ' ')); } catch { cid = null; }
        } else if (form.has('client_secret')) method = 'client_secret_post';
        else if (form.has('client_assertion')) method = 'jwt';
        authSeen.set(req, { method, clientId: cid });
        const registered = cid && clientMap.get(cid)?.token_endpoint_auth_method;
        if (opts.strictClientAuth !== false && registered && method !== 'none' && method !== registered) {
          record('client_auth.mismatch', { path: url.pathname, client_id: cid, used: method, registered });
          if (url.pathname === '/token') {
            tokenRequests.push({
              seq: ++seq, time: Date.now(), grant_type: form.get('grant_type'), client_id: cid, client_auth: method,
              status: 401, ok: false, error: 'invalid_client', error_description: 'client authentication method mismatch',
            });
          }
          const h = { 'content-type': 'application/json', 'cache-control': 'no-store' };
          if (method === 'client_secret_basic') h['www-authenticate'] = 'Basic realm="tokenbroker-test"';
          res.writeHead(401, h);
          res.end(JSON.stringify({
            error: 'invalid_client',
            error_description: `client ${cid} is registered for ${registered}, not ${method}`,
          }));
          return;
        }
      }
      if (!devInteractions && url.pathname.startsWith('/interaction/')) {
        if (await ownInteraction(req, res, url)) return;
      }
      providerCallback(req, res);
    })().catch((err) => {
      record('server_error', { error: err.message });
      if (!res.headersSent) { res.writeHead(500, { 'content-type': 'text/plain' }); }
      res.end('internal error');
    });
  });

  // ---- helpers -------------------------------------------------------------
  const urlOf = (p = '/') => new URL(p, `${issuer}/`).toString();
  const endpoints = {
    authorization: urlOf('/auth'),
    token: urlOf('/token'),
    introspection: urlOf('/token/introspection'),
    revocation: urlOf('/token/revocation'),
    device_authorization: urlOf('/device/auth'),
    device_verification: urlOf('/device'),
    userinfo: urlOf('/me'),
    jwks: urlOf('/jwks'),
    end_session: urlOf('/session/end'),
    discovery: urlOf('/.well-known/openid-configuration'),
  };

  async function postForm(endpoint, params, { clientId = 'tokenbroker', secret, auth, timeoutMs = 10000 } = {}) {
    const c = clients[clientId];
    const sec = secret ?? c?.client_secret;
    const headers = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    const form = new URLSearchParams(params);
    const method = auth ?? c?.token_endpoint_auth_method ?? 'client_secret_basic';
    if (method === 'client_secret_basic') headers.authorization = basicAuth(clientId, sec);
    else if (method === 'client_secret_post') { form.set('client_id', clientId); form.set('client_secret', sec); } else if (method === 'none') form.set('client_id', clientId);
    const res = await fetch(endpoint, { method: 'POST', headers, body: form, signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = null; }
    return { status: res.status, json, text, headers: res.headers };
  }

  const api = {
    issuer,
    port,
    provider,
    url: urlOf,
    endpoints,
    clientId: 'tokenbroker',
    clientSecret,
    clients,
    redirectUris,
    devInteractions,
    events,
    tokenRequests,
    grants,
    tokenHash,
    basicAuth,
    get accessTokenTtl() { return state.accessTokenTtl; },
    setAccessTokenTtl(n) { state.accessTokenTtl = Number(n); },
    setRefreshTokenTtl(n) { state.refreshTokenTtl = Number(n); },
    /** Token endpoint POST; returns { status, json, text, headers }. */
    tokenRequest(params, o) { return postForm(endpoints.token, params, o); },
    /** Introspection (as 'tokenbroker' unless o.clientId); returns the JSON. */
    async introspect(token, o = {}) {
      const r = await postForm(endpoints.introspection, { token, ...(o.hint ? { token_type_hint: o.hint } : {}) }, o);
      if (r.status !== 200) throw new Error(`introspection answered ${r.status}: ${r.text.slice(0, 200)}`);
      return r.json;
    },
    /** Revocation; returns the HTTP status (200 on success). */
    async revoke(token, o = {}) {
      const r = await postForm(endpoints.revocation, { token, ...(o.hint ? { token_type_hint: o.hint } : {}) }, o);
      return r.status;
    },
    /** Refresh-grant requests only, in order. */
    refreshRequests() { return tokenRequests.filter((r) => r.grant_type === 'refresh_token'); },
    /**
     * Make the next `count` requests to `path` fail without reaching the
     * provider: status (0 = drop the connection), JSON body, optional delay.
     */
    failNext({ path = '/token', method, count = 1, status = 503, body, delayMs = 0 } = {}) {
      injections.push({ path, method, count, status, body, delayMs });
    },
    clearFailures() { injections.length = 0; },
    clearLogs() { events.length = 0; tokenRequests.length = 0; },
    /** Poll until fn() is truthy; returns its value; throws after timeoutMs. */
    async waitFor(fn, { timeoutMs = 10000, intervalMs = 25, what = 'condition' } = {}) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(intervalMs);
      }
    },
    async close() {
      if (opts.quiet) { console.info = restoreInfo; console.warn = restoreWarn; }
      await new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
  return api;
}

// ---- CLI ---------------------------------------------------------------------
function parseArgs(argv) {
  const out = { redirectUris: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--port': out.port = Number(val()); break;
      case '--redirect-uri': out.redirectUris.push(val()); break;
      case '--client-secret': out.clientSecret = val(); break;
      case '--secret-file': out.secretFile = val(); break;
      case '--access-token-ttl': out.accessTokenTtl = Number(val()); break;
      case '--refresh-token-ttl': out.refreshTokenTtl = Number(val()); break;
      case '--no-dev-interactions': out.devInteractions = false; break;
      case '--quiet': out.quiet = true; break;
      case '-h': case '--help':
        process.stdout.write(`usage: node oidc-server.js [--port N] [--redirect-uri URI]... [--client-secret S]
       [--secret-file F] [--access-token-ttl N] [--refresh-token-ttl N] [--no-dev-interactions] [--quiet]
Clients: tokenbroker (client_secret_basic), tokenbroker-post (client_secret_post), same secret.
Dev login accepts any login/password. Listens on 127.0.0.1 only. Stops on SIGINT/SIGTERM.
`);
        process.exit(0);
        break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (out.redirectUris.length === 0) delete out.redirectUris;
  return out;
}

async function main() {
  let args;
  try { args = parseArgs(process.argv.slice(2)); } catch (e) {
    process.stderr.write(`oidc-server: ${e.message} (try --help)\n`);
    process.exit(2);
  }
  // An existing, non-empty --secret-file is the secret to use (the broker's
  // dev provider file reads the same file); otherwise one is made and written.
  if (args.secretFile && !args.clientSecret) {
    try {
      const existing = fs.readFileSync(args.secretFile, 'utf8').trim();
      if (existing) args.clientSecret = existing;
    } catch (e) { if (e.code !== 'ENOENT') throw e; }
  }
  const op = await startOidc(args);
  process.stdout.write(`oidc-provider listening on ${op.issuer} (client_id=${op.clientId})\n`);
  if (args.secretFile) {
    fs.writeFileSync(args.secretFile, `${op.clientSecret}\n`, { mode: 0o600 });
    process.stdout.write(`client secret written to ${args.secretFile} (clients tokenbroker, tokenbroker-post)\n`);
  } else {
    process.stdout.write(`client secret (dev only, clients tokenbroker, tokenbroker-post): ${op.clientSecret}\n`);
  }
  let stopping = false;
  const stop = async (sig) => {
    if (stopping) return;
    stopping = true;
    process.stdout.write(`oidc-provider stopping (${sig})\n`);
    await op.close();
    process.exit(0);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

module.exports = { startOidc, tokenHash, basicAuth, DEFAULT_REDIRECT_URI, DEFAULT_SCOPE, DEVICE_CODE_GRANT };

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`oidc-server: ${e.stack || e}\n`);
    process.exit(1);
  });
}
