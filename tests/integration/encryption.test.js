'use strict';
/*
 * Encryption at rest (AES-256-GCM, daemon/crypt.c), against the real daemon
 * and the fake provider:
 *  - no access or refresh token the provider issued appears anywhere in the
 *    SQLite files (tokenbroker.db, -wal, -shm) after authorizations and a
 *    refresh; the key file is created on first start, 0600, 32 bytes;
 *  - with another key the daemon refuses to start, says why, exits non-zero
 *    and leaves the file alone; with the right key it serves the same tokens
 *    without asking the provider;
 *  - a key file readable by others, or of the wrong size, is refused;
 *  - a file from before encryption (schema 1, plain tokens) is sealed on
 *    the first start and its tokens still served;
 *  - a systemd credential ($CREDENTIALS_DIRECTORY/tokenbroker.key) wins over
 *    the key file, and the key_file setting is honoured.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const { Broker, BUILD, ROOT, httpGet, iniProvider, waitFor, noteRun } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');

const CLIENT_SECRET = 'fake-client-secret-for-encryption';

async function setup(t, opts = {}) {
  const fp = await startFakeProvider();
  const b = await Broker.prepare();
  b.opts = {
    providers: { fake: iniProvider(fp.providerConf()) },
    secrets: { 'fake.secret': CLIENT_SECRET },
    ...opts,
  };
  b.writeConfig();
  t.after(async () => {
    const st = await b.stop();
    await fp.close();
    assert.deepEqual(st && { code: st.code, signal: st.signal }, { code: 0, signal: null });
    assert.doesNotMatch(b.log() || '', /Sanitizer|runtime error/);
  });
  return { b, fp };
}

/** Creates NAME and walks the auto-approving fake provider to the callback. */
async function authorize(b, name) {
  const r = await b.api('POST', '/v1/connections', { name, provider: 'fake' });
  assert.ok(r.status === 200 || r.status === 201, r.text);
  const redirect = await httpGet(r.json.authorize_url);
  assert.equal(redirect.status, 302);
  const page = await httpGet(redirect.headers.location);
  assert.equal(page.status, 200, page.text);
  const show = await b.api('GET', `/v1/connections/${name}`);
  assert.equal(show.json.state, 'active');
}

async function token(b, name) {
  const r = await b.api('GET', `/v1/connections/${name}/token`);
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

/** Every byte of the database: the file, its WAL and its shared memory. */
function dbBytes(b) {
  return Buffer.concat(['', '-wal', '-shm', '-journal']
    .map((s) => `${b.db}${s}`)
    .filter((f) => fs.existsSync(f))
    .map((f) => fs.readFileSync(f)));
}

/** Runs the daemon on b's config, expecting it to fail; resolves {code, signal, log}. */
function startFailing(b, env = {}) {
  return new Promise((resolve, reject) => {
    const e = { ...process.env, TOKENBROKER_LOG_LEVEL: 'info', ...env };
    delete e.NOTIFY_SOCKET;
    delete e.LISTEN_FDS;
    delete e.LISTEN_PID;
    const p = spawn(path.join(BUILD, 'tokenbrokerd'), ['-c', b.confPath], { stdio: ['ignore', 'pipe', 'pipe'], env: e });
    let log = '';
    p.stdout.on('data', (d) => { log += d; });
    p.stderr.on('data', (d) => { log += d; });
    const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`tokenbrokerd did not exit:\n${log}`)); }, 20000);
    p.on('close', (code, signal) => { clearTimeout(timer); noteRun('failing-start', log); resolve({ code, signal, log }); });
  });
}

function keyPath(b) { return path.join(b.dir, 'state', 'tokenbroker.key'); }

function writeKey(p, bytes, mode = 0o600) {
  fs.writeFileSync(p, bytes, { mode });
  fs.chmodSync(p, mode);
}

test('no issued token in the SQLite files; another key refuses to start; the right key serves the same tokens', { timeout: 120000 }, async (t) => {
  const { b, fp } = await setup(t);
  await b.launch();

  // The key file, made on first start.
  const kst = fs.statSync(keyPath(b));
  assert.equal(kst.mode & 0o7777, 0o600);
  assert.equal(kst.size, 32);
  assert.match(b.log(), /Created encryption key file/);

  const names = ['enc-a', 'enc-b', 'enc-c'];
  for (const n of names) await authorize(b, n);
  // A rotation too: the old and the new refresh token are both of interest.
  const r = await b.api('POST', '/v1/connections/enc-b/refresh');
  assert.equal(r.status, 200, r.text);
  // And one pending authorization, whose PKCE verifier is sealed as well.
  const pend = await b.api('POST', '/v1/connections', { name: 'enc-pending', provider: 'fake' });
  assert.ok(pend.status === 200 || pend.status === 201, pend.text);

  const before = {};
  for (const n of names) before[n] = await token(b, n);
  assert.ok(fp.issued.length >= 4);
  const secrets = fp.issued.flatMap((i) => [i.access_token, i.refresh_token]).filter(Boolean);
  for (const n of names) assert.ok(secrets.includes(before[n]));

  // Stopped cleanly the WAL is folded into the file; look at both anyway.
  await b.kill('SIGTERM');
  assert.equal(b.exits.at(-1).code, 0);
  const bytes = dbBytes(b);
  assert.ok(bytes.includes(Buffer.from('enc-pending')), 'the scan does not see the database at all');
  for (const s of secrets) {
    assert.ok(!bytes.includes(Buffer.from(s)), `token ${s.slice(0, 6)}… is in the SQLite files in clear`);
  }
  // Sealed: version byte 01, 12-byte nonce, ciphertext, 16-byte tag.
  const rows = b.sql("SELECT name, hex(access_token) AS at, hex(refresh_token) AS rt, hex(code_verifier) AS cv FROM connections ORDER BY id");
  for (const row of rows.filter((x) => names.includes(x.name))) {
    assert.match(row.at, /^01/);
    assert.match(row.rt, /^01/);
    assert.equal(row.at.length / 2, 1 + 12 + before[row.name].length + 16);
  }
  const p = rows.find((x) => x.name === 'enc-pending');
  assert.match(p.cv, /^01[0-9A-F]{130,}$/);
  assert.equal(b.sql('SELECT count(*) AS n FROM key_check')[0].n, 1);

  // Another key: refused, clearly, before touching a row.
  const right = fs.readFileSync(keyPath(b));
  const dump = b.dumpStore();
  writeKey(keyPath(b), crypto.randomBytes(32));
  const bad = await startFailing(b);
  assert.notEqual(bad.code, 0, bad.log);
  assert.equal(bad.signal, null);
  assert.ok(bad.log.includes(`${b.db} was sealed with another key (key file ${keyPath(b)}): refusing to start`), bad.log);
  assert.doesNotMatch(bad.log, /Sanitizer|runtime error/);
  for (const s of secrets) assert.ok(!bad.log.includes(s));
  assert.equal(b.dumpStore(), dump);

  // The right key: the same tokens, from the store, not from the provider.
  writeKey(keyPath(b), right);
  const nreq = fp.requests.length;
  await b.launch();
  for (const n of names) assert.equal(await token(b, n), before[n]);
  assert.equal(fp.requests.length, nreq);
  const show = await b.api('GET', '/v1/connections/enc-pending');
  assert.equal(show.json.state, 'pending');
});

test('a key file readable by others, of the wrong size, or missing under a sealed file is refused', { timeout: 120000 }, async (t) => {
  const { b } = await setup(t);
  await b.launch();
  await authorize(b, 'k');
  await b.kill('SIGTERM');
  const right = fs.readFileSync(keyPath(b));

  fs.chmodSync(keyPath(b), 0o644);
  let r = await startFailing(b);
  assert.notEqual(r.code, 0);
  assert.ok(r.log.includes(`Encryption key (key file ${keyPath(b)}) is accessible by group or others: refusing to use it`), r.log);

  writeKey(keyPath(b), Buffer.concat([right, Buffer.from('\n')]));
  r = await startFailing(b);
  assert.notEqual(r.code, 0);
  assert.ok(r.log.includes(`Encryption key (key file ${keyPath(b)}) is not 32 bytes long: refusing to use it`), r.log);

  // Gone: a fresh key cannot open the file, and is not left behind.
  fs.unlinkSync(keyPath(b));
  r = await startFailing(b);
  assert.notEqual(r.code, 0);
  assert.ok(r.log.includes(`${b.db} was sealed with another key (key file ${keyPath(b)}, which was missing): refusing to start`), r.log);
  assert.equal(fs.existsSync(keyPath(b)), false);

  writeKey(keyPath(b), right);
  await b.launch();
  assert.equal((await b.api('GET', '/v1/connections/k')).json.state, 'active');
});

test('a file from before encryption is sealed on the first start and its tokens still served', { timeout: 120000 }, async (t) => {
  const { b, fp } = await setup(t);
  const at = `at-legacy-${crypto.randomBytes(12).toString('hex')}`;
  const rt = `rt-legacy-${crypto.randomBytes(12).toString('hex')}`;
  const now = Date.now() * 1000;
  fs.mkdirSync(path.join(b.dir, 'state'), { mode: 0o700 });
  const schema1 = fs.readFileSync(path.join(ROOT, 'sql', '0001-initial.sql'), 'utf8');
  const r = spawnSync('sqlite3', [b.db], {
    encoding: 'utf8',
    input: `PRAGMA journal_mode = WAL;\n${schema1}\n` +
      'CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);\n' +
      'INSERT INTO connections (name, provider, state, token_type, access_token, refresh_token, expires_at, obtained_at, created_at, updated_at) ' +
      `VALUES ('legacy', 'fake', 'active', 'Bearer', CAST('${at}' AS BLOB), CAST('${rt}' AS BLOB), ${now + 3600e6}, ${now}, ${now}, ${now});\n`,
  });
  assert.equal(r.status, 0, r.stderr);
  fs.chmodSync(b.db, 0o600);
  assert.ok(dbBytes(b).includes(Buffer.from(at)));
  fp.refreshTokens.set(rt, 'legacy-grant');   // the provider knows the old grant

  await b.launch();
  assert.match(b.log(), /Sealed the secrets of 1 connection in/);
  assert.equal(await token(b, 'legacy'), at);
  assert.equal(fp.requests.length, 0);
  await b.kill('SIGTERM');

  const bytes = dbBytes(b);
  assert.ok(!bytes.includes(Buffer.from(at)), 'the old access token is still in the files');
  assert.ok(!bytes.includes(Buffer.from(rt)), 'the old refresh token is still in the files');
  // migrated to the newest schema (sql/NNNN-*.sql)
  const newest = Math.max(...fs.readdirSync(path.join(ROOT, 'sql')).filter((f) => /^\d+-.*\.sql$/.test(f)).map((f) => parseInt(f, 10)));
  assert.equal(b.sql('SELECT version FROM schema_version')[0].version, newest);

  // A second start seals nothing again; the refresh token still works.
  await b.launch();
  assert.equal(b.log().split('Sealed the secrets').length, 2, 'sealed twice');
  const fresh = await b.api('GET', '/v1/connections/legacy/token?min_ttl=999999');
  assert.equal(fresh.status, 200, fresh.text);
  assert.notEqual(fresh.json.access_token, at);
  assert.ok(fp.requests.some((q) => q.path === '/token' && q.params.refresh_token === rt));
});

test('a systemd credential wins over the key file; key_file is honoured', { timeout: 120000 }, async (t) => {
  const { b } = await setup(t, { broker: { key_file: 'keys/broker.key' } });
  const creds = path.join(b.dir, 'creds');
  fs.mkdirSync(creds, { mode: 0o700 });
  fs.mkdirSync(path.join(b.dir, 'keys'), { mode: 0o700 });
  const fileKey = path.join(b.dir, 'keys', 'broker.key');

  // key_file, relative to the config file: created there, not in state_dir.
  await b.launch();
  assert.equal(fs.statSync(fileKey).size, 32);
  assert.equal(fs.existsSync(keyPath(b)), false);
  await authorize(b, 'c');
  const tok = await token(b, 'c');
  await b.kill('SIGTERM');

  // The same key as a credential, and garbage in the key file: the credential is used.
  const key = fs.readFileSync(fileKey);
  writeKey(path.join(creds, 'tokenbroker.key'), key, 0o400);
  writeKey(fileKey, crypto.randomBytes(32));
  const saved = process.env.CREDENTIALS_DIRECTORY;
  process.env.CREDENTIALS_DIRECTORY = creds;
  try {
    await b.launch();
  } finally {
    if (saved === undefined) delete process.env.CREDENTIALS_DIRECTORY;
    else process.env.CREDENTIALS_DIRECTORY = saved;
  }
  assert.equal(await token(b, 'c'), tok);
  await b.kill('SIGTERM');

  // Without the variable, the (now wrong) key file: refused, naming it.
  const r = await startFailing(b);
  assert.notEqual(r.code, 0);
  assert.ok(r.log.includes(`was sealed with another key (key file ${fileKey}): refusing to start`), r.log);

  // A wrong credential is refused the same way, naming the credential.
  writeKey(fileKey, key);
  fs.chmodSync(path.join(creds, 'tokenbroker.key'), 0o600);
  writeKey(path.join(creds, 'tokenbroker.key'), crypto.randomBytes(32));
  const r2 = await startFailing(b, { CREDENTIALS_DIRECTORY: creds });
  assert.notEqual(r2.code, 0);
  assert.ok(r2.log.includes(`was sealed with another key (credential ${creds}/tokenbroker.key): refusing to start`), r2.log);

  await b.launch();
  await waitFor(async () => (await b.api('GET', '/v1/status')).status === 200, { what: 'status' });
});
