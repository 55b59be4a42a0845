'use strict';
/*
 * A programmable fake OAuth 2.0 provider for tests and benchmarks, beside
 * the real oidc-provider, not instead of it. Loopback only.
 *
 *   const fp = await startFakeProvider({ expiresIn: 3600 });
 *   fp.url('/token') ... fp.requests ... fp.respond = (req, params) => ({...})
 *
 * GET  /authorize  approves at once: 302 to redirect_uri with code and state
 * POST /token      authorization_code, refresh_token, client_credentials
 * POST /revoke     RFC 7009: 200
 * Every request is recorded (method, path, headers, raw body, parsed params).
 * `respond` may override any token answer: return {status, headers, body}.
 *
 * Options (all optional; the defaults are what they always were):
 *   expiresIn     seconds, or a function (grantId) => seconds     (3600)
 *   rotate        issue a new refresh token on every refresh and delete
 *                 the used one at once: no reuse at all           (true)
 *   graceReuse    the rotation model of real providers (Okta's grace
 *                 period, Auth0's reuse interval, Microsoft): see below
 *                 (false). Implies rotation.
 *   revokeOnReuse with graceReuse: a refused reuse revokes the whole grant,
 *                 as breach detection does                         (true)
 *   tokenDelayMs  ms, or a function (rec) => ms: the token endpoint holds
 *                 its answer this long AFTER it has changed its state, so
 *                 a client killed meanwhile loses the answer       (0)
 *   record        push every request onto fp.requests              (true)
 *   codeParam     the callback parameter /authorize puts the code in ('code')
 *
 * A respond() answer may also be {streamBytes: N}: a 200 whose body is N
 * bytes of JSON-looking filler sent in chunks, stopped when the client
 * goes away (a body far too large for any token response).
 * grant_type=password is answered like client_credentials; every code
 * /authorize issued is in fp.codes.
 *
 * graceReuse: per grant the provider keeps {current, previous}.
 *  - presenting `current` is a normal refresh: previous := current,
 *    current := a new token (the new one is unused);
 *  - presenting `previous` is accepted only while `current` was never used
 *    (always true by the rule above, since using current moves previous
 *    on): the client crashed between our 200 and its own commit. It gets
 *    a fresh pair; the unused `current` is invalidated and replaced,
 *    `previous` stays as it is;
 *  - presenting any older token of the grant is taken for theft:
 *    invalid_grant, and with revokeOnReuse the grant dies (every token).
 * So a correct client never sees invalid_grant if it never presents a
 * token it has not committed, never loses a committed one and never goes
 * back to an older one. fp.stats counts the outcomes; fp.grants holds the
 * per-grant state; fp.tokens maps every issued token to its issuance
 * {grant, gen, at, refresh_token, access_token, seen}.
 * fp.newGeneration() marks a client restart: a grace reuse of a `current`
 * issued in the same generation means a live client went backwards
 * (stats.graceSameGeneration). fp.markSeen(access_token) records that a
 * client of the broker was handed this access token; a grace reuse that
 * drops a `current` whose access token was seen means the broker served a
 * token before committing its refresh token (stats.graceAfterSeen).
 */
const crypto = require('node:crypto');
const http = require('node:http');
const { recordSecret } = require('./suite.js');

function rnd(n = 16) { return crypto.randomBytes(n).toString('base64url'); }

/* Names of parameters and answer members whose values are secrets. */
const SECRET_KEY = /(^|_)(token|code|secret|password|verifier|assertion|state)$/i;

/** Records every secret-looking string member of an object (nested too). */
function recordSecretsIn(o, depth = 0) {
  if (!o || typeof o !== 'object' || depth > 4) return;
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'string' && SECRET_KEY.test(k) && k !== 'user_code') recordSecret(v);
    else if (v && typeof v === 'object') recordSecretsIn(v, depth + 1);
  }
}

/** The credential of an Authorization header (Basic or Bearer), and Basic's secret. */
function recordAuthorization(value) {
  const m = /^\s*\S+\s+(\S+)/.exec(value || '');
  if (!m) return;
  recordSecret(m[1]);
  if (/^\s*basic\s/i.test(value)) {
    const dec = Buffer.from(m[1], 'base64').toString('utf8');
    const i = dec.indexOf(':');
    if (i >= 0) {
      const secret = dec.slice(i + 1);
      recordSecret(secret);
      try { recordSecret(decodeURIComponent(secret.replace(/\+/g, ' '))); } catch { /* not encoded */ }
    }
  }
}

async function startFakeProvider(opts = {}) {
  const fp = {
    requests: [],
    expiresIn: opts.expiresIn ?? 3600,
    rotate: opts.rotate ?? true,
    respond: opts.respond ?? null,
    refreshTokens: new Map(),   // current refresh token -> grant id
    issued: [],                 // {grant, access_token, refresh_token}
    graceReuse: opts.graceReuse ?? false,
    revokeOnReuse: opts.revokeOnReuse ?? true,
    tokenDelayMs: opts.tokenDelayMs ?? 0,
    record: opts.record ?? true,
    codeParam: opts.codeParam ?? 'code',
    callbackExtra: opts.callbackExtra ?? null,   // extra callback query parameters (Intuit's realmId)
    tokenExtra: opts.tokenExtra ?? null,         // extra token answer fields
    codes: [],
    grants: new Map(),          // graceReuse: grant id -> {current, previous, revoked, ...}
    tokens: new Map(),          // every issued token (access and refresh) -> its issuance
    generation: 0,
    stats: {
      authorized: 0, refreshed: 0, graceAccepted: 0, graceSameGeneration: 0, graceAfterSeen: 0,
      invalidGrant: 0, reuseRefused: 0, unknownToken: 0, revokedGrant: 0, servedSeen: 0,
    },
    rejections: [],             // {time, grant, reason}
  };
  // Everything this provider hands out is a secret of the suite (tests/lib/suite.js).
  for (const key of ['issued', 'codes']) {
    const arr = fp[key];
    const push = arr.push.bind(arr);
    arr.push = (...xs) => {
      for (const x of xs) {
        if (typeof x === 'string') recordSecret(x);
        else if (x) {
          recordSecret(x.access_token);
          recordSecret(x.refresh_token);
          if (x.at === undefined) x.at = Date.now();   // when it was issued, for expiry checks
        }
      }
      return push(...xs);
    };
  }
  fp.newGeneration = () => ++fp.generation;
  fp.markSeen = (accessToken) => {
    const iss = fp.tokens.get(accessToken);
    if (!iss) return null;
    if (!iss.seen) { iss.seen = true; fp.stats.servedSeen++; }
    return iss;
  };
  const lifetime = (grant) => (typeof fp.expiresIn === 'function' ? fp.expiresIn(grant) : fp.expiresIn);

  function invalidGrant(res, grant, reason, description) {
    const g = grant ? fp.grants.get(grant) : null;
    fp.stats.invalidGrant++;
    if (g) g.invalidGrant++;
    fp.rejections.push({ time: Date.now(), grant, reason });
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'invalid_grant', error_description: description }));
  }

  /* The graceReuse token endpoint: returns the answer, or null after
   * answering invalid_grant itself. */
  function graceToken(res, gt, params) {
    let grant, g, presented = null;
    if (gt === 'authorization_code') {
      grant = rnd(6);
      g = { id: grant, current: null, previous: null, revoked: false, refreshes: 0, graces: 0, lastOk: null, invalidGrant: 0 };
      fp.grants.set(grant, g);
      fp.stats.authorized++;
    } else {
      const iss = fp.tokens.get(params.refresh_token);
      const rt = params.refresh_token;
      if (!iss || iss.kind !== 'refresh') { fp.stats.unknownToken++; invalidGrant(res, null, 'unknown', 'unknown refresh token'); return null; }
      grant = iss.grant;
      g = fp.grants.get(grant);
      if (g.revoked) { fp.stats.revokedGrant++; invalidGrant(res, grant, 'revoked', 'grant revoked'); return null; }
      if (rt === g.current) {
        presented = 'current';
        g.previous = g.current;
      } else if (rt === g.previous) {
        // The client crashed between our answer and its commit: the unused
        // current dies, previous stays valid until the new one is used.
        presented = 'previous';
        const dropped = fp.tokens.get(g.current);
        fp.stats.graceAccepted++;
        g.graces++;
        if (dropped && dropped.gen === fp.generation) fp.stats.graceSameGeneration++;
        if (dropped && dropped.pair && dropped.pair.seen) fp.stats.graceAfterSeen++;
      } else {
        fp.stats.reuseRefused++;
        if (fp.revokeOnReuse) g.revoked = true;
        invalidGrant(res, grant, 'reuse', 'refresh token reuse detected');
        return null;
      }
      g.refreshes++;
      fp.stats.refreshed++;
    }
    const now = Date.now();
    const body = { access_token: `at-${rnd(24)}`, token_type: 'Bearer', expires_in: lifetime(grant), refresh_token: `rt-${rnd(24)}` };
    const at = { kind: 'access', grant, gen: fp.generation, at: now, access_token: body.access_token, refresh_token: body.refresh_token, seen: false };
    const rtIss = { kind: 'refresh', grant, gen: fp.generation, at: now, access_token: body.access_token, refresh_token: body.refresh_token, pair: at };
    fp.tokens.set(body.access_token, at);
    fp.tokens.set(body.refresh_token, rtIss);
    g.current = body.refresh_token;
    g.lastOk = { time: now, presented, gen: fp.generation };
    fp.issued.push({ grant, access_token: body.access_token, refresh_token: body.refresh_token });
    return body;
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const u = new URL(req.url, 'http://127.0.0.1');
      let params = {};
      if ((req.headers['content-type'] || '').startsWith('application/json')) {
        try { params = JSON.parse(raw); } catch { params = {}; }
      } else {
        params = Object.fromEntries(new URLSearchParams(raw));
      }
      const rec = { time: Date.now(), method: req.method, path: u.pathname, query: Object.fromEntries(u.searchParams), headers: req.headers, raw, params };
      // A tenant-style URL, /t/TENANT/...: served as /... with rec.tenant set.
      const tm = u.pathname.match(/^\/t\/([^/]+)(\/.*)$/);
      if (tm) rec.tenant = decodeURIComponent(tm[1]);
      const route = tm ? tm[2] : u.pathname;
      if (fp.record) fp.requests.push(rec);
      // What the broker sent is a secret of the suite too: states, PKCE
      // verifiers, codes, refresh tokens, client credentials, passwords.
      recordSecretsIn(params);
      recordSecretsIn(rec.query);
      recordAuthorization(req.headers.authorization);
      const end = res.end.bind(res);
      res.end = (chunk, ...rest) => {   // and every token a test's respond() invents
        if (chunk && (typeof chunk === 'string' || Buffer.isBuffer(chunk)) && chunk.length < 1024 * 1024) {
          try { recordSecretsIn(JSON.parse(chunk.toString())); } catch { /* not JSON */ }
        }
        return end(chunk, ...rest);
      };

      if (fp.respond) {
        const o = await fp.respond(rec);
        if (o) {
          if (o.delayMs) await new Promise((r) => setTimeout(r, o.delayMs));
          if (o.destroy) { req.socket.destroy(); return; }
          if (o.streamBytes) {
            res.writeHead(200, { 'content-type': 'application/json' });
            const chunk = Buffer.alloc(64 * 1024, 'a');
            let sent = 0;
            const more = () => {
              while (sent < o.streamBytes && !res.destroyed) {
                sent += chunk.length;
                if (!res.write(chunk)) { res.once('drain', more); return; }
              }
              res.end();
            };
            res.on('error', () => {});
            more();
            return;
          }
          res.writeHead(o.status ?? 200, { 'content-type': 'application/json', ...(o.headers ?? {}) });
          res.end(typeof o.body === 'string' ? o.body : JSON.stringify(o.body ?? {}));
          return;
        }
      }
      if (route === '/authorize') {
        const to = new URL(u.searchParams.get('redirect_uri'));
        const code = `code-${rnd()}`;
        fp.codes.push(code);
        to.searchParams.set(fp.codeParam, code);
        for (const [k, v] of Object.entries(fp.callbackExtra ?? {})) to.searchParams.set(k, v);
        to.searchParams.set('state', u.searchParams.get('state'));
        res.writeHead(302, { location: to.toString() });
        res.end();
        return;
      }
      if (route === '/token' && req.method === 'POST' && fp.graceReuse &&
          (params.grant_type === 'authorization_code' || params.grant_type === 'refresh_token')) {
        const body = graceToken(res, params.grant_type, params);
        if (!body) return;
        const delay = typeof fp.tokenDelayMs === 'function' ? fp.tokenDelayMs(rec) : fp.tokenDelayMs;
        if (delay > 0) await new Promise((r) => setTimeout(r, delay));
        if (res.destroyed || req.socket.destroyed) return;   // the client died meanwhile
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(JSON.stringify(body));
        return;
      }
      if (route === '/token' && req.method === 'POST') {
        const gt = params.grant_type;
        let grant;
        if (gt === 'authorization_code' || gt === 'client_credentials' || gt === 'password' ||
            gt === 'urn:ietf:params:oauth:grant-type:device_code') grant = rnd(6);
        else if (gt === 'refresh_token') {
          grant = fp.refreshTokens.get(params.refresh_token);
          if (!grant) {
            invalidGrant(res, null, 'unknown', 'unknown refresh token');
            return;
          }
          if (fp.rotate) fp.refreshTokens.delete(params.refresh_token);
        } else {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'unsupported_grant_type' }));
          return;
        }
        const body = { access_token: `at-${rnd(24)}`, token_type: 'Bearer', expires_in: lifetime(grant) };
        // fields besides the token (Salesforce's instance_url): an object, or a function of the request
        Object.assign(body, (typeof fp.tokenExtra === 'function' ? fp.tokenExtra(rec) : fp.tokenExtra) ?? {});
        if (gt !== 'client_credentials' && gt !== 'password' && (fp.rotate || gt !== 'refresh_token')) {
          body.refresh_token = `rt-${rnd(24)}`;
          fp.refreshTokens.set(body.refresh_token, grant);
        }
        fp.issued.push({ grant, access_token: body.access_token, refresh_token: body.refresh_token });
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(JSON.stringify(body));
        return;
      }
      if (route === '/revoke' && req.method === 'POST') {
        fp.refreshTokens.delete(params.token);
        const iss = fp.graceReuse ? fp.tokens.get(params.token) : null;
        if (iss && iss.kind === 'refresh') fp.grants.get(iss.grant).revoked = true;
        res.writeHead(200);
        res.end();
        return;
      }
      res.writeHead(404);
      res.end();
    });
  });
  server.keepAliveTimeout = 30000;
  await new Promise((resolve) => server.listen(opts.port ?? 0, '127.0.0.1', resolve));
  fp.port = server.address().port;
  fp.base = `http://127.0.0.1:${fp.port}`;
  fp.url = (p) => `${fp.base}${p}`;
  fp.close = () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); });
  fp.providerConf = (extra = {}) => ({
    grant: 'authorization_code',
    authorize_url: fp.url('/authorize'),
    token_url: fp.url('/token'),
    revoke_url: fp.url('/revoke'),
    client_id: 'fake-client',
    client_secret_file: 'fake.secret',
    client_auth: 'basic',
    scopes: 'read',
    ...extra,
  });
  return fp;
}

module.exports = { startFakeProvider, recordSecretsIn, recordAuthorization };
