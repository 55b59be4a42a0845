'use strict';
/*
 * The suite-wide leak check. When tests/run-all.sh sets TB_SUITE_DIR, the
 * harnesses write every secret a test used (client secrets and their Basic
 * credentials, codes, states, PKCE verifiers, access, refresh and ID tokens
 * of the fake provider and of oidc-provider) to TB_SUITE_DIR/secrets.txt
 * (0600), and every daemon's log and events table, and the captured output
 * of every daemon run outside the harness, to TB_SUITE_DIR/archive/ before
 * its temporary folder is removed. After the whole suite, scan() looks for
 * every one of those secrets, as a substring, in every one of those files.
 */
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const DIR = process.env.TB_SUITE_DIR;
const MIN = 8;   // shorter strings would match by chance

const seen = new Set();   // this process's secrets, written once each

function recordSecret(v) {
  if (!DIR || typeof v !== 'string' || v.length < MIN || v.includes('\n') || seen.has(v)) return;
  seen.add(v);
  let out = `${v}\n`;
  // As a form or a query would carry it, too.
  const enc = encodeURIComponent(v);
  if (enc !== v) out += `${enc}\n`;
  fs.appendFileSync(path.join(DIR, 'secrets.txt'), out, { mode: 0o600 });
}

function archiveDir() {
  const out = path.join(DIR, 'archive');
  fs.mkdirSync(out, { recursive: true, mode: 0o700 });
  return out;
}

let seq = 0;
function archive(brokerDir, logPath, db, events = null) {
  if (!DIR) return;
  const base = path.join(archiveDir(), `${path.basename(brokerDir)}-${process.pid}-${Date.now()}-${++seq}`);
  try { fs.copyFileSync(logPath, `${base}.log`); } catch { /* no log */ }
  if (events !== null) {
    fs.writeFileSync(`${base}.events`, events);   // read by the caller (PostgreSQL)
  } else if (fs.existsSync(db)) {
    const r = spawnSync('sqlite3', ['-readonly', db, 'SELECT * FROM events;'], { encoding: 'utf8' });
    if (r.status === 0) fs.writeFileSync(`${base}.events`, r.stdout);
  }
}

/** The captured output of a daemon run outside the harness. */
function archiveText(label, text) {
  if (!DIR) return;
  const safe = String(label).replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60);
  fs.writeFileSync(path.join(archiveDir(), `run-${safe}-${process.pid}-${Date.now()}-${++seq}.out`), text);
}

/* What a report may say about a secret: never the secret, nor a part of it. */
function label(s) { return `sha256:${crypto.createHash('sha256').update(s).digest('hex').slice(0, 12)}, ${s.length} chars`; }

/*
 * Every secret, as a substring of every text. One pass over each text:
 * a bitmap of the secrets' first four characters (hashed) filters the
 * positions, a map from those four characters to the secrets verifies.
 */
function matcher(secrets) {
  const BITS = 22;
  const map = new Map();
  const bitmap = new Uint32Array(1 << (BITS - 5));
  const h4 = (a, b, c, d) => (Math.imul(((a & 0xff) << 24) | ((b & 0xff) << 16) | ((c & 0xff) << 8) | (d & 0xff), 0x9e3779b1) >>> (32 - BITS));
  for (const s of secrets) {
    const k = s.slice(0, 4);
    if (!map.has(k)) map.set(k, []);
    map.get(k).push(s);
    const h = h4(s.charCodeAt(0), s.charCodeAt(1), s.charCodeAt(2), s.charCodeAt(3));
    bitmap[h >>> 5] |= 1 << (h & 31);
  }
  return (text) => {
    const hits = new Set();
    const n = text.length;
    if (n < 4) return hits;
    let a = 0, b = text.charCodeAt(0), c = text.charCodeAt(1), d = text.charCodeAt(2);
    for (let i = 0; i + 4 <= n; i++) {
      a = b; b = c; c = d; d = text.charCodeAt(i + 3);
      const h = h4(a, b, c, d);
      if ((bitmap[h >>> 5] & (1 << (h & 31))) === 0) continue;
      const list = map.get(text.slice(i, i + 4));
      if (!list) continue;
      for (const s of list) if (text.startsWith(s, i)) hits.add(s);
    }
    return hits;
  };
}

function scan(dir) {
  let all = [];
  try { all = fs.readFileSync(path.join(dir, 'secrets.txt'), 'utf8').split('\n'); } catch { /* none */ }
  all = [...new Set(all.filter((s) => s.length >= MIN))];
  let files = [];
  try { files = fs.readdirSync(path.join(dir, 'archive')).map((f) => path.join(dir, 'archive', f)); } catch { /* none */ }
  const find = matcher(all);
  const found = [];
  for (const f of files) {
    for (const s of find(fs.readFileSync(f, 'utf8'))) found.push({ file: path.basename(f), secret: label(s) });
  }
  return { secrets: all.length, files: files.length, found };
}

module.exports = { recordSecret, archive, archiveText, scan, matcher, MIN };

if (require.main === module) {
  const t0 = Date.now();
  const r = scan(process.argv[2]);
  for (const x of r.found.slice(0, 20)) console.log(`leak: a secret (${x.secret}) in ${x.file}`);
  const ok = r.found.length === 0 && r.secrets > 0 && r.files > 0;
  console.log(`leak scan: ${r.secrets} secrets used by the suite, ${r.files} daemon logs, events tables and outputs, ${r.found.length} leaks (${Date.now() - t0} ms)`);
  console.log(`leak scan: ${ok ? 1 : 0} passed, ${ok ? 0 : 1} failed`);
  process.exit(ok ? 0 : 1);
}
