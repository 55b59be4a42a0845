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
 */
const crypto = require('node:crypto');
const http = require('node:http');

function rnd(n = 16) { return crypto.randomBytes(n).toString('base64url'); }

async function startFakeProvider(opts = {}) {
  const fp = {
    requests: [],
    expiresIn: opts.expiresIn ?? 3600,
    rotate: opts.rotate ?? true,
    respond: opts.respond ?? null,
    refreshTokens: new Map(),   // current refresh token -> grant id
    issued: [],                 // {grant, access_token, refresh_token}
  };

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
      fp.requests.push(rec);

      if (fp.respond) {
        const o = await fp.respond(rec);
        if (o) {
          if (o.delayMs) await new Promise((r) => setTimeout(r, o.delayMs));
          if (o.destroy) { req.socket.destroy(); return; }
          res.writeHead(o.status ?? 200, { 'content-type': 'application/json', ...(o.headers ?? {}) });
          res.end(typeof o.body === 'string' ? o.body : JSON.stringify(o.body ?? {}));
          return;
        }
      }
      if (u.pathname === '/authorize') {
        const to = new URL(u.searchParams.get('redirect_uri'));
        to.searchParams.set('code', `code-${rnd()}`);
        to.searchParams.set('state', u.searchParams.get('state'));
        res.writeHead(302, { location: to.toString() });
        res.end();
        return;
      }
      if (u.pathname === '/token' && req.method === 'POST') {
        const gt = params.grant_type;
        let grant;
        if (gt === 'authorization_code' || gt === 'client_credentials') grant = rnd(6);
        else if (gt === 'refresh_token') {
          grant = fp.refreshTokens.get(params.refresh_token);
          if (!grant) {
            res.writeHead(400, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ error: 'invalid_grant', error_description: 'unknown refresh token' }));
            return;
          }
          if (fp.rotate) fp.refreshTokens.delete(params.refresh_token);
        } else {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'unsupported_grant_type' }));
          return;
        }
        const body = { access_token: `at-${rnd(24)}`, token_type: 'Bearer', expires_in: fp.expiresIn };
        if (gt !== 'client_credentials' && (fp.rotate || gt === 'authorization_code')) {
          body.refresh_token = `rt-${rnd(24)}`;
          fp.refreshTokens.set(body.refresh_token, grant);
        }
        fp.issued.push({ grant, access_token: body.access_token, refresh_token: body.refresh_token });
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(JSON.stringify(body));
        return;
      }
      if (u.pathname === '/revoke' && req.method === 'POST') {
        fp.refreshTokens.delete(params.token);
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

module.exports = { startFakeProvider };
