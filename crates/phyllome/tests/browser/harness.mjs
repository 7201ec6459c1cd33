// What the browser tests share (console.test.mjs, hosts.test.mjs): their
// settings from standard input, steps that stop at the first failure and a
// closing "browser: N passed, M failed" line, and Debian's headless Chromium
// with its page errors and Content-Security-Policy violations collected.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/// The settings the Rust test passes as JSON on standard input (never argv or the environment).
export function readConfig() {
  const cfg = JSON.parse(readFileSync(0, 'utf8'));
  mkdirSync(cfg.artifacts, { recursive: true });
  return cfg;
}

const results = [];

/// One step: skipped once an earlier one failed; prints ok/not ok/skip with its time.
export async function step(name, fn) {
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

/// The closing line, and the exit code: non-zero when a step failed.
export function finish() {
  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

export function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

export async function waitUntil(what, secs, fn) {
  const deadline = Date.now() + secs * 1000;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${secs} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/// Headless Chromium on a throwaway profile: its page (30 s timeouts), `shot(name)` into the
/// artifacts folder, the CSP violations seen, and `close()`.
export async function openBrowser(cfg) {
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
  const cspViolations = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
    console.log(`  (page console: ${m.text()})`);
  });
  page.on('pageerror', (e) => console.log(`  (page error: ${e.message})`));
  const shot = (name) => page.screenshot({ path: join(cfg.artifacts, `${name}.png`) });
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, shot, cspViolations, close };
}
