'use strict';
/*
 * Drive Debian's chromium (through npm playwright-core, no downloaded browser)
 * through oidc-provider's login / consent / device-verification pages, the way
 * a person would.
 *
 *   const { authorizeInBrowser, approveDeviceInBrowser } = require('./lib/browser.js');
 *   const r = await authorizeInBrowser(authorizeUrl, { login: 'alice' });
 *   // r.finalUrl is the redirect URI with ?code=&state=, r.status, r.text
 *
 * Each call launches a fresh browser with a fresh profile (temporary
 * directory) and always closes it and removes the directory. Every wait is
 * bounded by timeoutMs (whole call). Works with both oidc-provider's stock dev
 * pages and oidc-server.js's own pages (devInteractions: false), which use the
 * same URLs and form fields.
 *
 * Host names other than localhost do not resolve inside this browser
 * (--host-resolver-rules), so nothing leaves the machine (the stock pages
 * @import a web font).
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.* , EXCLUDE [::1]',
];

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

/* What is on the page, in one evaluate: the page is tagged with a random id
 * so a new document is told apart from the old one at the same URL. */
function probe() {
  /* eslint-disable no-undef */
  if (!window.__tbDocId) window.__tbDocId = Math.random().toString(36).slice(2);
  const q = (s) => document.querySelector(s);
  const codeInput = q('[id="op.deviceInputForm"] input[name="user_code"]');
  return {
    docId: window.__tbDocId,
    readyState: document.readyState,
    title: document.title,
    login: !!q('form input[name="prompt"][value="login"]') && !!q('input[name="login"]'),
    consent: !!q('form input[name="prompt"][value="consent"]'),
    loginError: !!q('.error') && !!q('input[name="login"]'),
    deviceInput: !!codeInput,
    deviceInputValue: codeInput ? codeInput.value : null,
    deviceInputError: !!codeInput && !!q('.error, p.red'),
    deviceConfirm: !!q('[id="op.deviceConfirmForm"]'),
    deviceSuccess: !!q('#device-success') || document.title === 'Sign-in Success',
    errorPage: document.title === 'Error' || document.title === 'oops! something went wrong',
    text: (document.body ? document.body.innerText : '').slice(0, 2000),
  };
  /* eslint-enable no-undef */
}

const TRANSIENT = /Execution context was destroyed|navigation|Target closed|frame was detached|Cannot find context/i;

/**
 * Launch the browser, go to startUrl and run step(state, page, ctl) on every
 * new document until it returns a result (non-undefined) or the deadline.
 */
async function runFlow(startUrl, opts, step) {
  const timeoutMs = opts.timeoutMs ?? 30000;
  const deadline = Date.now() + timeoutMs;
  const remaining = () => Math.max(1, deadline - Date.now());
  const { chromium } = require('playwright-core');
  const tmpdir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-chromium-'));
  const steps = [];
  let context;
  let page;
  let lateLaunch = null;
  try {
    const launching = chromium.launchPersistentContext(tmpdir, {
      executablePath: opts.executablePath ?? process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      headless: opts.headless ?? true,
      args: [...CHROMIUM_ARGS, ...(opts.args ?? [])],
      timeout: Math.min(remaining(), 30000),
    });
    try {
      context = await withTimeout(launching, remaining() + 2000, 'launching chromium');
    } catch (e) {
      // a launch that still finishes later must not leave a browser behind
      lateLaunch = launching.then((c) => c.close()).catch(() => {});
      throw e;
    }
    page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(remaining());
    page.setDefaultNavigationTimeout(remaining());

    const ctl = { steps, remaining, callback: null, callbackError: null };
    const callbackPath = opts.callbackPath ?? '/oauth/callback';
    const isCallback = (u) => {
      // the shared callback or a provider's own (callbackPath/PROVIDER)
      try {
        const p = new URL(u).pathname;
        const i = p.lastIndexOf(callbackPath);
        return i >= 0 && (p.length === i + callbackPath.length || /^\/[^/]+$/.test(p.slice(i + callbackPath.length)));
      } catch { return false; }
    };
    ctl.isCallback = isCallback;
    page.on('response', (res) => {
      const req = res.request();
      if (req.frame() === page.mainFrame() && req.isNavigationRequest() && isCallback(res.url())) {
        ctl.callback = res;
      }
    });
    page.on('requestfailed', (req) => {
      if (req.isNavigationRequest() && isCallback(req.url())) {
        ctl.callbackError = { url: req.url(), error: req.failure()?.errorText ?? 'failed' };
      }
    });

    steps.push('goto');
    try {
      await page.goto(startUrl, { waitUntil: 'commit', timeout: remaining() });
    } catch (e) {
      if (!ctl.callbackError) throw e;
    }

    let actedOn = null;
    let lastState = null;
    for (;;) {
      if (Date.now() >= deadline) {
        const err = new Error(`browser flow timed out after ${timeoutMs} ms (steps: ${steps.join(' > ')}; url: ${page.url()}; page: ${JSON.stringify((lastState?.text ?? '').slice(0, 300))})`);
        throw err;
      }
      if (ctl.callbackError) {
        const err = new Error(`the redirect to ${ctl.callbackError.url} failed: ${ctl.callbackError.error}`);
        err.finalUrl = ctl.callbackError.url;
        err.steps = steps;
        throw err;
      }
      let st;
      try {
        await page.waitForLoadState('load', { timeout: remaining() });
        st = await page.evaluate(probe);
      } catch (e) {
        if (TRANSIENT.test(String(e.message))) { await sleep(25); continue; }
        throw e;
      }
      lastState = st;
      if (st.docId === actedOn || st.readyState !== 'complete') { await sleep(25); continue; }
      const result = await step(st, page, ctl);
      if (result !== undefined && result !== null && result !== 'acted') return { ...result, steps };
      if (result === 'acted') actedOn = st.docId;
      else await sleep(25);
    }
  } catch (e) {
    if (page && opts.screenshotDir) {
      try {
        fs.mkdirSync(opts.screenshotDir, { recursive: true });
        await page.screenshot({ path: path.join(opts.screenshotDir, `browser-failure-${Date.now()}.png`), timeout: 5000 });
      } catch { /* best effort */ }
    }
    if (!e.steps) e.steps = steps;
    throw e;
  } finally {
    if (context) {
      await withTimeout(context.close(), 10000, 'closing chromium').catch(() => {});
    }
    if (lateLaunch) await withTimeout(lateLaunch, 35000, 'late chromium launch').catch(() => {});
    // A chromium that did not close keeps its pipes, and with them this
    // test file's process, alive for ever: kill whatever still runs with
    // this profile folder.
    killProfileProcesses(tmpdir);
    // Chromium's helper processes may still write for a moment after a
    // failed launch: retry for up to 5 s, never mask the flow's own outcome.
    for (let i = 0; i < 25; i++) {
      try { fs.rmSync(tmpdir, { recursive: true, force: true }); } catch { /* retry */ }
      if (!fs.existsSync(tmpdir)) break;
      await sleep(200);
    }
  }
}

/** SIGKILLs every process whose command line names the profile folder dir. */
function killProfileProcesses(dir) {
  let names = [];
  try { names = fs.readdirSync('/proc').filter((n) => /^[0-9]+$/.test(n)); } catch { return; }
  for (const pid of names.slice(0, 100000)) {
    let cmd;
    try { cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1'); } catch { continue; }
    if (cmd.includes(dir)) {
      try { process.kill(Number(pid), 'SIGKILL'); } catch { /* gone already */ }
    }
  }
}

/* Shared page handlers: login, consent, callback, error pages. */
async function commonStep(st, page, ctl, o) {
  const url = page.url();
  if (ctl.isCallback(url) && ctl.callback) {
    ctl.steps.push('callback');
    return {
      finalUrl: url,
      status: ctl.callback.status(),
      text: await page.innerText('body').catch(() => st.text),
    };
  }
  if (st.loginError && o.loggedIn) {
    const e = new Error(`login refused for ${JSON.stringify(o.login)}: ${st.text.slice(0, 200)}`);
    e.code = 'LOGIN_REFUSED';
    throw e;
  }
  if (st.login) {
    ctl.steps.push('login');
    o.loggedIn = true;
    await page.fill('input[name="login"]', o.login);
    await page.fill('input[name="password"]', o.password);
    await page.click('form:has(input[name="prompt"][value="login"]) button[type="submit"]');
    return 'acted';
  }
  if (st.consent) {
    if (o.consent) {
      ctl.steps.push('consent');
      await page.click('form:has(input[name="prompt"][value="consent"]) button[type="submit"]');
    } else {
      ctl.steps.push('consent-abort');
      o.aborted = true;
      await page.click('a[href$="/abort"]');
    }
    return 'acted';
  }
  if (st.errorPage) {
    const e = new Error(`authorization server error page at ${url}: ${st.text.slice(0, 500)}`);
    e.code = 'ERROR_PAGE';
    e.text = st.text;
    throw e;
  }
  return undefined;
}

/**
 * Run an authorization-code flow in the browser up to the redirect URI.
 * url: the full authorization request URL.
 * Options: login ('alice'), password ('x'), consent (true; false clicks
 * "[ Cancel ]" on the consent page, the server then redirects with
 * error=access_denied), timeoutMs (30000, whole call), callbackPath
 * ('/oauth/callback'), executablePath ('/usr/bin/chromium' or $CHROMIUM_PATH),
 * headless (true), args (extra chromium args), screenshotDir (on failure).
 * Returns { finalUrl, status, text, steps }.
 * Throws if the redirect target cannot be reached (err.finalUrl still holds
 * the redirect URI with code/state), on a login refusal (err.code
 * 'LOGIN_REFUSED'), on an error page of the server (err.code 'ERROR_PAGE').
 */
async function authorizeInBrowser(url, {
  login = 'alice', password = 'x', consent = true, timeoutMs = 30000, ...rest
} = {}) {
  const o = { login, password, consent, loggedIn: false };
  return runFlow(url, { timeoutMs, ...rest }, async (st, page, ctl) => commonStep(st, page, ctl, o));
}

/**
 * Approve a device-flow user code in the browser.
 * target: verification_uri_complete (string), or { uri, userCode }, or the
 * device authorization response itself ({ verification_uri_complete } or
 * { verification_uri, user_code }).
 * Options as authorizeInBrowser; consent=false aborts on the consent page.
 * Returns { finalUrl, text, steps, aborted } when the success page shows (or,
 * with consent=false, the page shown after aborting).
 */
async function approveDeviceInBrowser(target, {
  login = 'alice', password = 'x', consent = true, timeoutMs = 30000, ...rest
} = {}) {
  let uri;
  let userCode;
  if (typeof target === 'string') uri = target;
  else if (target && typeof target === 'object') {
    uri = target.uri ?? target.verification_uri_complete ?? target.verification_uri;
    userCode = target.userCode ?? target.user_code;
  }
  if (!uri) throw new TypeError('approveDeviceInBrowser: no verification URI');
  const o = { login, password, consent, loggedIn: false, aborted: false, codeSubmitted: false, confirmed: false };
  return runFlow(uri, { timeoutMs, ...rest }, async (st, page, ctl) => {
    if (st.deviceSuccess) {
      ctl.steps.push('success');
      return { finalUrl: page.url(), text: st.text, aborted: false };
    }
    if (o.aborted && (st.deviceInput || st.errorPage || st.deviceConfirm)) {
      ctl.steps.push('aborted');
      return { finalUrl: page.url(), text: st.text, aborted: true };
    }
    if (st.deviceInput) {
      if (o.codeSubmitted && st.deviceInputError) {
        const e = new Error(`user code refused: ${st.text.slice(0, 200)}`);
        e.code = 'USER_CODE_REFUSED';
        throw e;
      }
      if (!st.deviceInputValue) {
        if (!userCode) throw new Error('device verification page asks for the user code, but none was given');
        await page.fill('[id="op.deviceInputForm"] input[name="user_code"]', userCode);
      }
      ctl.steps.push('user-code');
      o.codeSubmitted = true;
      await page.click('button[type="submit"][form="op.deviceInputForm"]');
      return 'acted';
    }
    if (st.deviceConfirm) {
      if (o.confirmed) {
        // confirm page shown again: treat as a loop, let the deadline decide
        return undefined;
      }
      o.confirmed = true;
      ctl.steps.push('confirm');
      await page.click('button[type="submit"][form="op.deviceConfirmForm"]:not([name="abort"])');
      return 'acted';
    }
    return commonStep(st, page, ctl, o);
  });
}

// runFlow and commonStep: for flows that start on a page of the broker (tests/integration/reauth-link.test.js).
module.exports = { authorizeInBrowser, approveDeviceInBrowser, runFlow, commonStep, CHROMIUM_ARGS };
