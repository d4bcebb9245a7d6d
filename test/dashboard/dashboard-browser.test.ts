/**
 * The dashboard in a real browser: Debian's Chromium (apt package `chromium`), driven headless by
 * playwright-core, against a real agent with simulated boards. The test logs in through the form,
 * leases a board and runs a job over the real protocol, and asserts what the page shows while the
 * job runs (leased → flashing, the holder's run link, the job's log lines arriving live) and after
 * (idle again, the result in the last jobs, its log behind the link). It also asserts the page
 * asks nothing of any other host and trips no Content-Security-Policy rule.
 *
 * Screenshots are kept under test-artifacts/dashboard/ (git-ignored) for a person to look at.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { LAB_TOKEN, startLab, type Lab } from '../support/lab.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.resolve(import.meta.dirname, '../../test-artifacts/dashboard');
const MiB = 1024 * 1024;
const HOLDER = 'octo/lab run 42.1 job flash';
const haveChromium = existsSync(CHROMIUM);

/**
 * The little of the DOM that the functions run in the page use: this project's TypeScript has no
 * DOM types. (Playwright sends the functions as they are; the page's CSP forbids evaluating strings.)
 */
interface PageNode {
  textContent: string | null;
  querySelector(selector: string): PageNode | null;
}
declare const document: { querySelectorAll(selector: string): ArrayLike<PageNode> } & PageNode;
declare const window: { seen?: string[] };

let lab: Lab | undefined;
let browser: Browser | undefined;
afterEach(async () => {
  await browser?.close();
  browser = undefined;
  await lab?.stop();
  lab = undefined;
});

// In CI a missing Chromium fails (the apt line in .ci/run installs it); elsewhere it is skipped, saying why.
describe.skipIf(!haveChromium && process.env.CI !== 'true')('the dashboard in Chromium', () => {
  it('shows boards, a running job with its live log, and the job after it ended', async () => {
    expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`).toBe(true);
    await mkdir(ARTIFACTS, { recursive: true });
    lab = await startLab({
      boards: [
        // A card that writes 1 MiB/s keeps the job in its flashing phase for seconds: long enough to look at.
        { name: 'pi-alpha', mac: '02:00:00:00:0e:01', reset: 'sim:slow-card:1024' },
        { name: 'pi-beta', mac: '02:00:00:00:0e:02' },
        { name: 'pi-gamma', mac: '02:00:00:00:0e:03' },
      ],
    });
    const base = lab.agent.httpUrl;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // Chromium refuses to start its sandbox as root (CI runs as root); the page it opens is the
      // agent's own, on loopback. As any other user the sandbox stays on.
      args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const requested: string[] = [];
    const problems: string[] = [];
    page.on('request', (r) => requested.push(r.url()));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(e.message));

    // Not logged in: the page sends the browser to the form; the token typed there opens it.
    await page.goto(`${base}/dashboard/`);
    expect(new URL(page.url()).pathname).toBe('/dashboard/login');
    await page.fill('input[name=token]', 'a-wrong-token-000000000');
    await page.click('button[type=submit]');
    await page.locator('.error').waitFor();
    expect(await page.locator('.error').textContent()).toContain('not accepted');
    // The refusal is the one error so far (a 401 for the form's POST).
    expect(problems).toEqual([expect.stringContaining('status of 401')]);
    problems.length = 0;
    await page.fill('input[name=token]', LAB_TOKEN);
    await page.click('button[type=submit]');
    await page.waitForURL(`${base}/dashboard/`);
    // The token is in no URL the browser visited.
    expect(requested.filter((u) => u.includes(LAB_TOKEN))).toEqual([]);

    const state = (board: string) => page.locator(`tr[data-board="${board}"] td.state`);
    const waitText = async (selector: string, text: string | RegExp) => {
      const re = typeof text === 'string' ? `^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$` : text.source;
      await page.waitForFunction(
        ([sel, pattern]) =>
          Array.from(document.querySelectorAll(sel)).some((n) => new RegExp(pattern).test(n.textContent ?? '')),
        [selector, re] as const,
        { timeout: 30_000, polling: 50 },
      );
    };
    await waitText('#status', 'live');
    for (const name of ['pi-alpha', 'pi-beta', 'pi-gamma']) expect(await state(name).textContent()).toBe('idle');
    expect(await page.locator('#recent tbody tr').count()).toBe(0);
    await page.screenshot({ path: path.join(ARTIFACTS, '1-idle.png'), fullPage: true });

    // What pi-alpha's row shows, every 20 ms from here on: the states and job cells the page went through.
    await page.evaluate(() => {
      const seen: string[] = (window.seen = []);
      setInterval(() => {
        const row = document.querySelector('tr[data-board="pi-alpha"]');
        const cell = (name: string) => row?.querySelector(name)?.textContent ?? '';
        const now = `${cell('td.state')} ${cell('td.job')}`.trim();
        if (seen.at(-1) !== now) seen.push(now);
      }, 20);
    });
    const seen = () => page.evaluate(() => window.seen ?? []);
    const conn = await lab.connect();
    const img = await lab.image('browser.img', 4 * MiB, 9);
    await conn.lease('pi-alpha', { holder: HOLDER });
    await waitText('tr[data-board="pi-alpha"] td.state', 'leased');
    const link = page.locator('tr[data-board="pi-alpha"] td.holder a');
    expect(await link.textContent()).toBe(HOLDER);
    expect(await link.getAttribute('href')).toBe('https://github.com/octo/lab/actions/runs/42');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = conn.flash({ sha256: img.sha256 });

    // While it runs: flashing, the phase and part in the job cell, log lines arriving live.
    await waitText('tr[data-board="pi-alpha"] td.state', 'flashing');
    await waitText('#log .line', /part 1\/4: written and read back/);
    expect(await state('pi-beta').textContent()).toBe('idle');
    expect(await page.locator('#running button').textContent()).toMatch(/^pi-alpha · [0-9a-f]+$/);
    const linesMidJob = await page.locator('#log .line').count();
    await page.screenshot({ path: path.join(ARTIFACTS, '2-flashing.png'), fullPage: true });
    await waitText('#log .line', /part 4\/4: written and read back/);
    expect(await page.locator('#log .line').count()).toBeGreaterThan(linesMidJob);

    const r = await result;
    expect(r).toMatchObject({ ok: true, code: 'OK' });
    // After: idle again, the job in the last jobs with its result, the log closed with it.
    await waitText('tr[data-board="pi-alpha"] td.state', 'idle');
    await waitText(`#recent tr[data-job="${r.job}"] td.code`, 'OK');
    const row = page.locator(`#recent tr[data-job="${r.job}"]`);
    expect(await row.locator('td.name').textContent()).toBe('pi-alpha');
    expect(await row.locator('td.holder a').getAttribute('href')).toBe('https://github.com/octo/lab/actions/runs/42');
    expect(await row.locator('td.duration').textContent()).toMatch(/^\d+\.\d s$/);
    await waitText('#log .ended', /^job ended: OK: flashed, verified and booted$/);
    expect(await page.locator('tr[data-board="pi-alpha"] td.holder').textContent()).toBe('');
    await page.screenshot({ path: path.join(ARTIFACTS, '3-done.png'), fullPage: true });
    // In order: leased, flashing through its phases (the transfer part by part), booting, idle.
    const went = await seen();
    const first = (re: RegExp) => went.findIndex((v) => re.test(v));
    expect(first(/^leased$/)).toBeGreaterThanOrEqual(0);
    expect(first(/^flashing (stage|reset|transfer)/)).toBeGreaterThan(first(/^leased$/));
    expect(first(/^flashing transfer part [1-4]\/4 \d+ %$/)).toBeGreaterThan(first(/^leased$/));
    expect(first(/^booting boot$/)).toBeGreaterThan(first(/^flashing transfer/));
    expect(went.at(-1)).toBe('idle');

    // The log link serves the job's record.
    const href = await row.locator('a[href$="/log"]').getAttribute('href');
    const logPage = await context.newPage();
    await logPage.goto(new URL(href!, base).toString());
    expect(await logPage.locator('body').textContent()).toMatch(/part 4\/4: written and read back/);

    // Everything came from the agent; nothing was refused by the page's Content-Security-Policy.
    expect(requested.filter((u) => !u.startsWith(`${base}/`))).toEqual([]);
    expect(problems).toEqual([]);
  });
});
