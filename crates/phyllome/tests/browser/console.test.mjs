// Browser test of `phyllome serve`, driven by crates/phyllome/tests/web_browser.rs,
// which starts the server and passes the settings as JSON on standard input
// (the password never goes through argv or the environment).
//
// Debian's Chromium, headless, through playwright-core: log in; see a VM whose
// name is full of HTML shown as text; create a VM from the test guest and see
// it run without reloading; the host check and device pages; the console
// (noVNC through phyllome's WebSocket proxy) shows the guest's screen; stop
// and delete with confirmation; log out. Each page is saved as a PNG.
//
// Prints one line per step and a closing "browser: N passed, M failed" line;
// exits non-zero when a step failed.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const cfg = JSON.parse(readFileSync(0, 'utf8'));
mkdirSync(cfg.artifacts, { recursive: true });

const results = [];
const dialogs = [];
let navigations = 0;

async function step(name, fn) {
  if (results.some((r) => !r.ok)) {
    results.push({ name, ok: false, skipped: true });
    console.log(`skip - ${name}`);
    return;
  }
  const t = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok - ${name} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`not ok - ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function waitUntil(what, secs, fn) {
  const deadline = Date.now() + secs * 1000;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${secs} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const profile = mkdtempSync(join(tmpdir(), 'phyllome-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(30000);
page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });
page.on('console', (m) => { if (m.type() === 'error') console.log(`  (page console: ${m.text()})`); });
page.on('pageerror', (e) => console.log(`  (page error: ${e.message})`));

const shot = (name) => page.screenshot({ path: join(cfg.artifacts, `${name}.png`) });
// The row of a VM, found by comparing names as strings (no selector escaping of odd names).
const rowState = (name) => page.evaluate((n) => {
  const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
  return tr ? tr.querySelector('.state').textContent : null;
}, name);
const clickRowButton = (name, action) => page.evaluate(([n, a]) => {
  const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
  tr.querySelector(`[data-action="${a}"]`).click();
}, [name, action]);

try {
  await step('the login page shows and a login works', async () => {
    await page.goto(cfg.url);
    await page.waitForSelector('#login-form', { state: 'visible' });
    await shot('01-login');
    await page.fill('#login-user', cfg.user);
    await page.fill('#login-password', 'not the password');
    await page.click('#login-submit');
    await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0);
    assert((await page.textContent('#login-error')).includes('wrong user name or password'), 'no error for a wrong password');
    await page.fill('#login-password', cfg.password);
    await page.click('#login-submit');
    await page.waitForSelector('#vm-table');
    await waitUntil('the live indicator', 10, async () => (await page.textContent('#live')) === 'live');
    assert(!(await context.cookies()).some((c) => c.name.includes('phyllome') && !c.httpOnly), 'the session cookie is readable by scripts');
    assert(await page.evaluate(() => !document.cookie.includes('phyllome')), 'document.cookie shows the session');
  });

  await step('a VM name full of HTML is shown as text', async () => {
    await waitUntil('the HTML-named VM', 15, () => rowState(cfg.xssName));
    const shown = await page.evaluate((n) => {
      const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
      return tr.querySelector('td.name').textContent;
    }, cfg.xssName);
    assert(shown === cfg.xssName, `the name shows as ${JSON.stringify(shown)}`);
    await page.waitForTimeout(500);
    const injected = await page.evaluate(() => ({
      img: document.querySelectorAll('#vm-table img, #vm-table svg').length,
      flag: window.__phyllome_xss,
    }));
    assert(injected.img === 0 && injected.flag === undefined, `markup from a name was parsed: ${JSON.stringify(injected)}`);
    assert(dialogs.length === 0, `a script from a name ran: ${dialogs}`);
    await shot('02-vm-list');
  });

  await step('create a VM from the test guest; it shows running without a reload', async () => {
    const before = navigations;
    await page.click('#new-vm');
    await page.waitForSelector('#create-dialog[open]');
    await page.waitForFunction(() => document.querySelector('select[name=os]').options.length > 1);
    await page.fill('input[name=name]', cfg.vm);
    await page.selectOption('select[name=os]', 'linux');
    await page.fill('input[name=memory]', '512M');
    await page.fill('input[name=cpus]', '1');
    await page.fill('input[name=disk_size]', '4G');
    await page.selectOption('select[name=network]', 'none');
    await page.click('#create-dialog summary');
    await page.selectOption('select[name=kernel]', 'vmlinuz');
    await page.selectOption('select[name=initrd]', 'initrd.img');
    // tty0 too, so the kernel's messages show on the display (the guest's own output stays on ttyS0).
    await page.fill('input[name=cmdline]', 'console=tty0 console=ttyS0 panic=-1');
    const isoChoices = await page.$$eval('select[name=iso] option', (o) => o.map((x) => x.value));
    assert(isoChoices[0] === '', `the ISO picker lacks "(none)": ${isoChoices}`);
    await shot('03-create-dialog');
    await page.click('#create-submit');
    await page.waitForSelector('#create-dialog', { state: 'hidden', timeout: 120000 }).catch(async (e) => {
      throw new Error(`the dialog stayed open: ${await page.textContent('#create-error')} (${e.message})`);
    });
    await waitUntil('the new VM to show running', 60, async () => (await rowState(cfg.vm)) === 'running');
    assert(navigations === before, 'the page reloaded');
    await shot('04-vm-running');
  });

  await step('the host check page shows the report', async () => {
    await page.click('[data-nav=host]');
    await page.waitForSelector('#verdict', { timeout: 60000 });
    const rows = await page.$$eval('#check-table tbody tr', (r) => r.length);
    assert(rows >= 5, `only ${rows} checks`);
    await shot('05-host-check');
  });

  await step('the devices page lists the PCI devices', async () => {
    await page.click('[data-nav=devices]');
    await page.waitForSelector('#pci-table');
    const rows = await page.$$eval('#pci-table tbody tr', (r) => r.length);
    assert(rows >= 1, 'no PCI devices listed');
    await shot('06-devices');
  });

  await step("the console shows the guest's screen (noVNC through the proxy)", async () => {
    await page.click('[data-nav=vms]');
    await page.waitForSelector('#vm-table');
    await waitUntil('the VM row', 10, () => rowState(cfg.vm));
    await page.evaluate((n) => {
      const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
      tr.querySelector('[data-action=console]').click();
    }, cfg.vm);
    await page.waitForSelector('#screen');
    await waitUntil('the console to connect', 30, async () => (await page.textContent('#console-status')) === 'connected');
    // The guest's screen, not blank, and neither QEMU's centred "Guest has
    // not initialized the display" placeholder nor the firmware's logo: once
    // the guest is up, the kernel's console text from the very top left, i.e.
    // off-background pixels in the first text lines, in several colours.
    await waitUntil('PHYLLOME-READY on the serial console', 180, () => {
      try { return readFileSync(cfg.serialLog, 'utf8').includes('PHYLLOME-READY'); } catch (e) { return false; }
    });
    const stats = await waitUntil('the guest on the canvas', 60, async () => {
      const s = await page.evaluate(() => {
        const c = document.querySelector('#screen canvas');
        if (!c || !c.width || !c.height) return null;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const counts = new Map();
        let n = 0;
        for (let i = 0; i < d.length; i += 4 * 5) {
          const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
          counts.set(k, (counts.get(k) || 0) + 1);
          n += 1;
        }
        let bg = 0;
        let top = 0;
        for (const [k, v] of counts) if (v > top) { top = v; bg = k; }
        let topOther = 0;
        let topN = 0;
        for (let i = 0; i < c.width * 48; i += 3) {
          const k = (d[4 * i] << 16) | (d[4 * i + 1] << 8) | d[4 * i + 2];
          topN += 1;
          if (k !== bg) topOther += 1;
        }
        return { width: c.width, height: c.height, colours: counts.size, other: (n - top) / n, top: topOther / topN };
      });
      return s && s.colours >= 2 && s.other > 0.002 && s.top > 0.002 ? s : null;
    });
    console.log(`  canvas ${stats.width}x${stats.height}, ${stats.colours} colours, ${(stats.other * 100).toFixed(2)} % off-background (${(stats.top * 100).toFixed(2)} % in the top three text lines)`);
    await shot('07-console');
  });

  await step('stop, with confirmation, once the guest is up', async () => {
    await waitUntil('PHYLLOME-READY on the serial console', 180, () => {
      try { return readFileSync(cfg.serialLog, 'utf8').includes('PHYLLOME-READY'); } catch (e) { return false; }
    });
    await page.click('a[href="#/vms"].button');
    await page.waitForSelector('#vm-table');
    await waitUntil('the VM row', 10, () => rowState(cfg.vm));
    const before = navigations;
    await clickRowButton(cfg.vm, 'stop');
    await page.waitForSelector('#confirm-dialog[open]');
    const text = await page.textContent('#confirm-text');
    assert(text.includes(cfg.vm), `the confirmation does not name the VM: ${text}`);
    await shot('08-confirm-stop');
    await page.click('#confirm-ok');
    await waitUntil('the VM to show shut off', 120, async () => (await rowState(cfg.vm)) === 'shut off');
    assert(navigations === before, 'the page reloaded');
  });

  await step('delete, with confirmation; cancelling keeps it', async () => {
    await clickRowButton(cfg.vm, 'delete');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-cancel');
    await page.waitForTimeout(500);
    assert((await rowState(cfg.vm)) === 'shut off', 'cancel deleted the VM');
    await clickRowButton(cfg.vm, 'delete');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-ok');
    await waitUntil('the VM to leave the list', 60, async () => (await rowState(cfg.vm)) === null);
    await shot('09-deleted');
  });

  await step('log out', async () => {
    await page.click('#logout');
    await page.waitForSelector('#login-form', { state: 'visible' });
    await page.reload();
    await page.waitForSelector('#login-form', { state: 'visible' });
    assert((await page.$$('#vm-table')).length === 0, 'the VM list shows after logout');
  });
} finally {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
