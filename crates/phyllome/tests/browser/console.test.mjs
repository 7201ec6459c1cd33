// Browser test of `phyllome serve`, driven by crates/phyllome/tests/web_browser.rs,
// which starts the server and passes the settings as JSON on standard input
// (the password never goes through argv or the environment).
//
// Debian's Chromium, headless, through playwright-core: log in; see a VM whose
// name is full of HTML shown as text (in the list and on its page); create a
// VM from the test guest, watching the create's steps in the dialog, and see
// it run without reloading; the host check and device pages; the console
// (noVNC through phyllome's WebSocket proxy) shows the guest's screen; the
// VM's page (overview with UUID, vCPUs, encryption and why each device);
// the serial console (xterm.js) runs a command in the guest's shell; the
// VM's usage charts (uPlot) fill and update live, and the host page's usage
// counts it running; pause and resume; stop with confirmation (Escape and Cancel keep it running);
// a stopped VM's console, serial console and usage say "not running"; delete with
// confirmation; no Content-Security-Policy violation on the way; log out.
// Each page is saved as a PNG.
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
const cspViolations = [];

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

const serialLog = () => {
  try { return readFileSync(cfg.serialLog, 'utf8'); } catch (e) { return ''; }
};

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
page.on('console', (m) => {
  if (m.type() !== 'error') return;
  if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
  console.log(`  (page console: ${m.text()})`);
});
page.on('pageerror', (e) => console.log(`  (page error: ${e.message})`));

const shot = (name) => page.screenshot({ path: join(cfg.artifacts, `${name}.png`) });
// The row of a VM, found by comparing names as strings (no selector escaping of odd names).
const rowState = (name) => page.evaluate((n) => {
  const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
  return tr ? tr.dataset.state : null;
}, name);
const clickInRow = (name, selector) => page.evaluate(([n, s]) => {
  const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
  tr.querySelector(s).click();
}, [name, selector]);
const clickRowButton = (name, action) => clickInRow(name, `[data-action="${action}"]`);
const text = async (sel) => ((await page.textContent(sel)) || '').trim();
// Set before an action and checked after it: still there means the page did not reload.
const markPage = () => page.evaluate(() => { window.__phyllome_same_page = true; });
const samePage = () => page.evaluate(() => window.__phyllome_same_page === true);
const toList = async () => {
  await page.click('[data-nav=vms]');
  await page.waitForSelector('#vm-table');
};

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
    await page.waitForSelector('#vm-page');
    await waitUntil('the live indicator', 10, async () => (await page.textContent('#live')) === 'live');
    assert((await page.$$('#stale-banner')).length === 0, 'the stale-list banner shows while libvirtd is up');
    assert(!(await context.cookies()).some((c) => c.name.includes('phyllome') && !c.httpOnly), 'the session cookie is readable by scripts');
    assert(await page.evaluate(() => !document.cookie.includes('phyllome')), 'document.cookie shows the session');
  });

  await step('a VM name full of HTML is shown as text, in the list and on its page', async () => {
    await waitUntil('the HTML-named VM', 15, () => rowState(cfg.xssName));
    const shown = await page.evaluate((n) => {
      const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
      return tr.querySelector('td.name').textContent;
    }, cfg.xssName);
    assert(shown === cfg.xssName, `the name shows as ${JSON.stringify(shown)}`);
    await page.waitForTimeout(500);
    const injected = (scope) => page.evaluate((s) => ({
      img: document.querySelectorAll(`${s} img, ${s} svg`).length,
      flag: window.__phyllome_xss,
    }), scope);
    let found = await injected('#vm-table');
    assert(found.img === 0 && found.flag === undefined, `markup from a name was parsed: ${JSON.stringify(found)}`);
    await shot('02-vm-list');
    await clickInRow(cfg.xssName, 'td.name a');
    await page.waitForSelector('#vm-detail #overview');
    assert((await page.textContent('#vm-name')) === cfg.xssName, `the VM page's title is ${await page.textContent('#vm-name')}`);
    await page.waitForTimeout(300);
    found = await injected('#vm-detail');
    assert(found.img === 0 && found.flag === undefined, `markup from a name was parsed on its page: ${JSON.stringify(found)}`);
    assert(dialogs.length === 0, `a script from a name ran: ${dialogs}`);
    await page.click('#back-to-list');
    await page.waitForSelector('#vm-table');
  });

  await step('create a VM from the test guest, its steps shown as they happen; it shows running without a reload', async () => {
    await markPage();
    await page.click('#new-vm');
    await page.waitForSelector('#create-dialog[open]');
    await page.waitForFunction(() => document.querySelector('select[name=os]').options.length > 1);
    assert(await page.evaluate(() => document.activeElement && document.activeElement.name === 'name'),
      'the name field does not have the focus');
    await page.fill('input[name=name]', cfg.vm);
    await page.selectOption('select[name=os]', 'linux');
    assert((await page.inputValue('input[name=memory]')) !== '', 'no recommended memory for linux');
    await page.fill('input[name=memory]', '512M');
    await page.fill('input[name=cpus]', '1');
    await page.fill('input[name=disk_size]', '4G');
    const nets = await page.$$eval('select[name=network] option', (o) => o.map((x) => x.value));
    assert(nets.includes('none') && nets.includes('user'), `the network picker lacks none or user: ${nets}`);
    // Inactive libvirt networks are not offered (the tests never start 'default').
    const inactive = (await (await page.request.get(`${cfg.url}api/v1/networks`)).json()).filter((n) => !n.active);
    for (const n of inactive) assert(!nets.includes(n.name), `the inactive network ${n.name} is offered: ${nets}`);
    await page.selectOption('select[name=network]', 'none');
    await page.click('#create-dialog summary');
    await page.selectOption('select[name=kernel]', 'vmlinuz');
    await page.selectOption('select[name=initrd]', 'initrd.img');
    // tty0 too, so the kernel's messages show on the display (the guest's own output stays on ttyS0).
    await page.fill('input[name=cmdline]', 'console=tty0 console=ttyS0 panic=-1');
    const isoChoices = await page.$$eval('select[name=iso] option', (o) => o.map((x) => x.value));
    assert(isoChoices[0] === '', `the ISO picker lacks "(none)": ${isoChoices}`);
    await shot('03-create-dialog');
    // Which steps were on screen before the result was.
    await page.evaluate(() => {
      const seen = { steps: [], before: 0, result: false };
      window.__phyllome_progress = seen;
      const look = () => {
        const steps = [...document.querySelectorAll('#create-progress li[data-step]')].map((li) => li.dataset.step);
        const result = !!document.querySelector('#create-result');
        if (!seen.result && !result) seen.before = Math.max(seen.before, steps.length);
        seen.steps = steps;
        seen.result = seen.result || result;
      };
      new MutationObserver(look).observe(document.body, { subtree: true, childList: true });
    });
    await page.click('#create-submit');
    const error = await waitUntil('the result of the create', 120, () => page.evaluate(() => {
      if (document.querySelector('#create-result')) return 'none';
      const e = document.querySelector('#create-error');
      return e && e.textContent ? e.textContent : null;
    }));
    assert(error === 'none', `the create failed: ${error}`);
    const progress = await page.evaluate(() => window.__phyllome_progress);
    console.log(`  steps: ${progress.steps.join(' ')} (${progress.before} shown before the result)`);
    assert(progress.before >= 1, 'no step showed before the create finished');
    for (const s of ['define', 'start']) assert(progress.steps.includes(s), `no "${s}" step: ${progress.steps}`);
    assert((await page.textContent('#create-result')).includes(cfg.vm), 'the result does not name the VM');
    await shot('10-create-progress');
    await page.click('#create-close');
    await page.waitForSelector('#create-dialog', { state: 'hidden' });
    await waitUntil('the new VM to show running', 60, async () => (await rowState(cfg.vm)) === 'running');
    assert(await samePage(), 'the page reloaded');
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
    await toList();
    await waitUntil('the VM row', 10, () => rowState(cfg.vm));
    await clickRowButton(cfg.vm, 'console');
    await page.waitForSelector('#screen');
    await waitUntil('the console to connect', 30, async () => (await text('#console-status')) === 'connected');
    // The guest's screen, not blank, and neither QEMU's centred "Guest has
    // not initialized the display" placeholder nor the firmware's logo: once
    // the guest is up, the kernel's console text from the very top left, i.e.
    // off-background pixels in the first text lines, in several colours.
    await waitUntil('PHYLLOME-READY on the serial console', 180, () => serialLog().includes('PHYLLOME-READY'));
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

  await step("the VM's page shows its UUID, vCPUs, encryption and why each device", async () => {
    await page.click('#tab-overview');
    await page.waitForSelector('#overview');
    const api = await page.evaluate(async (n) => (await fetch(`/api/v1/vms/${encodeURIComponent(n)}`)).json(), cfg.vm);
    await waitUntil('the overview to show the VM running', 10, async () => (await text('#ov-state')) === 'running');
    const uuid = await text('#ov-uuid');
    assert(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(uuid) && uuid === api.uuid,
      `the UUID shows as ${JSON.stringify(uuid)} (the API says ${api.uuid})`);
    assert((await text('#ov-vcpus')) === '1', `vCPUs show as ${await text('#ov-vcpus')}`);
    const enc = await text('#ov-encryption');
    assert(enc.startsWith('encrypted'), `encryption shows as ${JSON.stringify(enc)}`);
    const disks = await page.$$eval('#disk-table tbody tr', (rows) => rows.map((r) => r.textContent));
    assert(disks.some((d) => d.includes('yes')), `no encrypted disk listed: ${disks}`);
    const whys = await page.$$eval('#choice-table tbody tr', (rows) => rows.map((r) => ({
      item: r.dataset.item, why: r.querySelector('.why').textContent.trim(),
    })));
    assert(whys.length >= 3 && whys.every((w) => w.item && w.why.length > 3), `the device whys: ${JSON.stringify(whys)}`);
    assert(whys.length === (api.choices || []).length, `${whys.length} whys shown, the API has ${(api.choices || []).length}`);
    await shot('08-vm-detail');
  });

  await step("the serial console runs a command in the guest's shell (xterm.js over the WebSocket)", async () => {
    await page.click('#tab-serial');
    await page.waitForSelector('#serial-term .xterm');
    await waitUntil('the serial console to connect', 30, async () => (await text('#serial-status')) === 'connected');
    const screen = () => page.evaluate(() => {
      const rows = document.querySelector('#serial-term .xterm-rows');
      return rows ? [...rows.children].map((r) => r.textContent).join('\n') : '';
    });
    // A fresh prompt first (the shell printed its last one before we connected).
    await page.click('#serial-term');
    await page.keyboard.press('Enter');
    await waitUntil('a shell prompt', 20, async () => /[#$] *$/m.test(await screen()));
    await page.keyboard.type('echo phyllome-$((6*7))');
    await page.keyboard.press('Enter');
    await waitUntil('the shell to answer phyllome-42', 20, async () => (await screen()).includes('phyllome-42'));
    await shot('09-serial');
  });

  await step("the VM's usage charts fill and update live; the host page counts it running", async () => {
    await page.click('#tab-usage');
    await page.waitForSelector('[data-testid=usage-cpu-chart] .uplot canvas');
    // What the CPU chart was last given: how many samples, and the time of the latest.
    const cpuChart = () => page.evaluate(() => {
      const f = document.querySelector('[data-testid=usage-cpu-chart]');
      return f ? { points: Number(f.dataset.points || 0), updated: Number(f.dataset.updated || 0) } : null;
    });
    const first = await waitUntil('the CPU chart to have points', 15, async () => {
      const c = await cpuChart();
      return c && c.points > 0 && c.updated > 0 ? c : null;
    });
    const later = await waitUntil('the CPU chart to update', 10, async () => {
      const c = await cpuChart();
      return c && (c.updated > first.updated || c.points !== first.points) ? c : null;
    });
    console.log(`  CPU chart: ${first.points} points to ${first.updated}, then ${later.points} to ${later.updated}`);
    assert(later.points <= 600, `the CPU chart holds ${later.points} points (the server keeps 600)`);
    for (const c of ['memory', 'disk', 'network']) {
      assert((await page.$$(`[data-testid=usage-${c}-chart] .uplot canvas`)).length === 1, `no ${c} chart`);
    }
    const label = await page.getAttribute('[data-testid=usage-cpu-chart] .u-wrap', 'aria-label');
    assert(label && label.includes('CPU'), `the CPU chart's label is ${JSON.stringify(label)}`);
    const figures = {
      cpu: await text('#usage-cpu-now'), assigned: await text('#usage-memory-assigned'), rss: await text('#usage-memory-rss'),
    };
    assert(/^[\d.]+ %$/.test(figures.cpu), `the CPU figure reads ${JSON.stringify(figures.cpu)}`);
    assert(/^[\d.]+ [KMG]iB$/.test(figures.assigned) && /^[\d.]+ [KMG]iB$/.test(figures.rss),
      `the memory figures read ${JSON.stringify(figures)}`);
    await page.waitForTimeout(300); // the latest legend values drawn
    await shot('13-usage-charts');

    await page.click('[data-nav=host]');
    await page.waitForSelector('[data-testid=host-dashboard]');
    const running = await waitUntil('the host page to count a running VM', 10, async () => {
      const v = await page.getAttribute('#host-vms-running-count', 'data-value').catch(() => null);
      return v !== null && Number(v) >= 1 ? Number(v) : null;
    });
    const rowShown = await page.evaluate((n) => [...document.querySelectorAll('#host-vm-usage tbody tr')]
      .some((r) => r.dataset.vm === n), cfg.vm);
    assert(rowShown, `the host page's usage has no row for ${cfg.vm} (${running} running)`);
    // Its row links to its usage.
    await page.evaluate((n) => [...document.querySelectorAll('#host-vm-usage tbody tr')]
      .find((r) => r.dataset.vm === n).querySelector('td.name a').click(), cfg.vm);
    await page.waitForSelector('#vm-detail [data-testid=usage-cpu-chart]');
  });

  await step("pause and resume from the VM's page", async () => {
    const shown = () => page.getAttribute('#vm-state', 'data-state');
    await page.click('#vm-detail .actions [data-action=pause]');
    await waitUntil('the VM to show paused', 30, async () => (await shown()) === 'paused');
    await page.click('#vm-detail .actions [data-action=resume]');
    await waitUntil('the VM to show running again', 30, async () => (await shown()) === 'running');
  });

  await step('stop, with confirmation (Escape and Cancel keep it running)', async () => {
    await toList();
    await waitUntil('the VM row', 10, () => rowState(cfg.vm));
    await markPage();
    await clickRowButton(cfg.vm, 'stop');
    await page.waitForSelector('#confirm-dialog[open]');
    assert(await page.evaluate(() => document.activeElement && document.activeElement.id === 'confirm-cancel'),
      'the confirmation does not focus Cancel');
    await page.keyboard.press('Escape');
    await page.waitForSelector('#confirm-dialog', { state: 'hidden' });
    await page.waitForTimeout(500);
    assert((await rowState(cfg.vm)) === 'running', 'Escape stopped the VM');
    await clickRowButton(cfg.vm, 'stop');
    await page.waitForSelector('#confirm-dialog[open]');
    const question = await page.textContent('#confirm-text');
    assert(question.includes(cfg.vm), `the confirmation does not name the VM: ${question}`);
    await shot('11-confirm-stop');
    await page.click('#confirm-ok');
    await waitUntil('the VM to show shut off', 120, async () => (await rowState(cfg.vm)) === 'shut off');
    assert(await samePage(), 'the page reloaded');
  });

  await step('a stopped VM\'s console, serial console and usage say "not running"', async () => {
    await clickRowButton(cfg.vm, 'console');
    await page.waitForSelector('#screen');
    await waitUntil('the console to say not running', 10, async () => (await text('#console-status')) === 'not running');
    await page.waitForTimeout(500);
    assert((await text('#console-status')) === 'not running', `the console says ${await text('#console-status')}`);
    await shot('12-console-not-running');
    await page.click('#tab-serial');
    await page.waitForSelector('#serial-term');
    await waitUntil('the serial console to say not running', 15, async () => (await text('#serial-status')) === 'not running');
    await page.waitForTimeout(500);
    assert((await text('#serial-status')) === 'not running', `the serial console says ${await text('#serial-status')}`);
    await page.click('#tab-usage');
    await page.waitForSelector('#usage-not-running');
    assert((await page.$$('[data-testid=usage-cpu-chart]')).length === 0, 'a stopped VM shows usage charts');
  });

  await step('delete, with confirmation; cancelling keeps it', async () => {
    await toList();
    await clickRowButton(cfg.vm, 'delete');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-cancel');
    await page.waitForTimeout(500);
    assert((await rowState(cfg.vm)) === 'shut off', 'cancel deleted the VM');
    await clickRowButton(cfg.vm, 'delete');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-ok');
    await waitUntil('the VM to leave the list', 60, async () => (await rowState(cfg.vm)) === null);
    await shot('14-deleted');
  });

  await step('no Content-Security-Policy violation on any page', async () => {
    assert(cspViolations.length === 0, `CSP violations:\n${cspViolations.join('\n')}`);
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
