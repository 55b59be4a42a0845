'use strict';
/*
 * The broker under a real systemd: a Debian 12 root made with debootstrap
 * (cached in /var/cache/tokenbroker-test, tests/boot/make-root.sh) is
 * copied, `make install DESTDIR=root PREFIX=/usr` puts the broker in it,
 * and it boots with systemd-nspawn --boot --register=no --keep-unit.
 * Commands run inside through nsenter on the container's PID 1
 * (tests/boot/nspawn.js). The container shares the host's loopback: the
 * fake provider runs here, the callback listener in there.
 *
 *  - systemctl start tokenbrokerd.socket tokenbrokerd-callback.socket:
 *    the service stays inactive until the first `tokenctl status`, and the
 *    daemon is passed both sockets by name (api, callback);
 *  - a connection through the code flow, the browser's part played from
 *    the host: authorize URL -> fake provider -> 302 -> callback inside;
 *  - the 0666 socket: a user the connection allows gets its token, another
 *    local user is refused by the daemon (SO_PEERCRED), not by the mode;
 *  - systemctl reload: same MainPID, a provider added before it shows;
 *  - journalctl CONNECTION=NAME: PROVIDER=, TOKENBROKER_EVENT=, MESSAGE_ID=;
 *  - a crash (SIGKILL) is restarted (Restart=on-failure), the sockets stay;
 *  - systemctl stop: inactive, exit status 0; the socket file stays and
 *    the next client activates it again, with the connection still there;
 *  - LoadCredential=tokenbroker.key: absent, the unit starts (key file in
 *    the state dir); in /etc/credstore, the daemon gets it as a credential;
 *  - systemd-analyze security tokenbrokerd inside (printed, <= 2.0);
 *  - make uninstall removes what make install put there, not /etc or the state.
 *
 * Needs root. A machine that cannot boot a container FAILS this test with
 * the reason; it does not skip. It runs once, against build/ (the release
 * build `make install` installs): the ASan pass of tests/run-all.sh skips
 * it, saying so. Cold cache (debootstrap, ~220 MB): 45-90 s here; warm:
 * 5-12 s (copying the root, booting in ~0.5 s, the checks).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { BUILD, ROOT, freePort, httpGet, iniProvider, waitFor, noteRun } = require('../lib/broker.js');
const { startFakeProvider } = require('../lib/fake-provider.js');
const { makeRoot, Container, run } = require('../boot/nspawn.js');

const asanPass = path.basename(BUILD) !== 'build';
const note = (s) => console.log(`# ${s}`);

test('socket activation, reload, stop and the journal under a booted systemd (nspawn)', {
  timeout: 20 * 60000,
  skip: asanPass && `runs once, against build/ (make install); this pass uses ${BUILD}`,
}, async (t) => {
  assert.equal(process.getuid(), 0, 'the boot test needs root: debootstrap, systemd-nspawn and nsenter');

  const t0 = Date.now();
  const rootCache = await makeRoot({ log: (l) => note(l) });
  const rootMs = Date.now() - t0;
  note(`root cache ${rootCache} ready in ${(rootMs / 1000).toFixed(1)} s`);

  const fp = await startFakeProvider();
  t.after(() => fp.close());
  const port = await freePort();   // the callback listener, inside; free here = free there (one loopback)
  const publicUrl = `http://127.0.0.1:${port}`;

  let c;
  const prepare = async (dir) => {
    const r = await run('make', ['-C', ROOT, 'install', `DESTDIR=${dir}`, 'PREFIX=/usr'], { timeoutMs: 300000 });
    assert.equal(r.code, 0, `make install failed:\n${r.stdout}${r.stderr}`);
    for (const f of ['usr/sbin/tokenbrokerd', 'usr/bin/tokenctl', 'usr/lib/systemd/system/tokenbrokerd.service',
      'usr/lib/systemd/system/tokenbrokerd.socket', 'usr/lib/systemd/system/tokenbrokerd-callback.socket',
      'usr/lib/sysusers.d/tokenbroker.conf', 'usr/lib/tmpfiles.d/tokenbroker.conf', 'etc/tokenbroker/tokenbroker.conf']) {
      assert.ok(fs.existsSync(path.join(dir, f)), `make install did not install /${f}`);
    }
    const unit = fs.readFileSync(path.join(dir, 'usr/lib/systemd/system/tokenbrokerd.service'), 'utf8');
    assert.match(unit, /^ExecStart=\/usr\/sbin\/tokenbrokerd /m);
  };
  c = await Container.boot(rootCache, { prepare, log: (l) => note(l) });
  t.after(async () => {
    // The daemon's log is the container's journal: to the leak scan and the sanitizer check.
    const j = await c.exec(['journalctl', '--no-pager', '-o', 'cat', '-u', 'tokenbrokerd.service'], { timeoutMs: 30000 }).catch(() => null);
    if (j) noteRun('nspawn-journal', j.stdout);
    const ex = await c.destroy({ keep: !!process.env.TB_KEEP });
    note(`container powered off (${JSON.stringify(ex)}) in ${c.timings.poweroffMs} ms`);
  });
  note(`copy ${c.timings.copyMs} ms, boot to '${c.systemState}' ${c.timings.bootMs} ms`);
  const root = c.dir;
  const W = (p, text, mode = 0o644) => { fs.mkdirSync(path.dirname(path.join(root, p)), { recursive: true }); fs.writeFileSync(path.join(root, p), text, { mode }); };
  const inside = (...cmd) => c.sh(cmd);
  const ctl = (...args) => c.exec(['tokenctl', ...args], { timeoutMs: 30000 });
  const show = async (prop) => (await inside('systemctl', 'show', '-p', prop, '--value', 'tokenbrokerd.service')).trim();
  const isActive = async (u) => (await c.exec(['systemctl', 'is-active', u])).stdout.trim();

  // ---- what an operator does after make install (README) ----
  await inside('systemd-sysusers');
  await inside('systemd-tmpfiles', '--create');
  assert.match(await inside('getent', 'passwd', 'tokenbroker'), /^tokenbroker:/);
  const conf = path.join(root, 'etc/tokenbroker/tokenbroker.conf');
  const confText = fs.readFileSync(conf, 'utf8')
    .replace(/^callback_listen = .*$/m, `callback_listen = 127.0.0.1:${port}`)
    .replace(/^; public_url = .*$/m, `public_url = ${publicUrl}`);
  assert.match(confText, new RegExp(`^callback_listen = 127.0.0.1:${port}$`, 'm'), 'conf/tokenbroker.conf changed shape');
  assert.match(confText, new RegExp(`^public_url = ${publicUrl}$`, 'm'), 'conf/tokenbroker.conf changed shape');
  fs.writeFileSync(conf, confText);
  W('etc/systemd/system/tokenbrokerd-callback.socket.d/port.conf', `[Socket]\nListenStream=\nListenStream=127.0.0.1:${port}\n`);
  W('etc/tokenbroker/secrets/fake.secret', 'boot-test-secret\n', 0o640);
  await inside('chgrp', 'tokenbroker', '/etc/tokenbroker/secrets/fake.secret');
  W('etc/tokenbroker/providers.d/fake.conf', iniProvider(fp.providerConf({ client_secret_file: '/etc/tokenbroker/secrets/fake.secret' })));
  await inside('useradd', '--system', '--user-group', '--no-create-home', 'svc');
  await inside('systemctl', 'daemon-reload');
  await inside('systemctl', 'start', 'tokenbrokerd.socket', 'tokenbrokerd-callback.socket');
  assert.equal(await isActive('tokenbrokerd.socket'), 'active');
  assert.equal(await isActive('tokenbrokerd-callback.socket'), 'active');
  assert.equal(await isActive('tokenbrokerd.service'), 'inactive', 'the service started before any client');
  // /run is the container's own tmpfs: look from inside.
  const sockStat = async () => (await inside('stat', '-c', '%a %i', '/run/tokenbroker/tokenbroker.sock')).trim().split(' ');
  const [mode, inode] = await sockStat();
  assert.equal(mode, '666');

  // ---- the first client activates it ----
  const s1 = await ctl('status');
  assert.equal(s1.code, 0, s1.stderr);
  assert.match(s1.stdout, /^tokenbrokerd /);
  assert.equal(await isActive('tokenbrokerd.service'), 'active');
  const pid = Number(await show('MainPID'));
  assert.ok(pid > 0);
  const env = (await inside('cat', `/proc/${pid}/environ`)).split('\0');
  assert.ok(env.includes('LISTEN_FDS=2'), env.join(' '));
  const names = env.find((e) => e.startsWith('LISTEN_FDNAMES='));
  assert.deepEqual(names.slice('LISTEN_FDNAMES='.length).split(':').sort(), ['api', 'callback']);
  assert.ok(env.includes('WATCHDOG_USEC=30000000'), 'WatchdogSec=30s not passed');
  assert.equal(await show('User'), 'tokenbroker');
  assert.equal((await sockStat())[1], inode, 'the daemon bound its own API socket over systemd\'s');
  // The callback listener is systemd's socket: healthz answers through it.
  assert.equal((await httpGet(`${publicUrl}/healthz`)).status, 200);

  // ---- a connection through the code flow ----
  const a = await ctl('--json', 'authorize', 'boot1', '--provider', 'fake', '--allow-user', 'svc', '--no-wait');
  assert.equal(a.code, 0, a.stderr);
  const authUrl = JSON.parse(a.stdout).authorize_url;
  assert.ok(authUrl.startsWith(fp.url('/authorize')), authUrl);
  const redirect = await httpGet(authUrl);   // "the browser", on the host
  assert.equal(redirect.status, 302);
  assert.ok(redirect.headers.location.startsWith(`${publicUrl}/oauth/callback/fake?`), redirect.headers.location);
  const cb = await httpGet(redirect.headers.location);
  assert.equal(cb.status, 200, cb.text);
  const tok = await ctl('token', 'boot1');
  assert.equal(tok.code, 0, tok.stderr);
  assert.equal(tok.stdout.trim(), fp.issued[fp.issued.length - 1].access_token);

  // The 0666 socket: access is the daemon's decision, per peer.
  const asUser = (u, g, ...args) => c.exec(['setpriv', `--reuid=${u}`, `--regid=${g}`, '--clear-groups', 'tokenctl', ...args], { timeoutMs: 30000 });
  const svc = await asUser('svc', 'svc', 'token', 'boot1');
  assert.equal(svc.code, 0, `an allowed user was refused: ${svc.stderr}`);
  assert.equal(svc.stdout.trim(), tok.stdout.trim());
  const nobody = await asUser('nobody', 'nogroup', 'token', 'boot1');
  assert.equal(nobody.code, 7, `another user: exit ${nobody.code} ${nobody.stderr}`);   // EXIT_DENIED
  const nobodyList = await asUser('nobody', 'nogroup', 'list');
  assert.equal(nobodyList.code, 7, `admin route for a non-admin: exit ${nobodyList.code}`);

  // ---- reload: same process, a provider added before it shows ----
  W('etc/tokenbroker/providers.d/second.conf', iniProvider(fp.providerConf({ client_id: 'second', client_secret_file: '/etc/tokenbroker/secrets/fake.secret' })));
  let prov = await ctl('providers');
  assert.doesNotMatch(prov.stdout, /^second /m);
  await inside('systemctl', 'reload', 'tokenbrokerd');
  assert.equal(await isActive('tokenbrokerd.service'), 'active');
  assert.equal(Number(await show('MainPID')), pid, 'reload replaced the process');
  prov = await ctl('providers');
  assert.equal(prov.code, 0, prov.stderr);
  assert.match(prov.stdout, /^second /m);
  assert.match(prov.stdout, /^fake /m);
  assert.equal((await ctl('token', 'boot1')).code, 0);

  // ---- the journal: structured fields ----
  const entries = await waitFor(async () => {
    const j = await c.exec(['journalctl', '--no-pager', '-o', 'json', 'CONNECTION=boot1']);
    const es = j.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    return es.some((e) => e.TOKENBROKER_EVENT === 'authorized') && es;
  }, { timeoutMs: 10000, what: 'journal entries with CONNECTION=boot1' });
  for (const e of entries) {
    assert.equal(e.CONNECTION, 'boot1');
    assert.equal(e.PROVIDER, 'fake');
    assert.ok(e.TOKENBROKER_EVENT, JSON.stringify(e));
    assert.equal(e._SYSTEMD_UNIT, 'tokenbrokerd.service');
  }
  const authorized = entries.find((e) => e.TOKENBROKER_EVENT === 'authorized');
  assert.match(authorized.MESSAGE_ID, /^[0-9a-f]{32}$/);
  note(`journal CONNECTION=boot1: ${entries.map((e) => `${e.TOKENBROKER_EVENT}(${e.MESSAGE_ID ? e.MESSAGE_ID.slice(0, 8) : '-'})`).join(', ')}`);
  const reloaded = await c.exec(['journalctl', '--no-pager', '-u', 'tokenbrokerd', '-o', 'cat']);
  assert.match(reloaded.stdout, /Reloaded \/etc\/tokenbroker\/tokenbroker.conf: 2 providers/);

  // ---- a crash: Restart=on-failure, the sockets are kept ----
  await inside('systemctl', 'kill', '--signal=SIGKILL', 'tokenbrokerd.service');
  const pid2 = await waitFor(async () => {
    const p = Number(await show('MainPID'));
    return p > 0 && p !== pid && (await isActive('tokenbrokerd.service')) === 'active' && p;
  }, { timeoutMs: 20000, what: 'the restart after SIGKILL' });
  assert.equal(await show('NRestarts'), '1');
  assert.equal((await ctl('token', 'boot1')).code, 0);

  // ---- stop: clean exit, the socket stays and activates it again ----
  await inside('systemctl', 'stop', 'tokenbrokerd.service');
  assert.equal(await isActive('tokenbrokerd.service'), 'inactive');
  assert.equal(await show('ExecMainStatus'), '0');
  assert.equal(await show('Result'), 'success');
  assert.equal(await isActive('tokenbrokerd.socket'), 'active');
  assert.equal((await sockStat())[1], inode, 'stopping the service removed the API socket');
  // Either socket activates it: this time the callback listener.
  assert.equal((await httpGet(`${publicUrl}/healthz`)).status, 200);
  assert.equal(await isActive('tokenbrokerd.service'), 'active');
  const pid3 = Number(await show('MainPID'));
  assert.ok(pid3 > 0 && pid3 !== pid2, 'not activated again');
  const again = await ctl('show', 'boot1');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /active/);

  // ---- the store key as a credential: LoadCredential=tokenbroker.key ----
  // Absent so far (the daemon made /var/lib/tokenbroker/tokenbroker.key and
  // the unit started anyway); put in /etc/credstore on a fresh state it is
  // passed in $CREDENTIALS_DIRECTORY and no key file is made.
  await inside('systemctl', 'stop', 'tokenbrokerd.service');
  await inside('sh', '-c', 'rm -rf /var/lib/tokenbroker/* && install -d -m 0700 /etc/credstore && ' +
    '(umask 077; head -c 32 /dev/urandom > /etc/credstore/tokenbroker.key)');
  const s2 = await ctl('status');
  assert.equal(s2.code, 0, s2.stderr);
  const pid4 = (await show('MainPID')).trim();
  assert.equal((await c.exec(['nsenter', '-t', pid4, '-m', 'stat', '-c', '%a %U', '/run/credentials/tokenbrokerd.service/tokenbroker.key'])).stdout.trim(),
    '400 tokenbroker', 'the credential is not in the service\'s $CREDENTIALS_DIRECTORY');
  assert.equal((await c.exec(['test', '-e', '/var/lib/tokenbroker/tokenbroker.key'])).code, 1, 'a key file was made despite the credential');
  assert.equal((await c.exec(['test', '-e', '/var/lib/tokenbroker/tokenbroker.db'])).code, 0);

  await inside('systemctl', 'stop', 'tokenbrokerd.service', 'tokenbrokerd.socket', 'tokenbrokerd-callback.socket');
  assert.equal(await show('ExecMainStatus'), '0');
  assert.equal(await isActive('tokenbrokerd.service'), 'inactive');

  // ---- the sandbox as the running systemd sees it ----
  const sec = await c.exec(['systemd-analyze', 'security', '--no-pager', 'tokenbrokerd.service']);
  console.log(sec.stdout.split('\n').filter((l) => !l.startsWith('✓')).map((l) => `# ${l}`).join('\n'));
  const m = (sec.stdout + sec.stderr).match(/Overall exposure level for \S+: ([0-9.]+)/);
  assert.ok(m, sec.stdout + sec.stderr);
  note(`systemd-analyze security (inside, loaded unit): ${m[1]}`);
  assert.ok(Number(m[1]) <= 2.0, `exposure ${m[1]} > 2.0`);

  const failed = (await c.exec(['systemctl', '--failed', '--no-legend', '--plain'])).stdout.trim();
  assert.doesNotMatch(failed, /tokenbroker/, failed);

  // ---- make uninstall: everything of make install but /etc and the state ----
  const un = await run('make', ['-C', ROOT, 'uninstall', `DESTDIR=${root}`, 'PREFIX=/usr'], { timeoutMs: 60000 });
  assert.equal(un.code, 0, un.stdout + un.stderr);
  for (const f of ['usr/sbin/tokenbrokerd', 'usr/bin/tokenctl', 'usr/lib/systemd/system/tokenbrokerd.service',
    'usr/lib/systemd/system/tokenbrokerd.socket', 'usr/lib/systemd/system/tokenbrokerd-callback.socket',
    'usr/lib/sysusers.d/tokenbroker.conf', 'usr/lib/tmpfiles.d/tokenbroker.conf', 'usr/share/tokenbroker']) {
    assert.ok(!fs.existsSync(path.join(root, f)), `make uninstall left /${f}`);
  }
  assert.ok(fs.existsSync(conf), 'make uninstall removed the configuration');
  assert.equal((await c.exec(['test', '-e', '/var/lib/tokenbroker/tokenbroker.db'])).code, 0, 'make uninstall removed the store');
  note(`boot test: ${((Date.now() - t0) / 1000).toFixed(1)} s in all (root ${(rootMs / 1000).toFixed(1)} s)`);
});
