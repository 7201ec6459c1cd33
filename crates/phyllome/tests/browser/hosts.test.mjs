// Browser test of `phyllome serve` with two hosts, driven by
// crates/phyllome/tests/web_two_hosts.rs, which starts a second libvirtd
// (scripts/second-host.sh), the server with a hosts file naming it, and
// passes the settings as JSON on standard input.
//
// Debian's headless Chromium through playwright-core: log in; the list shows
// this host's VM and the second host's, each with its host, and the second
// host's row offers only its libvirt actions; Migrate on this host's VM's page opens
// the dialog, which names the destination host, runs the check and shows its
// items, and keeps "Move" disabled while the check fails (a shut-off VM asked
// to move live); the second host's libvirtd killed: a banner names it, its
// row says unreachable and its actions are disabled while this host's row is
// untouched; started again: the row is reachable again. Screenshots go to the
// artifacts folder. Prints one line per step and "browser: N passed, M failed".

import { assert, finish, openBrowser, readConfig, step, waitUntil } from './harness.mjs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const cfg = readConfig();


const secondHost = (cmd) => {
  const script = fileURLToPath(new URL('../../../../scripts/second-host.sh', import.meta.url));
  execFileSync('bash', [script, cmd, cfg.hostName], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60000 });
};

const { page, shot, cspViolations, close } = await openBrowser(cfg);

// A row by host and name, compared as strings (no selector escaping).
const row = (host, name) => page.evaluate(([h, n]) => {
  const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n && r.dataset.host === h);
  if (!tr) return null;
  const host = tr.querySelector('[data-field=host]');
  return {
    state: tr.dataset.state,
    unreachable: tr.dataset.unreachable === 'true',
    host: host ? host.textContent.trim() : null,
    badge: tr.querySelector('.state').dataset.state,
    actions: [...tr.querySelectorAll('[data-action]')].map((b) => ({ action: b.dataset.action, disabled: !!b.disabled })),
    link: !!tr.querySelector('td.name a'),
  };
}, [host, name]);

try {
  await step('log in: the list shows both hosts\' VMs, each with its host', async () => {
    await page.goto(cfg.url);
    await page.waitForSelector('#login-form', { state: 'visible' });
    await page.fill('#login-user', cfg.user);
    await page.fill('#login-password', cfg.password);
    await page.click('#login-submit');
    await page.waitForSelector('#vm-table');
    const heads = await page.$$eval('#vm-table thead th', (ths) => ths.map((t) => t.textContent.trim()));
    assert(heads.includes('Host'), `no Host column: ${heads}`);
    const here = await waitUntil('this host\'s VM', 15, () => row('local', cfg.here));
    const there = await waitUntil('the second host\'s VM', 15, () => row(cfg.host, cfg.there));
    assert(here.host === 'local' && there.host === cfg.host, `hosts shown: ${here.host}, ${there.host}`);
    assert(!here.unreachable && !there.unreachable, 'a row shows unreachable');
    assert(here.link && !there.link, 'only this host\'s VM links to its page');
    const acts = there.actions.map((a) => a.action).sort().join(',');
    assert(acts === 'kill,pause,stop', `the second host's VM offers ${acts}`);
    assert((await page.$$('.hosts-banner')).length === 0, 'a host banner shows while every host is up');
    await shot('h1-two-hosts');
  });

  await step('Migrate: the check names the host, shows its items and keeps Move disabled while it fails', async () => {
    await page.evaluate(([h, n]) => {
      const tr = [...document.querySelectorAll('#vm-rows tr')].find((r) => r.dataset.vm === n && r.dataset.host === h);
      tr.querySelector('td.name a').click();
    }, ['local', cfg.here]);
    await page.waitForSelector('#vm-detail [data-action=migrate]');
    assert((await page.textContent('#vm-name')).trim() === cfg.here, 'another VM\'s page opened');
    await page.click('#vm-detail [data-action=migrate]');
    await page.waitForSelector('#migrate-dialog[open]');
    assert((await page.inputValue('#migrate-to')) === cfg.host, 'the destination is not the second host');
    assert(!(await page.isChecked('#migrate-live')), 'a shut-off VM is offered a live move');
    await page.waitForSelector('#migrate-check');
    assert(await page.isDisabled('#migrate-submit'), 'Move is enabled before the check passes');
    // Asked to move live, the shut-off VM fails the state item.
    await page.check('#migrate-live');
    await waitUntil('the live check', 15, () => page.evaluate(() => {
      const c = document.querySelector('#migrate-check');
      return !!c && c.dataset.mode === 'live';
    }));
    const state = await page.getAttribute('#migrate-items li[data-what="state"]', 'data-ok');
    assert(state === 'false', `the state item says ok=${state}`);
    assert((await page.getAttribute('#migrate-check', 'data-ok')) === 'false', 'the check passed');
    assert(await page.isDisabled('#migrate-submit'), 'Move is enabled while the check fails');
    const items = await page.$$eval('#migrate-items li', (ls) => ls.length);
    assert(items >= 2, `only ${items} items`);
    assert(!(await page.textContent('#migrate-dialog')).includes('socket='), 'the dialog shows a URI');
    await shot('h2-migrate-check');
    await page.click('#migrate-cancel');
    await page.waitForSelector('#migrate-dialog', { state: 'detached' });
    await page.click('#back-to-list');
    await page.waitForSelector('#vm-table');
  });

  await step('the second host goes away: a banner, its row unreachable and its actions off; this host\'s untouched', async () => {
    secondHost('crash');
    await waitUntil('the unreachable row', 20, async () => (await row(cfg.host, cfg.there) || {}).unreachable);
    const there = await row(cfg.host, cfg.there);
    assert(there.badge === 'unreachable', `its state shows ${there.badge}`);
    assert(there.actions.every((a) => a.disabled), 'an action is enabled on an unreachable host\'s VM');
    await page.waitForSelector(`.hosts-banner[data-host="${cfg.host}"]`);
    const here = await row('local', cfg.here);
    assert(!here.unreachable && here.badge === 'shut off', `this host's row changed: ${JSON.stringify(here)}`);
    assert((await page.$$('#stale-banner')).length === 0, 'this host is shown as unreachable');
    await shot('h3-host-unreachable');
  });

  await step('it comes back: the row is reachable again and the banner goes', async () => {
    secondHost('restart');
    await waitUntil('the reachable row', 30, async () => {
      const r = await row(cfg.host, cfg.there);
      return r && !r.unreachable;
    });
    await page.waitForSelector('.hosts-banner', { state: 'detached', timeout: 15000 });
    assert((await row(cfg.host, cfg.there)).badge === 'shut off', 'its state is not back');
  });

  await step('no Content-Security-Policy violation', async () => {
    assert(cspViolations.length === 0, `CSP violations:\n${cspViolations.join('\n')}`);
  });
} finally {
  await close();
}

finish();
