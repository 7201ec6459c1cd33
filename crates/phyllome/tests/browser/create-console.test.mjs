// Browser test of the create dialog's choices and the console's hints, driven by
// crates/phyllome/tests/web_browser.rs (settings as JSON on standard input):
// - the create dialog offers every choice create has: its Secure Boot switch
//   follows the OS (always on for Windows 11, none for a BIOS OS, the person's
//   choice for Linux), and a VM made with it switched on asks the API for
//   secure_boot (the Rust test then reads the domain's secure-boot firmware);
//   the driver ISO, the disk bus and "create below the usual minimum" are there;
// - the list's Console button is disabled while a VM is shut off;
// - a running guest that writes only to its serial port: its Console tab says
//   so after a few seconds of a blank screen, and links to the serial console.
// The Rust test made the serial-only VM (shut off) and removes both VMs.

import { assert, finish, openBrowser, readConfig, step, waitUntil } from './harness.mjs';
import { readFileSync } from 'node:fs';

const cfg = readConfig();
const { page, shot, cspViolations, close } = await openBrowser(cfg);
const text = async (sel) => ((await page.textContent(sel)) || '').trim();
const row = (name) => page.evaluate((n) => {
  const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
  if (!tr) return null;
  const b = (a) => tr.querySelector(`[data-action="${a}"]`);
  return { state: tr.dataset.state, console: b('console') ? !b('console').disabled : null, start: !!b('start') && !b('start').disabled };
}, name);
const clickRow = (name, action) => page.evaluate(([n, a]) => {
  const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n);
  tr.querySelector(`[data-action="${a}"]`).click();
}, [name, action]);
const serialLog = (name) => {
  try { return readFileSync(`/var/log/libvirt/qemu/${name}-serial.log`, 'utf8'); } catch (e) { return ''; }
};

try {
  await step('log in', async () => {
    await page.goto(cfg.url);
    await page.fill('#login-user', cfg.user);
    await page.fill('#login-password', cfg.password);
    await page.click('#login-submit');
    await page.waitForSelector('#vm-table');
  });

  await step("the create dialog's Secure Boot switch follows the OS, and the other choices of create are there", async () => {
    await page.click('#new-vm');
    await page.waitForSelector('#create-dialog[open]');
    await page.waitForFunction(() => document.querySelector('select[name=os]').options.length > 1);
    const sb = async () => ({
      on: await page.isChecked('[data-testid=create-secure-boot]'),
      fixed: await page.isDisabled('[data-testid=create-secure-boot]'),
      note: await text('[data-testid=create-secure-boot-note]'),
    });
    await page.selectOption('select[name=os]', 'windows11');
    let s = await sb();
    assert(s.on && s.fixed && s.note.includes('always on'), `Windows 11: ${JSON.stringify(s)}`);
    await page.selectOption('select[name=os]', 'legacy');
    s = await sb();
    assert(!s.on && s.fixed && s.note.includes('BIOS'), `a BIOS OS: ${JSON.stringify(s)}`);
    await page.selectOption('select[name=os]', 'linux');
    s = await sb();
    assert(!s.on && !s.fixed && s.note.includes('off by default'), `Linux: ${JSON.stringify(s)}`);
    await page.check('[data-testid=create-secure-boot]');
    s = await sb();
    assert(s.on && s.note.includes('Microsoft keys'), `Linux, switched on: ${JSON.stringify(s)}`);
    // The rest of create's choices: driver ISO, disk bus, below the usual minimum.
    await page.click('#create-more summary');
    const buses = await page.$$eval('select[name=disk_bus] option', (o) => o.map((x) => x.value));
    assert(buses.includes('virtio') && buses.includes('sata'), `the disk bus choices: ${buses}`);
    assert(await page.$('select[name=drivers]'), 'no driver ISO choice');
    assert(await page.$('input[name=force][type=checkbox]'), 'no "below the usual minimum" choice');
    await shot('create-secure-boot');

    await page.fill('input[name=name]', cfg.secureBootVm);
    await page.fill('input[name=memory]', '512M');
    await page.fill('input[name=cpus]', '1');
    await page.fill('input[name=disk_size]', '4G');
    await page.selectOption('select[name=network]', 'none');
    await page.uncheck('input[name=start]');
    const sent = page.waitForRequest((r) => r.url().endsWith('/api/v1/vms') && r.method() === 'POST');
    await page.click('#create-submit');
    const body = JSON.parse((await sent).postData() || '{}');
    assert(body.secure_boot === true && body.os === 'linux' && !('force' in body), `the create request: ${JSON.stringify(body)}`);
    const error = await waitUntil('the result of the create', 120, () => page.evaluate(() => {
      if (document.querySelector('#create-result')) return 'none';
      const e = document.querySelector('#create-error');
      return e && e.textContent ? e.textContent : null;
    }));
    assert(error === 'none', `the create failed: ${error}`);
    await page.click('#create-close');
    await page.waitForSelector('#create-dialog', { state: 'hidden' });
  });

  await step("the list's Console button is disabled while a VM is shut off, and enabled once it runs", async () => {
    const r = await waitUntil('the serial-only VM in the list', 15, () => row(cfg.serialVm));
    assert(r.state === 'shut off' && r.console === false, `a shut-off VM's row: ${JSON.stringify(r)}`);
    const sbRow = await waitUntil('the secure-boot VM in the list', 15, () => row(cfg.secureBootVm));
    assert(sbRow.console === false, `the new shut-off VM's row: ${JSON.stringify(sbRow)}`);
    await shot('list-console-disabled');
    await clickRow(cfg.serialVm, 'start');
    await waitUntil('the VM to run, its Console enabled', 60, async () => {
      const x = await row(cfg.serialVm);
      return x && x.state === 'running' && x.console === true;
    });
  });

  await step('a guest that writes only to its serial port: the Console tab says so, and leads to the serial console', async () => {
    await clickRow(cfg.serialVm, 'console');
    await page.waitForSelector('#screen');
    await waitUntil('the console to connect', 30, async () => (await text('#console-status')) === 'connected');
    await waitUntil("the guest's shell on its serial port", 180, () => serialLog(cfg.serialVm).includes('PHYLLOME-READY'));
    await page.waitForSelector('[data-testid=console-blank-hint]', { timeout: 30000 });
    const hint = await text('[data-testid=console-blank-hint]');
    assert(hint.includes('serial port'), `the hint reads ${JSON.stringify(hint)}`);
    await shot('console-blank-hint');
    await page.click('#console-open-serial');
    await page.waitForSelector('#serial-term .xterm');
    await waitUntil('the serial console to connect', 30, async () => (await text('#serial-status')) === 'connected');
  });

  await step('no Content-Security-Policy violation', async () => {
    assert(cspViolations.length === 0, `CSP violations:\n${cspViolations.join('\n')}`);
  });
} finally {
  await close();
}

finish();
