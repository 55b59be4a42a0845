'use strict';
/* The leak scan itself (tests/lib/suite.js): it must find a secret wherever
 * it sits in a text, and stay fast over a whole suite's worth of files. */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { matcher, scan } = require('./suite.js');

const rnd = (n = 24) => crypto.randomBytes(n).toString('base64url');

test('a secret is found at the end of a sentence, inside a path, a URL, JSON, and next to token characters', () => {
  const at = `at-${rnd()}`;
  const code = `code-${rnd(16)}`;
  const basic = Buffer.from(`tokenbroker:${rnd()}`).toString('base64');   // may end in '='
  const odd = `s3cr3t with spaces ${rnd(6)}`;
  const find = matcher([at, code, basic, odd]);
  const cases = [
    [`Refreshed with ${at}.`, at],
    [`/var/lib/tokenbroker/${at}/x.db`, at],
    [`GET /oauth/callback?code=${code}&state=abc`, code],
    [`{"access_token":"${at}"}`, at],
    [`prefix_${at}_suffix`, at],
    [`authorization: Basic ${basic}`, basic],
    [`said ${odd}!`, odd],
    [at, at],
  ];
  for (const [text, secret] of cases) assert.deepEqual([...find(text)], [secret], `not found in: ${text.replace(secret, '<secret>')}`);
  assert.equal(find(`Refreshed with ${at.slice(0, -1)}.`).size, 0, 'a shortened secret matched');
  assert.equal(find('nothing to see here').size, 0);
});

test('scan() reports leaks without printing the secret and fails with no secrets or no files', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-suite-self-'));
  try {
    const secret = `rt-${rnd()}`;
    fs.writeFileSync(path.join(dir, 'secrets.txt'), `${secret}\nshort\n`);
    fs.mkdirSync(path.join(dir, 'archive'));
    fs.writeFileSync(path.join(dir, 'archive', 'a.log'), `2026-01-01 info: Refreshed with ${secret}.\n`);
    fs.writeFileSync(path.join(dir, 'archive', 'b.log'), 'clean\n');
    const r = scan(dir);
    assert.equal(r.secrets, 1);
    assert.equal(r.files, 2);
    assert.equal(r.found.length, 1);
    assert.equal(r.found[0].file, 'a.log');
    assert.ok(!r.found[0].secret.includes(secret.slice(3, 10)), 'the report shows part of the secret');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('fast enough: 5,000 secrets over 300 files of 100 KiB', () => {
  const secrets = Array.from({ length: 5000 }, (_, i) => `${['at-', 'rt-', 'code-', ''][i % 4]}${rnd()}`);
  const find = matcher(secrets);
  const line = '2026-12-02T16:41:05Z tokenbrokerd[1234]: info: connection alice refreshed (expires in 3600 s, sha256 0123abcd)\n';
  const text = line.repeat(Math.ceil(100 * 1024 / line.length));
  const planted = secrets[4321];
  const t0 = process.hrtime.bigint();
  let hits = 0;
  for (let f = 0; f < 300; f++) hits += find(f === 150 ? `${text}x ${planted}.\n` : text).size;
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(`leak scan: 5000 secrets x 300 files x ${(text.length / 1024).toFixed(0)} KiB in ${ms.toFixed(0)} ms`);
  assert.equal(hits, 1);
  assert.ok(ms < 20000, `${ms} ms`);
});
