'use strict';
/*
 * The suite-wide leak check. When tests/run-all.sh sets TB_SUITE_DIR, the
 * harnesses write every secret a test used (client secrets, codes, tokens
 * the fake provider issued) to TB_SUITE_DIR/secrets.txt (0600), and every
 * daemon's log and events table to TB_SUITE_DIR/archive/ before its
 * temporary folder is removed. After the whole suite, scan() looks for any
 * of those secrets in any of those files.
 */
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const DIR = process.env.TB_SUITE_DIR;
const MIN = 8;   // shorter strings would match by chance

function recordSecret(v) {
  if (!DIR || typeof v !== 'string' || v.length < MIN || v.includes('\n')) return;
  fs.appendFileSync(path.join(DIR, 'secrets.txt'), `${v}\n`, { mode: 0o600 });
}

function archive(brokerDir, logPath, db) {
  if (!DIR) return;
  const out = path.join(DIR, 'archive');
  fs.mkdirSync(out, { recursive: true, mode: 0o700 });
  const base = path.join(out, `${path.basename(brokerDir)}-${process.pid}-${Date.now()}`);
  try { fs.copyFileSync(logPath, `${base}.log`); } catch { /* no log */ }
  if (fs.existsSync(db)) {
    const r = spawnSync('sqlite3', ['-readonly', db, 'SELECT * FROM events;'], { encoding: 'utf8' });
    if (r.status === 0) fs.writeFileSync(`${base}.events`, r.stdout);
  }
}

function scan(dir) {
  const all = [...new Set(fs.readFileSync(path.join(dir, 'secrets.txt'), 'utf8').split('\n').filter((s) => s.length >= MIN))];
  const word = /^[A-Za-z0-9._~+\/-]+$/;
  const set = new Set(all.filter((s) => word.test(s)));
  const odd = all.filter((s) => !word.test(s));   // looked for as substrings
  const files = fs.readdirSync(path.join(dir, 'archive')).map((f) => path.join(dir, 'archive', f));
  const found = [];
  for (const f of files) {
    const text = fs.readFileSync(f, 'utf8');
    // Every maximal run of token characters is looked up: a token cannot
    // hide inside a longer run without other characters around it.
    for (const w of text.split(/[^A-Za-z0-9._~+\/-]+/)) {
      if (w.length >= MIN && set.has(w)) found.push({ file: path.basename(f), secret: `${w.slice(0, 4)}…(${w.length})` });
    }
    for (const s of odd) if (text.includes(s)) found.push({ file: path.basename(f), secret: `${s.slice(0, 4)}…(${s.length})` });
  }
  return { secrets: all.length, files: files.length, found };
}

module.exports = { recordSecret, archive, scan };

if (require.main === module) {
  const r = scan(process.argv[2]);
  for (const x of r.found.slice(0, 20)) console.log(`leak: a secret (${x.secret}) in ${x.file}`);
  const ok = r.found.length === 0 && r.secrets > 0 && r.files > 0;
  console.log(`leak scan: ${r.secrets} secrets used by the suite, ${r.files} daemon logs and events tables, ${r.found.length} leaks`);
  console.log(`leak scan: ${ok ? 1 : 0} passed, ${ok ? 0 : 1} failed`);
  process.exit(ok ? 0 : 1);
}
