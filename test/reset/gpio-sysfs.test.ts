import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { detectGpioBase } from '../../runner-agent/src/reset/index.js';
import { createResetLine } from '../../runner-agent/src/reset/index.js';
import { explainGpioError, loadOnoff } from '../../runner-agent/src/reset/gpio-sysfs.js';
import { rejectionOf, targetWith, testContext } from './helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../..');

describe('detectGpioBase', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'sysfs-gpio-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  async function chip(name: string, base: number | string, label: string, ngpio: number | string): Promise<void> {
    await mkdir(path.join(root, name));
    await writeFile(path.join(root, name, 'base'), `${base}\n`);
    await writeFile(path.join(root, name, 'label'), `${label}\n`);
    await writeFile(path.join(root, name, 'ngpio'), `${ngpio}\n`);
  }

  it('finds base 0 on an older kernel (Pi 3)', async () => {
    await chip('gpiochip0', 0, 'pinctrl-bcm2835', 54);
    await chip('gpiochip504', 504, 'raspberrypi-exp-gpio', 8);
    await writeFile(path.join(root, 'export'), '');
    expect(await detectGpioBase(root)).toEqual({
      chip: 'gpiochip0',
      base: 0,
      label: 'pinctrl-bcm2835',
      ngpio: 54,
      matchedBy: 'label',
    });
  });

  it('finds base 512 on a 6.6 kernel (Pi 4), whatever the listing order', async () => {
    await chip('gpiochip570', 570, 'raspberrypi-exp-gpio', 8);
    await chip('gpiochip512', 512, 'pinctrl-bcm2711', 58);
    expect(await detectGpioBase(root)).toMatchObject({ chip: 'gpiochip512', base: 512, matchedBy: 'label' });
  });

  it("finds base 571 on a Pi 5, where the header is on RP1 and the SoC's own chips come first", async () => {
    await chip('gpiochip512', 512, 'gpio-brcmstb@107d508500', 32);
    await chip('gpiochip544', 544, 'gpio-brcmstb@107d508520', 4);
    await chip('gpiochip548', 548, 'gpio-brcmstb@107d517c00', 17);
    await chip('gpiochip565', 565, 'gpio-brcmstb@107d517c20', 6);
    await chip('gpiochip571', 571, 'pinctrl-rp1', 54);
    expect(await detectGpioBase(root)).toMatchObject({
      chip: 'gpiochip571',
      base: 571,
      label: 'pinctrl-rp1',
      ngpio: 54,
      matchedBy: 'label',
    });
  });

  it('takes the only chip when no label is known', async () => {
    await chip('gpiochip100', 100, 'some-soc-gpio', 16);
    expect(await detectGpioBase(root)).toMatchObject({ base: 100, matchedBy: 'only-chip' });
  });

  it('otherwise takes the lowest-based chip large enough for the header', async () => {
    await chip('gpiochip400', 400, 'i2c-expander', 16);
    await chip('gpiochip600', 600, 'vendor-gpio-b', 64);
    await chip('gpiochip520', 520, 'vendor-gpio-a', 32);
    expect(await detectGpioBase(root)).toMatchObject({ chip: 'gpiochip520', base: 520, matchedBy: 'first-large-chip' });
  });

  it('skips chips with unreadable or malformed attributes', async () => {
    await chip('gpiochip0', 'garbage', 'pinctrl-bcm2835', 54);
    await mkdir(path.join(root, 'gpiochip9')); // no attributes at all
    await chip('gpiochip512', 512, 'pinctrl-bcm2835', 54);
    expect(await detectGpioBase(root)).toMatchObject({ base: 512 });
  });

  it('refuses when no chip qualifies, listing what it found', async () => {
    await chip('gpiochip400', 400, 'exp-a', 8);
    await chip('gpiochip408', 408, 'exp-b', 16);
    await expect(detectGpioBase(root)).rejects.toThrow(
      `cannot tell which GPIO chip under ${root} carries the header: ` +
        'gpiochip400 "exp-a" base 400 (8 lines), gpiochip408 "exp-b" base 408 (16 lines)',
    );
  });

  it('refuses an empty tree and a missing one', async () => {
    await writeFile(path.join(root, 'export'), '');
    await expect(detectGpioBase(root)).rejects.toThrow(`no GPIO chips under ${root}`);
    await expect(detectGpioBase(path.join(root, 'absent'))).rejects.toThrow(
      /no sysfs GPIO at .*absent \(ENOENT\).*gpiod:<chip>:<line>/,
    );
  });

  it('refuses a BCM number beyond the chip before touching any line', async () => {
    await chip('gpiochip0', 0, 'pinctrl-rp1', 28);
    await writeFile(path.join(root, 'export'), '');
    const err = await rejectionOf(createResetLine(targetWith('gpio:40'), testContext({ gpioRoot: root })).pulse());
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toBe(
      'cannot reset board-1 (gpio:40): BCM GPIO 40 is beyond gpiochip0 ("pinctrl-rp1", 28 lines)',
    );
  });

  it('names a kernel without sysfs GPIO as a reset failure', async () => {
    const err = await rejectionOf(
      createResetLine(targetWith('gpio:17'), testContext({ gpioRoot: path.join(root, 'none') })).pulse(),
    );
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toMatch(/^cannot reset board-1 \(gpio:17\): no sysfs GPIO at /);
  });
});

describe('explainGpioError', () => {
  const errno = (code: string) => Object.assign(new Error(`${code}: something`), { code });
  it.each([
    ['EACCES', /permission denied on \/sys\/class\/gpio\/export: add the agent's user to the "gpio" group/],
    ['EPERM', /"gpio" group/],
    ['EBUSY', /GPIO 529 is busy: another driver, a device-tree overlay or a libgpiod user holds it/],
    ['EINVAL', /the kernel refused GPIO 529/],
    ['ENOENT', /does not exist: sysfs GPIO is unavailable/],
    ['EIO', /^\/sys\/class\/gpio\/export: EIO: something$/],
  ])('explains %s', (code, message) => {
    expect(explainGpioError(errno(code), '/sys/class/gpio/export', 529).message).toMatch(message);
  });
});

describe('loadOnoff', () => {
  it('loads onoff where its native part is built', async () => {
    expect(typeof (await loadOnoff()).Gpio).toBe('function');
  });

  it('says what to do when onoff cannot load, with the first line of the reason', async () => {
    const missing = () => Promise.reject(new Error('Could not locate the bindings file. Tried:\n → /x/epoll.node'));
    const err = await loadOnoff(missing).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toBe(
      'gpio: resets drive the line with onoff, whose native part did not load (Could not locate the bindings ' +
        'file. Tried:): use a gpiod:<chip>:<line> reset spec (package gpiod), or compile it where the agent is ' +
        'installed (README, "Install the agent on a lab server")',
    );
  });
});

/** Root, or a user namespace we may create: what `unshare -rm` needs. */
const canUnshare = spawnSync('unshare', ['-rm', 'true']).status === 0;
const runNamespaced = canUnshare || Boolean(process.env.CI);
/** Said in the name of each namespaced test, when it skips (in CI it runs, and fails without unshare). */
const needsUnshare = runNamespaced ? '' : ' (skipped: "unshare -rm" is not permitted here)';

/** Runs gpio-sysfs-child.ts in a private mount namespace with a fake /sys/class/gpio. */
function pulseInNamespace(scenario: string, pulseMs: number) {
  const child = path.join(here, 'gpio-sysfs-child.ts');
  const script =
    'mount -t tmpfs none /sys/class && mkdir /sys/class/gpio && ' +
    `exec node --import tsx "${child}" ${scenario} ${pulseMs}`;
  // A hang guard: node with tsx starts in about a second, several on a loaded machine.
  const run = spawnSync('unshare', ['-rm', 'sh', '-c', script], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
  if (run.status !== 0)
    throw new Error(`namespace child failed (status ${run.status}, signal ${run.signal}): ${run.stderr}`);
  return JSON.parse(run.stdout.trim().split('\n').pop() ?? '') as {
    events: string[];
    heldMs?: number;
    linesLeft: number[];
    error?: string;
  };
}

describe('gpio reset through onoff, in a private mount namespace', () => {
  it.runIf(runNamespaced)(
    `exports base+bcm, holds it low, releases it to input and unexports it${needsUnshare}`,
    () => {
      const seen = pulseInNamespace('fresh', 150);
      expect(seen.error).toBeUndefined();
      // BCM 17 on a chip based at 512 is sysfs line 529.
      expect(seen.events).toEqual(['export 529', 'direction=low', 'value=0', 'direction=in', 'unexport 529']);
      expect(seen.linesLeft).toEqual([]);
      // The low level lasted for the pulse (not a timing benchmark: only that it was held at all).
      expect(seen.heldMs).toBeGreaterThan(50);
    },
  );

  it.runIf(runNamespaced)(
    `takes over a line left exported, clearing active_low, and still unexports it${needsUnshare}`,
    () => {
      const seen = pulseInNamespace('pre-exported', 50);
      expect(seen.error).toBeUndefined();
      // The leftover line already read out/0: only active_low and the release show as changes.
      expect(seen.events).toEqual(['active_low=0', 'direction=low', 'direction=in', 'unexport 529']);
      expect(seen.events).not.toContain('export 529');
      expect(seen.linesLeft).toEqual([]);
    },
  );
});
