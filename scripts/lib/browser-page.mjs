// browser-page.mjs - used by scripts/bench-cockpit.sh: log into a web UI in
// Debian's headless Chromium (through playwright-core, as the browser tests
// do) and keep the page open until killed, so the server behind it can be
// measured with a logged-in page.
//
// Reads its settings as JSON on standard input (the password never goes
// through argv or the environment):
//   { "url", "user", "password",
//     "userSelector", "passwordSelector", "submitSelector",  // the login form
//     "ready",        // CSS selector that shows the page is up, looked for in every frame
//     "readyFrame",   // optional: only frames whose URL contains this
//     "click",        // optional: selectors clicked (once) if they show while waiting
//     "lenient",      // accept a page where "ready" never shows once the login form is gone
//     "timeout",      // seconds for the login and for "ready" (default 60)
//     "lifetime",     // seconds after which it exits on its own (default 1800)
//     "screenshot",   // optional: a PNG of the page once ready
//     "chromium" }
// Prints "ready" on standard output once the logged-in page shows; closes the
// browser and removes its profile on SIGTERM/SIGINT or at the end of its lifetime.

import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, 'crates/phyllome/tests/browser/package.json'));
const { chromium } = require('playwright-core');

const cfg = JSON.parse(readFileSync(0, 'utf8'));
const timeout = (cfg.timeout || 60) * 1000;
const say = (m) => console.error(`browser-page: ${m}`);

const profile = mkdtempSync(join(tmpdir(), 'phyllome-test-chromium-'));
let context = null;
let closing = false;
async function close(code) {
  if (closing) return;
  closing = true;
  try {
    if (context) await Promise.race([context.close(), new Promise((r) => setTimeout(r, 10000))]);
  } catch (e) {
    say(`close: ${e}`);
  }
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
process.on('SIGTERM', () => close(0));
process.on('SIGINT', () => close(0));
setTimeout(() => { say('lifetime over'); close(0); }, (cfg.lifetime || 1800) * 1000).unref();

// The first frame (main page or iframe) where `sel` matches a visible element.
async function findInFrames(page, sel, frameFilter) {
  for (const f of page.frames()) {
    if (frameFilter && !f.url().includes(frameFilter)) continue;
    try {
      const el = await f.$(sel);
      if (el && (await el.isVisible())) return f;
    } catch {
      // a frame navigating away: try the next one / the next round
    }
  }
  return null;
}

async function waitFor(what, fn) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: cfg.chromium || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on('pageerror', (e) => say(`page error: ${e.message}`));
  await page.goto(cfg.url);
  // The login form, by the given selectors, else the first password field of the page.
  const pw = `${cfg.passwordSelector || 'input[type=password]'}, input[type=password]`;
  const user = `${cfg.userSelector || 'input[autocomplete=username]'}, input[autocomplete=username], input[name=username], input[type=text]`;
  await page.waitForSelector(pw, { state: 'visible' });
  await page.fill(user, cfg.user);
  await page.fill(pw, cfg.password);
  if (cfg.submitSelector && (await page.$(cfg.submitSelector))) await page.click(cfg.submitSelector);
  else await page.press(pw, 'Enter');
  const clicked = new Set();
  let f;
  try {
    f = await waitFor(`"${cfg.ready}" after the login`, async () => {
      const hit = await findInFrames(page, cfg.ready, cfg.readyFrame);
      if (hit) return hit;
      for (const sel of cfg.click || []) {
        if (clicked.has(sel)) continue;
        const fr = await findInFrames(page, sel, cfg.readyFrame);
        if (fr) {
          await fr.click(sel).catch(() => {});
          clicked.add(sel);
          say(`clicked ${sel}`);
        }
      }
      // A visible error next to a still visible form: the login was refused.
      if (!(await page.isVisible(pw).catch(() => false))) return null;
      const err = await page.evaluate(() => [...document.querySelectorAll('[id*=error], [role=alert]')]
        .filter((e) => e.offsetParent !== null).map((e) => e.textContent.trim()).filter((t) => t).join('; '))
        .catch(() => '');
      if (/wrong|incorrect|denied|failed|refused/i.test(err)) throw new Error(`login refused: ${err}`);
      return null;
    });
  } catch (e) {
    if (!cfg.lenient || (await page.isVisible(pw).catch(() => true))) throw e;
    say(`warning: "${cfg.ready}" never showed, but the login form is gone: taking the page as logged in`);
    f = page.mainFrame();
  }
  if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot });
  say(`logged in; "${cfg.ready}" shows in ${f === page.mainFrame() ? 'the page' : f.url()}`);
  console.log('ready');
} catch (e) {
  say(`error: ${e && e.stack ? e.stack : e}`);
  await close(1);
}
