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
// a stopped VM's console, serial console and usage say "not running"; its
// shared folders (virtiofs): /etc refused, a temporary folder shared read-only
// and removed; its snapshots: one taken (its progress shown, the buttons
// disabled meanwhile), listed, refused under the same name (the server's words
// shown), reverted to and deleted; autostart turned on and off on its page (the list and the API agree), its
// manifest shown and downloaded as NAME.toml, a clone refused under the VM's own name (the server's words shown),
// then made (its steps and progress shown), opened and deleted through the UI; exported (the passphrase twice, the
// browser downloads NAME.phyllome) and that bundle imported as a dry run (a wrong passphrase refused, then what
// would change and why, nothing made); delete with confirmation; installer media: upload an ISO of the test guest (built here
// with scripts/build-test-iso.sh) on the Media page, watching its progress, and
// see its SHA-256 and the OS read from it; create a VM from it leaving the OS
// to the server's detection, and see it boot through the firmware to the
// guest's shell on the serial console; the ISO cannot be deleted while that VM
// uses it, then can; no Content-Security-Policy violation on the way; log out.
// Each page is saved as a PNG. The VM and the ISO are removed however it ends.
//
// Prints one line per step and a closing "browser: N passed, M failed" line;
// exits non-zero when a step failed.

import { request } from 'playwright-core';
import { assert, finish, openBrowser, readConfig, step, waitUntil } from './harness.mjs';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const cfg = readConfig();
const dialogs = [];


const serialLog = (file = cfg.serialLog) => {
  try { return readFileSync(file, 'utf8'); } catch (e) { return ''; }
};

// The installer-media steps' ISO: the test guest behind GRUB, with a volume
// id the server reads as Debian 12. Built while the first steps run. Its file
// name has a space, which the server makes '_'.
const isoVm = cfg.isoVm || `${cfg.vm}-iso`;
const isoVmSerialLog = `/var/log/libvirt/qemu/${isoVm}-serial.log`;
const isoTmp = mkdtempSync(join(tmpdir(), 'phyllome-test-iso-'));
const isoUploadName = `phyllome-test-media ${process.pid}.iso`;
const isoName = isoUploadName.replace(/ /g, '_');
const isoPath = join(isoTmp, isoUploadName);
const isoBuilt = new Promise((resolve) => {
  const script = fileURLToPath(new URL('../../../../scripts/build-test-iso.sh', import.meta.url));
  const t = Date.now();
  execFile('bash', [script, isoPath, 'Debian 12.8.0 amd64 n'], { timeout: 120000 }, (err, stdout, stderr) => {
    resolve(err ? new Error(`build-test-iso.sh failed: ${stderr || err.message}`) : (Date.now() - t) / 1000);
  });
});
// The server's ISO folder (GET /api/v1/media says; the test guest's folder until then).
let mediaDir = cfg.isoDir || '/var/lib/phyllome/test-guest';

// However the run ended: the ISO's VM deleted (through the API, with a session
// of its own), the ISO removed from the server's folder, the built image gone.
async function cleanupMedia() {
  await isoBuilt;
  rmSync(isoTmp, { recursive: true, force: true });
  const gone = () => !existsSync(join(mediaDir, isoName));
  const api = await request.newContext({ baseURL: cfg.url });
  try {
    const login = await api.post('api/v1/login', { data: { username: cfg.user, password: cfg.password } });
    const headers = { 'X-CSRF-Token': (await login.json()).csrf };
    const vm = `api/v1/vms/${encodeURIComponent(isoVm)}`;
    if ((await api.get(vm)).ok()) {
      await api.post(`${vm}/kill`, { headers });
      const deadline = Date.now() + 60000;
      while (Date.now() < deadline && (await api.get(vm)).ok()) {
        const r = await api.delete(vm, { headers });
        if (!r.ok()) await new Promise((res) => setTimeout(res, 1000));
      }
      console.log(`  (cleanup: deleted ${isoVm}${(await api.get(vm)).ok() ? ' FAILED' : ''})`);
    }
    if (!gone()) {
      const r = await api.delete(`api/v1/media/${encodeURIComponent(isoName)}`, { headers });
      console.log(`  (cleanup: removed ${isoName} through the API: ${r.status()})`);
    }
  } finally {
    await api.dispose();
    if (!gone()) rmSync(join(mediaDir, isoName), { force: true });
    rmSync(join(mediaDir, `.${isoName}.part`), { force: true });
  }
}

// The clone step's VM: deleted through the API (a session of its own) if the run ended before the UI deleted it.
const cloneVm = `${cfg.vm}-clone`;
async function cleanupClone() {
  const api = await request.newContext({ baseURL: cfg.url });
  try {
    const vm = `api/v1/vms/${encodeURIComponent(cloneVm)}`;
    const login = await api.post('api/v1/login', { data: { username: cfg.user, password: cfg.password } });
    const headers = { 'X-CSRF-Token': (await login.json()).csrf };
    if ((await api.get(vm)).ok()) {
      await api.post(`${vm}/kill`, { headers });
      const deadline = Date.now() + 60000;
      while (Date.now() < deadline && (await api.get(vm)).ok()) {
        const r = await api.delete(vm, { headers });
        if (!r.ok()) await new Promise((res) => setTimeout(res, 1000));
      }
      console.log(`  (cleanup: deleted ${cloneVm}${(await api.get(vm)).ok() ? ' FAILED' : ''})`);
    }
  } finally {
    await api.dispose();
  }
}

const { context, page, shot, cspViolations, close } = await openBrowser(cfg);
page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
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
    assert(!(await page.$('[data-testid=console-blank-hint]')), 'a screen with the guest on it is said to be blank');
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
    // The list offers no console for it; its page's Console tab says why.
    assert(await page.evaluate((n) => {
      const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
      return tr.querySelector('[data-action="console"]').disabled;
    }, cfg.vm), "a shut-off VM's Console button is enabled in the list");
    await clickInRow(cfg.vm, 'td.name a');
    await page.waitForSelector('#vm-detail #tab-console');
    await page.click('#tab-console');
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

  await step("shared folders on the VM's page: /etc refused, a folder shared read-only, then removed", async () => {
    const sharesApi = () => page.evaluate(async (n) => (await fetch(`/api/v1/vms/${encodeURIComponent(n)}/shares`)).json(), cfg.vm);
    const rows = () => page.$$eval('[data-testid^="share-row-"]', (r) => r.map((x) => x.dataset.tag));
    const message = () => page.$eval('[data-testid=share-message]', (m) => ({ kind: m.dataset.kind, applies: m.dataset.applies, text: m.textContent.trim() }));
    const shareDir = mkdtempSync('/var/tmp/phyllome-test-share-');
    try {
      chmodSync(shareDir, 0o755);
      writeFileSync(join(shareDir, 'hello.txt'), 'from the host\n', { mode: 0o644 });
      const real = realpathSync(shareDir);
      await page.click('[data-testid=shares-tab]');
      await page.waitForSelector('#shares-empty');
      assert((await sharesApi()).length === 0, `the VM has shares already: ${JSON.stringify(await sharesApi())}`);
      assert(!(await page.isChecked('[data-testid=share-add-writable]')), '"writable" is checked by default');

      // A critical host folder: refused, the refusal shown, nothing added.
      await page.fill('[data-testid=share-add-dir]', '/etc');
      await page.click('[data-testid=share-add-submit]');
      await page.waitForSelector('[data-testid=share-message][data-kind=error]');
      const refused = await message();
      console.log(`  /etc: ${refused.text}`);
      assert(refused.text.includes('/etc') && /expose the host/.test(refused.text), `the refusal of /etc reads ${JSON.stringify(refused.text)}`);
      await page.waitForTimeout(300);
      assert((await rows()).length === 0, `a row shows after the refusal: ${await rows()}`);
      assert((await sharesApi()).length === 0, 'the refused /etc was added');

      await page.fill('[data-testid=share-add-dir]', shareDir);
      await page.fill('[data-testid=share-add-tag]', 'phyllome-data');
      await page.click('[data-testid=share-add-submit]');
      const row = '[data-testid="share-row-phyllome-data"]';
      await page.waitForSelector(row);
      await page.waitForSelector('[data-testid=share-message][data-kind=ok]');
      const added = await message();
      console.log(`  ${added.text}`);
      assert(['now', 'next boot'].includes(added.applies) && /applies (now|at the next boot)/.test(added.text),
        `after the add the message reads ${JSON.stringify(added)}`);
      const cells = await page.$eval(row, (r) => ({
        readonly: r.dataset.readonly,
        access: r.querySelector('[data-field=access]').textContent.trim(),
        dir: r.querySelector('[data-field=dir]').textContent.trim(),
        mount: r.querySelector('[data-field=mount]').textContent.trim(),
      }));
      assert(cells.readonly === 'true' && cells.access === 'read-only', `the row shows ${JSON.stringify(cells)}`);
      assert(cells.dir === real, `the row's folder is ${cells.dir}, not ${real}`);
      assert(cells.mount === 'mount -t virtiofs phyllome-data /mnt', `the row's mount command is ${JSON.stringify(cells.mount)}`);
      const listed = await sharesApi();
      assert(listed.length === 1 && listed[0].tag === 'phyllome-data' && listed[0].readonly === true,
        `the API lists ${JSON.stringify(listed)}`);
      assert((await page.inputValue('[data-testid=share-add-dir]')) === '', 'the form kept the folder after the add');
      await shot('18-shares');

      await page.click('[data-testid="share-remove-phyllome-data"]');
      await page.waitForSelector('#confirm-dialog[open]');
      assert((await text('#confirm-text')).includes('phyllome-data'), `the confirmation does not name the share: ${await text('#confirm-text')}`);
      await page.click('#confirm-ok');
      await page.waitForSelector(row, { state: 'detached', timeout: 15000 });
      await page.waitForSelector('#shares-empty');
      const removed = await message();
      assert(removed.kind === 'ok' && /applies (now|at the next boot)/.test(removed.text), `after the remove the message reads ${JSON.stringify(removed)}`);
      assert((await sharesApi()).length === 0, `the API still lists ${JSON.stringify(await sharesApi())}`);
    } finally {
      rmSync(shareDir, { recursive: true, force: true });
    }
  });

  await step("snapshots on the VM's page: take one (its progress shown), see it listed, a second of that name refused, revert, delete", async () => {
    const snap = 'ui-snap';
    const row = `[data-testid="snapshot-row-${snap}"]`;
    const snapshotsApi = () => page.evaluate(async (n) => (await fetch(`/api/v1/vms/${encodeURIComponent(n)}/snapshots`)).json(), cfg.vm);
    const message = () => page.$eval('[data-testid=snapshot-message]', (m) => ({ kind: m.dataset.kind, op: m.dataset.op, text: m.textContent.trim() }));
    // The number of the message shown last (each new one has a higher one).
    const lastSeq = () => page.$eval('[data-testid=snapshot-message]', (m) => Number(m.dataset.seq || 0));
    // The message an operation started after message AFTER ends with (ok or error), once its progress is gone.
    const outcome = async (after) => {
      await page.waitForFunction((n) => {
        const m = document.querySelector('[data-testid=snapshot-message]');
        return m && Number(m.dataset.seq || 0) > n && !document.querySelector('#snapshot-progress');
      }, after, { timeout: 120000 });
      return message();
    };
    await page.click('[data-testid=snapshots-tab]');
    await page.waitForSelector('#snapshots-empty');
    assert((await snapshotsApi()).length === 0, `the VM has snapshots already: ${JSON.stringify(await snapshotsApi())}`);
    assert((await page.getAttribute('#vm-state', 'data-state')) === 'shut off', 'the VM is not shut off');
    assert(await page.isDisabled('[data-testid=snapshot-memory]'), '"with memory" is enabled while the VM is shut off');

    // What the progress showed while the snapshot was taken, and whether the buttons were disabled meanwhile.
    await page.evaluate(() => {
      const seen = { shown: false, steps: [], bytes: false, enabledWhileBusy: false };
      window.__phyllome_snapshot = seen;
      const look = () => {
        const p = document.querySelector('#snapshot-progress');
        if (!p) return;
        seen.shown = true;
        if (p.dataset.step && seen.steps[seen.steps.length - 1] !== p.dataset.step) seen.steps.push(p.dataset.step);
        if (p.dataset.total) seen.bytes = true;
        if ([...document.querySelectorAll('#snapshots button')].some((b) => !b.disabled)) seen.enabledWhileBusy = true;
      };
      new MutationObserver(look).observe(document.body, { subtree: true, childList: true, attributes: true });
    });
    await page.fill('[data-testid=snapshot-name]', snap);
    await page.fill('[data-testid=snapshot-description]', 'made by the browser test');
    const sent = page.waitForRequest((r) => r.url().endsWith('/snapshots') && r.method() === 'POST');
    let before = await lastSeq();
    await page.click('[data-testid=snapshot-submit]');
    const request = await sent;
    const body = JSON.parse(request.postData() || '{}');
    assert(body.name === snap && body.description === 'made by the browser test' && !('memory' in body),
      `the create request: ${JSON.stringify(body)}`);
    assert((request.headers().accept || '').includes('text/event-stream'), 'the create did not ask for progress events');
    const made = await outcome(before);
    assert(made.kind === 'ok' && made.op === 'create', `the snapshot failed: ${made.text}`);
    console.log(`  ${made.text}`);
    const seen = await page.evaluate(() => window.__phyllome_snapshot);
    console.log(`  progress: steps ${seen.steps.join(' ') || '(none rendered)'}${seen.bytes ? ', with a byte count' : ''}`);
    assert(seen.shown, 'no progress showed while the snapshot was taken');
    assert(!seen.enabledWhileBusy, 'a button was enabled while the snapshot was taken');

    await page.waitForSelector(row);
    const cells = await page.$eval(row, (r) => {
      const f = (k) => r.querySelector(`[data-field=${k}]`).textContent.trim();
      return {
        current: r.dataset.current, state: r.querySelector('[data-field=state] .state').textContent.trim(), memory: f('memory'),
        size: f('size'), parent: f('parent'), mark: f('current'), description: f('description'),
        created: r.querySelector('[data-field=created] time').getAttribute('datetime'),
      };
    });
    const listed = await snapshotsApi();
    assert(listed.length === 1 && listed[0].name === snap && listed[0].current && !listed[0].memory,
      `the API lists ${JSON.stringify(listed)}`);
    assert(cells.state === 'shut off' && cells.memory === 'no' && cells.current === 'true' && cells.mark === 'current',
      `the row shows ${JSON.stringify(cells)}`);
    assert(/^[\d.]+ (B|KiB|MiB|GiB)$/.test(cells.size), `the size shows as ${JSON.stringify(cells.size)}`);
    assert(cells.parent === '—' && cells.description === 'made by the browser test', `the row shows ${JSON.stringify(cells)}`);
    assert(cells.created === new Date(listed[0].created * 1000).toISOString(), `the row's date is ${cells.created}, the API's ${listed[0].created}`);
    assert((await page.inputValue('[data-testid=snapshot-name]')) === '', 'the form kept the name after the snapshot');
    await shot('19-snapshots');

    // The same name again: refused, the server's words shown as they are, nothing added.
    await page.fill('[data-testid=snapshot-name]', snap);
    before = await lastSeq();
    await page.click('[data-testid=snapshot-submit]');
    const refused = await outcome(before);
    console.log(`  again: ${refused.text}`);
    assert(refused.kind === 'error' && refused.text.includes(`already has a snapshot "${snap}"`), `the refusal reads ${JSON.stringify(refused)}`);
    assert((await snapshotsApi()).length === 1, 'a second snapshot was added');
    await page.fill('[data-testid=snapshot-name]', '');

    // Revert: the question says what is lost; Cancel keeps the VM; then revert, not starting it.
    await page.click(`[data-testid="snapshot-revert-${snap}"]`);
    await page.waitForSelector('#snapshot-revert-dialog[open]');
    const question = await text('#snapshot-revert-text');
    assert(question.includes(snap) && question.includes('lost'), `the revert question reads ${JSON.stringify(question)}`);
    assert(!(await page.$('[data-testid=snapshot-revert-force]')), 'a shut-off VM is offered to be powered off');
    assert(await page.$('[data-testid=snapshot-revert-start]'), 'no "start afterwards" for a snapshot without memory');
    await shot('20-snapshot-revert');
    await page.click('#snapshot-revert-cancel');
    await page.waitForSelector('#snapshot-revert-dialog', { state: 'detached' });
    await page.click(`[data-testid="snapshot-revert-${snap}"]`);
    await page.waitForSelector('#snapshot-revert-dialog[open]');
    await page.setChecked('[data-testid=snapshot-revert-start]', false);
    const revertSent = page.waitForRequest((r) => r.url().endsWith(`/snapshots/${snap}/revert`) && r.method() === 'POST');
    before = await lastSeq();
    await page.click('[data-testid=snapshot-revert-ok]');
    const revertBody = JSON.parse((await revertSent).postData() || '{}');
    assert(!revertBody.force && !revertBody.start, `the revert request: ${JSON.stringify(revertBody)}`);
    const reverted = await outcome(before);
    console.log(`  ${reverted.text}`);
    assert(reverted.kind === 'ok' && reverted.op === 'revert' && reverted.text.includes('shut off'), `after the revert the message reads ${JSON.stringify(reverted)}`);
    assert((await page.getAttribute('#vm-state', 'data-state')) === 'shut off', 'the revert started the VM');

    await page.click(`[data-testid="snapshot-delete-${snap}"]`);
    await page.waitForSelector('#confirm-dialog[open]');
    assert((await text('#confirm-text')).includes(snap), `the confirmation does not name the snapshot: ${await text('#confirm-text')}`);
    before = await lastSeq();
    await page.click('#confirm-ok');
    const deleted = await outcome(before);
    assert(deleted.kind === 'ok' && deleted.op === 'delete', `the delete failed: ${deleted.text}`);
    await page.waitForSelector(row, { state: 'detached', timeout: 15000 });
    await page.waitForSelector('#snapshots-empty');
    assert((await snapshotsApi()).length === 0, `the API still lists ${JSON.stringify(await snapshotsApi())}`);
  });

  await step("autostart on the VM's page: turned on (the API and the list agree), then off", async () => {
    const vmApi = (n) => page.evaluate(async (x) => {
      const r = await fetch(`/api/v1/vms/${encodeURIComponent(x)}`);
      return r.ok ? r.json() : null;
    }, n);
    const listRow = async (n) => (await page.evaluate(async () => (await fetch('/api/v1/vms')).json())).find((v) => v.name === n);
    const toggle = '[data-testid=vm-autostart]';
    await page.click('[data-testid=overview-tab]');
    await page.waitForSelector('#overview');
    await page.waitForSelector(toggle);
    assert((await vmApi(cfg.vm)).autostart === false, 'autostart is on before the test turned it on');
    assert(!(await page.isChecked(toggle)), 'the autostart switch shows on while the API says off');
    const label = await text('#vm-autostart-label');
    assert(label.includes('Start when the host boots'), `the switch reads ${JSON.stringify(label)}`);

    const sent = page.waitForRequest((r) => r.url().endsWith('/autostart') && r.method() === 'PUT');
    await page.click(toggle);
    const on = await sent;
    assert(JSON.stringify(JSON.parse(on.postData() || '{}')) === '{"on":true}', `the request: ${on.postData()}`);
    assert(on.headers()['x-csrf-token'], 'the autostart request has no CSRF token');
    await waitUntil('the API to say autostart is on', 15, async () => (await vmApi(cfg.vm)).autostart === true);
    await page.waitForSelector(`${toggle}:checked:not([disabled])`);
    await waitUntil('the overview to say it starts with the host', 15, async () => (await text('#ov-autostart')).startsWith('yes'));
    assert((await listRow(cfg.vm)).autostart === true, 'the list API does not say autostart');

    // The list: an "autostart" badge, and the snapshot count (the snapshots step deleted its one).
    await toList();
    const cells = () => page.evaluate((n) => {
      const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
      if (!tr) return null;
      const badge = tr.querySelector('[data-field=autostart]');
      return { autostart: badge ? badge.textContent.trim() : null, snapshots: tr.querySelector('[data-field=snapshots]').dataset.count };
    }, cfg.vm);
    const row = await waitUntil('the list to show the autostart badge', 15, async () => {
      const c = await cells();
      return c && c.autostart === 'autostart' ? c : null;
    });
    const snaps = (await listRow(cfg.vm)).snapshots;
    assert(row.snapshots === String(snaps), `the list shows ${row.snapshots} snapshots, the API ${snaps}`);
    await shot('23-vm-list-autostart');
    await clickInRow(cfg.vm, 'td.name a');
    await page.waitForSelector('#vm-detail #overview');
    await page.waitForSelector(`${toggle}:checked`);

    await page.click(toggle);
    await waitUntil('the API to say autostart is off', 15, async () => (await vmApi(cfg.vm)).autostart === false);
    await page.waitForSelector(`${toggle}:not(:checked):not([disabled])`);
    await waitUntil('the overview to say it does not start with the host', 15, async () => (await text('#ov-autostart')) === 'no');
    assert((await text('#vm-error')) === '', `an error shows: ${await text('#vm-error')}`);
  });

  await step("the VM's manifest: its TOML (version 1) with its notes, downloaded as NAME.toml", async () => {
    const want = await page.evaluate(async (n) => (await fetch(`/api/v1/vms/${encodeURIComponent(n)}/manifest`)).json(), cfg.vm);
    await page.click('[data-testid=manifest-tab]');
    await page.waitForSelector('[data-testid=manifest-toml]');
    const shown = await page.textContent('[data-testid=manifest-toml]');
    assert(/^version = 1\b/m.test(shown), `the manifest shows no "version = 1":\n${shown}`);
    assert(shown === want.toml, `the page shows another manifest than the API's:\n${shown}\n---\n${want.toml}`);
    assert(shown.includes(`name = "${cfg.vm}"`), `the manifest does not name the VM:\n${shown}`);
    assert(/^autostart = false\b/m.test(shown) || !/^autostart/m.test(shown), `the manifest has autostart on:\n${shown}`);
    const notes = await page.$$eval('[data-testid=manifest-notes] li', (l) => l.map((x) => x.textContent.trim()));
    assert(notes.length === want.notes.length, `${notes.length} notes shown, the API has ${want.notes.length}: ${JSON.stringify(want.notes)}`);
    if (notes.length) console.log(`  notes: ${notes.join(' | ')}`);
    await page.waitForSelector('[data-testid=manifest-download][href^="blob:"]');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=manifest-download]')]);
    assert(download.suggestedFilename() === `${cfg.vm}.toml`, `the download is named ${download.suggestedFilename()}`);
    const failure = await download.failure();
    assert(!failure, `the download failed: ${failure}`);
    const saved = readFileSync(await download.path(), 'utf8');
    assert(saved === want.toml, `the downloaded file is not the manifest:\n${saved}`);
    await shot('22-manifest');
  });

  await step('clone the shut-off VM: its own name refused (the server\'s words), then a clone made, opened and deleted', async () => {
    const vmApi = (n) => page.evaluate(async (x) => {
      const r = await fetch(`/api/v1/vms/${encodeURIComponent(x)}`);
      return r.ok ? r.json() : null;
    }, n);
    const source = await vmApi(cfg.vm);
    assert(source && source.state === 'shut off', `the VM is ${source && source.state}`);
    assert(!(await vmApi(cloneVm)), `${cloneVm} exists already`);
    await page.click('[data-testid=overview-tab]');
    await page.waitForSelector('#overview');
    await page.waitForSelector('[data-testid=vm-clone]:not([disabled])');
    await page.click('[data-testid=vm-clone]');
    await page.waitForSelector('#clone-dialog[open]');
    assert((await page.inputValue('[data-testid=clone-name]')) === cloneVm, `the name offered is ${await page.inputValue('[data-testid=clone-name]')}`);
    assert(!(await page.isChecked('[data-testid=clone-keep-tpm]')), '"Keep the TPM state" is checked by default');
    const tpmNote = await text('#clone-tpm-note');
    assert(/fresh TPM/.test(tpmNote) && tpmNote.includes('BitLocker'), `the TPM note reads ${JSON.stringify(tpmNote)}`);
    await shot('21-clone-dialog');

    // Its own name: refused, the server's words shown as they are, nothing made.
    let clonePosts = 0;
    const countPosts = (r) => { if (r.url().endsWith('/clone') && r.method() === 'POST') clonePosts += 1; };
    page.on('request', countPosts);
    await page.fill('[data-testid=clone-name]', cfg.vm);
    await page.click('[data-testid=clone-submit]');
    const refusal = await waitUntil('the refusal', 60, async () => (await text('[data-testid=clone-error]')) || null);
    console.log(`  own name: ${refusal}`);
    assert(refusal.includes(`a VM named "${cfg.vm}" already exists`), `the refusal reads ${JSON.stringify(refusal)}`);
    await page.waitForSelector('#clone-back, [data-testid=clone-name]');
    if (await page.$('#clone-back')) await page.click('#clone-back');
    await page.waitForSelector('[data-testid=clone-name]');
    assert((await page.inputValue('[data-testid=clone-name]')) === cfg.vm, 'the form lost the name typed');
    page.off('request', countPosts);
    assert(clonePosts === 1, `${clonePosts} clone requests for one click (going back sent it again?)`);

    // What the progress showed while the clone ran.
    await page.evaluate(() => {
      const seen = { steps: [], bytes: false, bar: false };
      window.__phyllome_clone = seen;
      const look = () => {
        const p = document.querySelector('#clone-progress');
        if (!p) return;
        const steps = [...p.querySelectorAll('li[data-step]')].map((li) => li.dataset.step).filter((x) => x !== 'note');
        if (steps.length > seen.steps.length) seen.steps = steps;
        if (p.dataset.total) seen.bytes = true;
        if (p.querySelector('progress')) seen.bar = true;
      };
      new MutationObserver(look).observe(document.body, { subtree: true, childList: true, attributes: true });
    });
    await page.fill('[data-testid=clone-name]', cloneVm);
    const sent = page.waitForRequest((r) => r.url().endsWith('/clone') && r.method() === 'POST');
    await page.click('[data-testid=clone-submit]');
    const request = await sent;
    assert(JSON.stringify(JSON.parse(request.postData() || '{}')) === JSON.stringify({ name: cloneVm }), `the clone request: ${request.postData()}`);
    assert((request.headers().accept || '').includes('text/event-stream'), 'the clone did not ask for progress events');
    const error = await waitUntil('the result of the clone', 300, () => page.evaluate(() => {
      if (document.querySelector('#clone-result')) return 'none';
      const e = document.querySelector('#clone-error');
      return e && e.textContent ? e.textContent : null;
    }));
    assert(error === 'none', `the clone failed: ${error}`);
    const seen = await page.evaluate(() => window.__phyllome_clone);
    console.log(`  progress: steps ${seen.steps.join(' ')}${seen.bytes ? ', with a byte count' : ''}`);
    for (const st of ['claim', 'disk', 'define', 'finish']) assert(seen.steps.includes(st), `no "${st}" step: ${seen.steps}`);
    assert(seen.bar, 'no progress bar showed while the clone ran');
    const said = await text('#clone-result');
    console.log(`  ${said}`);
    assert(said.includes(cloneVm) && said.includes('fresh TPM'), `the result reads ${JSON.stringify(said)}`);
    await shot('21-clone');

    const made = await vmApi(cloneVm);
    assert(made && made.state === 'shut off' && made.uuid !== source.uuid, `the API has the clone as ${JSON.stringify(made)}`);
    const listed = await page.evaluate(async () => (await fetch('/api/v1/vms')).json());
    assert(listed.some((v) => v.name === cloneVm), `the list API lacks ${cloneVm}`);
    assert((await vmApi(cfg.vm)).state === 'shut off', 'the source is not shut off after the clone');

    await page.click('[data-testid=clone-open]');
    await page.waitForSelector('#clone-dialog', { state: 'detached' });
    await page.waitForFunction((n) => (document.querySelector('#vm-name') || {}).textContent === n, cloneVm);
    await waitUntil("the clone's page to show it shut off", 30, async () => (await page.getAttribute('#vm-state', 'data-state')) === 'shut off');
    await page.waitForSelector('#vm-detail .actions [data-action=delete]:not([disabled])');
    await page.click('#vm-detail .actions [data-action=delete]');
    await page.waitForSelector('#confirm-dialog[open]');
    assert((await text('#confirm-text')).includes(cloneVm), `the confirmation does not name the clone: ${await text('#confirm-text')}`);
    await page.click('#confirm-ok');
    await page.waitForSelector('#vm-table');
    await waitUntil('the clone to be gone (API)', 60, async () => !(await vmApi(cloneVm)));
    await waitUntil('the clone to leave the list', 30, async () => (await rowState(cloneVm)) === null);
    assert((await rowState(cfg.vm)) === 'shut off', 'the source VM is not listed shut off');
    assert((await text('#vm-error')) === '', `an error shows: ${await text('#vm-error')}`);
    // The source's page again, for the steps after.
    await clickInRow(cfg.vm, 'td.name a');
    await page.waitForSelector('#vm-detail #overview');
  });

  // Export then import (a dry run) through the dialogs: the bundle the browser downloads is the one it uploads.
  const bundlePass = 'browser passphrase é 100%';
  let bundlePath = null;
  await step('export the shut-off VM: the passphrase twice (empty and mismatched refused), then the browser downloads NAME.phyllome', async () => {
    await page.click('[data-testid=overview-tab]');
    await page.waitForSelector('#overview');
    await page.waitForSelector('[data-testid=vm-export]:not([disabled])');
    await page.click('[data-testid=vm-export]');
    await page.waitForSelector('#export-dialog[open]');
    const intro = await text('#export-intro');
    assert(intro.includes('shut off') && intro.includes(`${cfg.vm}.phyllome`), `the export dialog says ${JSON.stringify(intro)}`);
    assert((await text('#export-passphrase-note')).includes('opens the bundle'), 'the dialog does not say what the passphrase is for');
    let posts = 0;
    const countPosts = (r) => { if (r.url().endsWith('/export') && r.method() === 'POST') posts += 1; };
    page.on('request', countPosts);
    await page.click('[data-testid=export-submit]');
    assert((await text('[data-testid=export-error]')).includes('Type a passphrase'), `empty: ${await text('[data-testid=export-error]')}`);
    await page.fill('[data-testid=export-passphrase]', bundlePass);
    await page.fill('[data-testid=export-passphrase-again]', `${bundlePass}x`);
    await page.click('[data-testid=export-submit]');
    assert((await text('[data-testid=export-error]')).includes('differ'), `mismatched: ${await text('[data-testid=export-error]')}`);
    assert(posts === 0, `${posts} export requests for a form the page refused`);
    await page.fill('[data-testid=export-passphrase-again]', bundlePass);
    await shot('24-export');
    const sent = page.waitForRequest((r) => r.url().endsWith('/export') && r.method() === 'POST');
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 180000 }), page.click('[data-testid=export-submit]')]);
    const request = await sent;
    page.off('request', countPosts);
    assert(JSON.parse(request.postData() || '{}').passphrase === bundlePass && request.headers()['x-csrf-token'],
      'the ticket request lacks the passphrase or the CSRF token');
    await page.waitForSelector('[data-testid=export-started]');
    assert(download.suggestedFilename() === `${cfg.vm}.phyllome`, `the download is named ${download.suggestedFilename()}`);
    assert(new URL(download.url()).pathname.startsWith('/api/v1/exports/'), `the download came from ${download.url()}`);
    const failure = await download.failure();
    assert(!failure, `the download failed: ${failure}`);
    bundlePath = await download.path();
    const data = readFileSync(bundlePath);
    // The tar's entries, from their 512-byte headers.
    const names = [];
    for (let at = 0; at + 512 <= data.length && data[at] !== 0;) {
      const field = (from, len) => data.subarray(at + from, at + from + len).toString('latin1').replace(/\0.*$/s, '');
      names.push(field(0, 100));
      at += 512 + Math.ceil(parseInt(field(124, 12).trim(), 8) / 512) * 512;
    }
    console.log(`  ${download.suggestedFilename()}: ${(data.length / 1048576).toFixed(1)} MiB, ${names.join(' ')}`);
    assert(names.slice(0, 3).join(' ') === 'bundle.json manifest.toml disk.qcow2' && names[names.length - 1] === 'keys.age',
      `the bundle holds ${names.join(' ')}`);
    assert(!data.includes(Buffer.from(bundlePass)), 'the bundle holds its passphrase');
    await shot('25-export-started');
    await page.click('#export-close');
    await page.waitForSelector('#export-dialog', { state: 'detached' });
    await waitUntil('the VM to show shut off after the export', 30, async () => (await page.getAttribute('#vm-state', 'data-state')) === 'shut off');
  });

  await step('import the bundle as a dry run: uploaded with progress, a wrong passphrase refused, then what would change and why; nothing made', async () => {
    assert(bundlePath, 'no bundle from the export step');
    const importName = `${cfg.vm}-imp`;
    const size = statSync(bundlePath).size;
    const vmApiStatus = async (n) => page.evaluate(async (x) => (await fetch(`/api/v1/vms/${encodeURIComponent(x)}`)).status, n);
    await toList();
    await page.click('[data-testid=import-vm]');
    await page.waitForSelector('#import-dialog[open]');
    await page.setInputFiles('[data-testid=import-file]', bundlePath);
    await page.fill('[data-testid=import-passphrase]', 'not the passphrase');
    await page.fill('[data-testid=import-name]', importName);
    await page.setChecked('[data-testid=import-dry-run]', true);
    await page.evaluate(() => {
      const seen = { phases: [] };
      window.__phyllome_import = seen;
      new MutationObserver(() => {
        const p = document.querySelector('[data-testid=import-progress]');
        if (p && seen.phases[seen.phases.length - 1] !== p.dataset.phase) seen.phases.push(p.dataset.phase);
      }).observe(document.body, { subtree: true, childList: true, attributes: true });
    });
    let sent = page.waitForRequest((r) => r.url().includes('/api/v1/import?') && r.method() === 'POST');
    await page.click('[data-testid=import-submit]');
    let request = await sent;
    const q = new URL(request.url()).searchParams;
    assert(q.get('name') === importName && q.get('dry_run') === 'true', `the import request: ${request.url()}`);
    assert(request.headers()['x-phyllome-passphrase'] === encodeURIComponent('not the passphrase'), 'the passphrase header is not the percent-encoded passphrase');
    const refusal = await waitUntil('the refusal', 120, async () => (await text('[data-testid=import-error]')) || null);
    console.log(`  wrong passphrase: ${refusal}`);
    assert(refusal.includes('passphrase does not open'), `the refusal reads ${JSON.stringify(refusal)}`);
    await page.click('#import-back');
    assert(await page.isChecked('[data-testid=import-dry-run]'), 'the form forgot "dry run"');
    await page.fill('[data-testid=import-passphrase]', bundlePass);
    sent = page.waitForRequest((r) => r.url().includes('/api/v1/import?') && r.method() === 'POST');
    await page.evaluate(() => { window.__phyllome_import.phases = []; });
    await page.click('[data-testid=import-submit]');
    request = await sent;
    assert(request.headers()['x-phyllome-passphrase'] === encodeURIComponent(bundlePass), 'the passphrase header is not the percent-encoded passphrase');
    await page.waitForSelector('[data-testid=import-result]', { timeout: 120000 });
    // What the server answers for the same dry run (the inspector does not keep the dialog's answer: its request was 20 MiB).
    const csrf = await page.evaluate(async () => (await (await fetch('/api/v1/session')).json()).csrf);
    const again = await page.request.post(request.url(), {
      headers: { 'X-CSRF-Token': csrf, 'X-Phyllome-Passphrase': encodeURIComponent(bundlePass), 'Content-Type': 'application/octet-stream' },
      data: readFileSync(bundlePath),
    });
    assert(again.status() === 200, `the same dry run through the API answered ${again.status()}: ${await again.text()}`);
    const want = await again.json();
    const seen = await page.evaluate(() => window.__phyllome_import);
    console.log(`  upload of ${(size / 1048576).toFixed(1)} MiB: phases ${seen.phases.join(' -> ')}`);
    assert(seen.phases[0] === 'uploading' && seen.phases[seen.phases.length - 1] === 'done', `the progress showed ${seen.phases}`);
    const bar = await page.$eval('[data-testid=import-progress] progress', (b) => ({ value: b.value, max: b.max }));
    assert(bar.max === size && bar.value === size, `the progress bar ends at ${bar.value} of ${bar.max} (the bundle has ${size} bytes)`);
    assert((await page.getAttribute('[data-testid=import-result]', 'data-dry-run')) === 'true', 'the result is not a dry run');
    const summary = await text('#import-summary');
    assert(summary.includes(importName) && summary.includes('Nothing was made'), `the summary reads ${JSON.stringify(summary)}`);
    const rows = await page.$$eval('[data-testid=import-changes] tbody tr', (trs) => trs.map((tr) => ({
      item: tr.dataset.item, why: tr.querySelector('td.why').textContent.trim(),
    })));
    assert(rows.length === want.changes.length, `${rows.length} changes shown, the server answered ${want.changes.length}`);
    rows.forEach((r, i) => assert(r.item === want.changes[i].item && r.why === want.changes[i].why, `change ${i}: ${JSON.stringify(r)}`));
    if (!rows.length) assert(await page.$('[data-testid=import-no-changes]'), 'no changes, and the dialog does not say so');
    console.log(`  changes: ${rows.map((r) => r.item).join(', ') || 'none'}; warnings: ${want.warnings.length}`);
    assert((await page.$$('[data-testid=import-warnings] li')).length === want.warnings.length, 'the warnings shown differ from the answer');
    await shot('26-import-dry-run');
    assert((await vmApiStatus(importName)) === 404, `a dry run made ${importName}`);
    await page.click('#import-close');
    await page.waitForSelector('#import-dialog', { state: 'detached' });
    assert((await rowState(importName)) === null, `${importName} is listed`);
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

  await step('an upload cancelled on the Media page keeps nothing', async () => {
    const built = await isoBuilt;
    if (built instanceof Error) throw built;
    console.log(`  ${isoUploadName}: ${(statSync(isoPath).size / 1048576).toFixed(1)} MiB, built in ${built.toFixed(1)} s`);
    await page.click('[data-nav=media]');
    await page.waitForSelector('#media-table, #media-empty');
    mediaDir = (await (await page.request.get(`${cfg.url}api/v1/media`)).json()).dir;
    assert(!existsSync(join(mediaDir, isoName)), `${isoName} is in ${mediaDir} already`);
    // Slow enough to cancel half-way (loopback is too fast).
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 8 << 20 });
    try {
      await page.setInputFiles('[data-testid=media-upload-input]', isoPath);
      await page.waitForFunction(() => Number(document.querySelector('[data-testid=media-upload-progress]')?.dataset.loaded) > 2e6);
      const status = await text('#media-upload-status');
      assert(/^\d+(\.\d)? % · [\d.]+ [KM]iB of [\d.]+ MiB/.test(status), `the progress reads ${JSON.stringify(status)}`);
      await page.click('[data-testid=media-upload-cancel]');
      await page.waitForSelector('[data-testid=media-upload-progress][data-phase=cancelled]');
    } finally {
      await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
      await cdp.detach();
    }
    await waitUntil('the server to remove the partial upload', 15, () => !existsSync(join(mediaDir, `.${isoName}.part`)));
    assert(!existsSync(join(mediaDir, isoName)), `the cancelled upload left ${isoName}`);
    assert(!(await page.$(`[data-testid="media-row-${isoName}"]`)), 'the cancelled upload shows in the list');
  });

  await step('upload an ISO on the Media page: its progress, then its SHA-256 and the OS read from it', async () => {
    const want = createHash('sha256').update(readFileSync(isoPath)).digest('hex');
    const size = statSync(isoPath).size;
    await page.click('#media-upload-dismiss');
    // The phases the progress showed, and the most bytes it counted.
    await page.evaluate(() => {
      const seen = { phases: [], loaded: 0 };
      window.__phyllome_upload = seen;
      const look = () => {
        const p = document.querySelector('[data-testid=media-upload-progress]');
        if (!p) return;
        if (seen.phases[seen.phases.length - 1] !== p.dataset.phase) seen.phases.push(p.dataset.phase);
        seen.loaded = Math.max(seen.loaded, Number(p.dataset.loaded || 0));
      };
      new MutationObserver(look).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    });
    const t = Date.now();
    await page.setInputFiles('[data-testid=media-upload-input]', isoPath);
    const phase = await waitUntil('the upload to finish', 120, () => page.evaluate(() => {
      const p = document.querySelector('[data-testid=media-upload-progress]');
      return p && ['done', 'failed', 'cancelled'].includes(p.dataset.phase) ? p.dataset.phase : null;
    }));
    if (phase !== 'done') {
      throw new Error(`the upload ended ${phase}: ${await text('#media-upload-error').catch(() => '')}`);
    }
    const seen = await page.evaluate(() => window.__phyllome_upload);
    console.log(`  upload: ${((Date.now() - t) / 1000).toFixed(1)} s, phases ${seen.phases.join(' -> ')}`);
    assert(seen.phases[0] === 'uploading', `the progress did not show the upload under way: ${seen.phases}`);
    const bar = await page.$eval('[data-testid=media-upload-progress] progress', (b) => ({ value: b.value, max: b.max }));
    assert(bar.max === size && bar.value === size, `the finished progress bar is at ${bar.value} of ${bar.max} (the file has ${size} bytes)`);
    assert((await text('#media-upload-status')).includes('uploaded'), `the progress says ${await text('#media-upload-status')}`);
    const sha = await text('[data-testid=media-sha256]');
    assert(sha === want, `the page shows SHA-256 ${sha}, the file's is ${want}`);
    const result = await text('[data-testid=media-upload-result]');
    assert(result.includes(`as ${isoName} (the name made safe`), `the result does not say the file is kept as ${isoName}: ${result}`);
    assert((await text('#media-upload-os')).startsWith('Debian 12'), `the uploaded ISO's OS shows as ${await text('#media-upload-os')}`);
    const row = `[data-testid="media-row-${isoName}"]`;
    await page.waitForSelector(row);
    const cells = await page.$eval(row, (r) => ({
      os: r.querySelector('[data-field=os]').textContent.trim(), boot: r.querySelector('[data-field=boot]').textContent.trim(),
    }));
    assert(cells.os.startsWith('Debian 12'), `the list's row shows the OS as ${JSON.stringify(cells.os)}`);
    assert(cells.boot === 'BIOS and UEFI', `the list's row shows it booting ${JSON.stringify(cells.boot)}`);
    assert(statSync(join(mediaDir, isoName)).size === size, `${mediaDir}/${isoName} is not the file uploaded`);
    await shot('15-media-upload');
  });

  await step('create a VM from the ISO in the dialog: its OS detected, left to the server', async () => {
    await toList();
    await page.click('#new-vm');
    await page.waitForSelector('#create-dialog[open]');
    await page.waitForFunction(() => document.querySelector('select[name=os]').options.length > 1);
    await page.waitForFunction((n) => [...document.querySelector('select[name=iso]').options].some((o) => o.value === n), isoName);
    await page.fill('input[name=name]', isoVm);
    await page.selectOption('select[name=iso]', isoName);
    assert((await page.inputValue('select[name=os]')) === 'linux', `picking the ISO chose OS ${await page.inputValue('select[name=os]')}`);
    const detected = await text('[data-testid=os-detected]');
    assert(detected.includes('detected: Debian 12'), `next to the OS: ${JSON.stringify(detected)}`);
    // Left to the server: no os in the request.
    await page.selectOption('select[name=os]', '');
    await page.fill('input[name=memory]', '512M');
    await page.fill('input[name=cpus]', '1');
    await page.fill('input[name=disk_size]', '4G');
    await page.selectOption('select[name=network]', 'none');
    assert((await page.inputValue('select[name=kernel]')) === '', 'a kernel is picked');
    await shot('17-create-from-iso');
    const sent = page.waitForRequest((r) => r.url().endsWith('/api/v1/vms') && r.method() === 'POST');
    await page.click('#create-submit');
    const body = JSON.parse((await sent).postData() || '{}');
    assert(!('os' in body) && body.iso === isoName, `the create request: ${JSON.stringify(body)}`);
    const error = await waitUntil('the result of the create', 120, () => page.evaluate(() => {
      if (document.querySelector('#create-result')) return 'none';
      const e = document.querySelector('#create-error');
      return e && e.textContent ? e.textContent : null;
    }));
    assert(error === 'none', `the create failed: ${error}`);
    const said = await page.$eval('#create-detected', (e) => e.textContent.trim()).catch(() => '');
    console.log(`  ${said}`);
    assert(said.includes('linux'), `the result does not say the OS was detected: ${JSON.stringify(said)}`);
    await page.click('#create-open');
    await page.waitForSelector('#vm-detail #vm-name');
    assert((await text('#vm-name')) === isoVm, `the dialog opened ${await text('#vm-name')}`);
  });

  await step('the VM boots the ISO through its firmware to the guest\'s shell (serial console)', async () => {
    const t = Date.now();
    await page.click('#tab-serial');
    await page.waitForSelector('#serial-term .xterm');
    await waitUntil('the serial console to connect', 60, async () => (await text('#serial-status')) === 'connected');
    const screen = () => page.evaluate(() => {
      const rows = document.querySelector('#serial-term .xterm-rows');
      return rows ? [...rows.children].map((r) => r.textContent).join('\n') : '';
    });
    await waitUntil('PHYLLOME-READY from the guest', 240, async () => (await screen()).includes('PHYLLOME-READY')
      || serialLog(isoVmSerialLog).includes('PHYLLOME-READY'));
    console.log(`  PHYLLOME-READY ${((Date.now() - t) / 1000).toFixed(0)} s after the serial console opened`);
    await page.click('#serial-term');
    await page.keyboard.press('Enter');
    await waitUntil('a shell prompt', 20, async () => /[#$] *$/m.test(await screen()));
    await page.keyboard.type('echo booted-from-$((2*21))-iso');
    await page.keyboard.press('Enter');
    await waitUntil('the shell to answer', 20, async () => (await screen()).includes('booted-from-42-iso'));
    await shot('16-iso-vm-console');
  });

  await step('the ISO cannot be deleted while the VM uses it; once the VM is gone, it can', async () => {
    const row = `[data-testid="media-row-${isoName}"]`;
    await page.click('[data-nav=media]');
    await page.waitForSelector(row);
    await page.click(`[data-testid="media-delete-${isoName}"]`);
    await page.waitForSelector('#confirm-dialog[open]');
    assert((await text('#confirm-text')).includes(isoName), `the confirmation does not name the ISO: ${await text('#confirm-text')}`);
    await page.click('#confirm-ok');
    const refusal = await waitUntil('the refusal', 15, async () => (await text('[data-testid=media-error]')) || null);
    assert(refusal.includes(isoVm), `the refusal does not name the VM: ${refusal}`);
    assert(await page.$(row), 'the ISO left the list');
    assert(existsSync(join(mediaDir, isoName)), 'the ISO was deleted while a VM uses it');

    await toList();
    await waitUntil('the VM row', 10, () => rowState(isoVm));
    await clickRowButton(isoVm, 'kill');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-ok');
    await waitUntil('the VM to show shut off', 60, async () => (await rowState(isoVm)) === 'shut off');
    // The row's buttons stay disabled until the kill request answers (it may after the list shows the VM off).
    await waitUntil('the kill to answer (Delete enabled)', 60, () => page.evaluate((n) => {
      const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
      const b = tr && tr.querySelector('[data-action="delete"]');
      return !!b && !b.disabled;
    }, isoVm));
    await clickRowButton(isoVm, 'delete');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-ok');
    await waitUntil('the VM to leave the list', 60, async () => (await rowState(isoVm)) === null);

    await page.click('[data-nav=media]');
    await page.waitForSelector(row);
    // Cancel keeps it.
    await page.click(`[data-testid="media-delete-${isoName}"]`);
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-cancel');
    await page.waitForTimeout(300);
    assert(await page.$(row), 'cancel deleted the ISO');
    await page.click(`[data-testid="media-delete-${isoName}"]`);
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-ok');
    await page.waitForSelector(row, { state: 'detached', timeout: 15000 });
    assert((await text('[data-testid=media-error]')) === '', `an error shows: ${await text('[data-testid=media-error]')}`);
    assert(!existsSync(join(mediaDir, isoName)), `${isoName} is still in ${mediaDir}`);
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
  await close();
  await cleanupClone().catch((e) => console.log(`  (cleanup: ${e.message})`));
  await cleanupMedia().catch((e) => console.log(`  (cleanup: ${e.message})`));
}

finish();
