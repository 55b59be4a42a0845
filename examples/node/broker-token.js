#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// Fetch a token from tokenbrokerd over its Unix socket with http.request
// and socketPath, then call an API with it; or let the broker call the API
// (its proxy route), so this program never holds the token. No dependencies.
//
//   node broker-token.js NAME [API_URL]
//   node broker-token.js NAME /PATH     # GET the provider's api_url + /PATH through the broker
//
// The socket is $TOKENBROKER_SOCKET, else /run/tokenbroker/tokenbroker.sock.
// The token is never printed.
'use strict';
const http = require('node:http');
const https = require('node:https');

const SOCKET = process.env.TOKENBROKER_SOCKET || '/run/tokenbroker/tokenbroker.sock';

function brokerToken(name, minTtl = 60) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      socketPath: SOCKET,
      path: `/v1/connections/${encodeURIComponent(name)}/token?min_ttl=${minTtl}`,
      timeout: 60000,
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        let j = {};
        try { j = JSON.parse(body); } catch { /* not JSON */ }
        if (res.statusCode !== 200) reject(new Error(`broker: HTTP ${res.statusCode} ${j.error_description || j.error || ''}`));
        else resolve(j);
      });
    });
    req.on('timeout', () => req.destroy(new Error('broker: timed out')));
    req.on('error', reject);
    req.end();
  });
}

function viaBroker(name, p) {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: SOCKET, path: `/v1/connections/${encodeURIComponent(name)}/proxy${p}`, timeout: 60000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('broker: timed out')));
    req.on('error', reject);
    req.end();
  });
}

function get(url, headers) {
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, { headers, timeout: 30000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('API: timed out')));
    req.on('error', reject);
  });
}

async function main() {
  const [name, apiUrl] = process.argv.slice(2);
  if (!name || process.argv.length > 4) throw new Error('usage: broker-token.js NAME [API_URL | /PATH]');
  if (apiUrl && apiUrl.startsWith('/')) {
    const r = await viaBroker(name, apiUrl);
    console.log(`GET ${apiUrl} through the broker -> HTTP ${r.status}`);
    console.log(r.body);
    return;
  }
  const tok = await brokerToken(name);
  console.log(`token of ${name}: expires in ${tok.expires_in ?? '?'} s`);
  if (apiUrl) {
    // "headers" (and "query") carry the token as the provider's usage rule says
    const url = new URL(apiUrl);
    for (const [k, v] of Object.entries(tok.query || {})) url.searchParams.set(k, v);
    const r = await get(url, tok.headers || {});
    console.log(`GET ${apiUrl} -> HTTP ${r.status}`);
    console.log(r.body);
  }
}

main().catch((e) => { console.error(e.message); process.exit(1); });
