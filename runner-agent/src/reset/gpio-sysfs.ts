/**
 * `gpio:<bcm>`: the reset line through sysfs GPIO, driven with `onoff`.
 *
 * Sysfs numbers lines globally: the line is `<base of the SoC's chip> + <BCM number>`. The base was
 * 0 for years; kernels ≥ 6.6 allocate it dynamically (512, 571, …), so it is read from
 * `<gpioRoot>/gpiochip*` on every pulse instead of assumed (a kernel update must not make the agent
 * drive the wrong pin).
 *
 * A pulse exports the line (unless it already is), drives it low for `pulseMs`, then sets it back
 * to an input — the Pi's pull-up on RUN then lets the board run — and unexports it, so nothing is
 * held between jobs. A line found already exported is most likely left over from an agent that
 * died mid-pulse, so it is unexported afterwards too.
 *
 * `onoff` hard-codes `/sys/class/gpio`: `gpioRoot` only moves base detection and the export step,
 * which is why the export is done here (with errors that say what to fix, and an asynchronous wait
 * for udev to hand the new files to the `gpio` group, where onoff would spin synchronously).
 */
import { constants } from 'node:fs';
import { access, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Target } from '../targets/database.js';
import { asResetFailure, DEFAULT_GPIO_ROOT, sleep, type ResetContext, type ResetLine } from './reset-line.js';

export interface GpioChipInfo {
  /** The directory name, e.g. `gpiochip512`. */
  chip: string;
  base: number;
  label: string;
  ngpio: number;
  /** Why this chip was chosen: its label names a Pi SoC, or the fallback rule below. */
  matchedBy: 'label' | 'only-chip' | 'first-large-chip';
}

/** GPIO controllers of the Pi SoCs whose lines are on the 40-pin header. */
export const PI_SOC_GPIO_LABELS: readonly string[] = [
  'pinctrl-bcm2835', // Pi 1, 2, 3, Zero (BCM2835/6/7)
  'pinctrl-bcm2711', // Pi 4, 400, CM4
  'pinctrl-rp1', // Pi 5: the header is on the RP1 south bridge
];

/** The header's lines are BCM 0–27: a chip with fewer lines cannot be the SoC's. */
const HEADER_LINES = 28;

/**
 * Finds the chip whose lines the BCM numbers count from, and its sysfs base. The rule:
 * 1. a chip labelled with a Pi SoC's GPIO controller (PI_SOC_GPIO_LABELS); of several, the lowest base;
 * 2. otherwise, when there is exactly one chip, that chip (a board with a single controller);
 * 3. otherwise the chip with the lowest base among those with at least 28 lines: the SoC's
 *    controller registers first and the small expanders (the firmware's 8-line
 *    `raspberrypi-exp-gpio`, I²C expanders) are too small to carry the header.
 * Throws when there is no sysfs GPIO or no chip qualifies, naming what was found.
 */
export async function detectGpioBase(root: string): Promise<GpioChipInfo> {
  let entries: string[];
  try {
    entries = await readdir(root);
  } catch (err) {
    throw new Error(
      `no sysfs GPIO at ${root} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): ` +
        'the kernel lacks CONFIG_GPIO_SYSFS; use a gpiod:<chip>:<line> reset spec',
      { cause: err },
    );
  }
  const chips: Omit<GpioChipInfo, 'matchedBy'>[] = [];
  for (const chip of entries.filter((e) => /^gpiochip\d+$/.test(e))) {
    const read = (file: string) => readFile(path.join(root, chip, file), 'utf8').then((s) => s.trim());
    try {
      const [base, label, ngpio] = await Promise.all([read('base'), read('label'), read('ngpio')]);
      if (!/^\d+$/.test(base) || !/^\d+$/.test(ngpio)) continue;
      chips.push({ chip, base: Number(base), label, ngpio: Number(ngpio) });
    } catch {
      // A chip that vanished or is unreadable cannot be the one we drive; the rule below decides.
    }
  }
  if (chips.length === 0) throw new Error(`no GPIO chips under ${root}`);
  chips.sort((a, b) => a.base - b.base);

  const soc = chips.find((c) => PI_SOC_GPIO_LABELS.includes(c.label));
  if (soc) return { ...soc, matchedBy: 'label' };
  if (chips.length === 1) return { ...(chips[0] as (typeof chips)[number]), matchedBy: 'only-chip' };
  const large = chips.find((c) => c.ngpio >= HEADER_LINES);
  if (large) return { ...large, matchedBy: 'first-large-chip' };
  throw new Error(
    `cannot tell which GPIO chip under ${root} carries the header: ` +
      chips.map((c) => `${c.chip} "${c.label}" base ${c.base} (${c.ngpio} lines)`).join(', '),
  );
}

/** A sysfs error turned into what the operator has to do about it. */
export function explainGpioError(err: unknown, file: string, line: number): Error {
  const code = (err as NodeJS.ErrnoException)?.code;
  const message = err instanceof Error ? err.message : String(err);
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return new Error(
        `permission denied on ${file}: add the agent's user to the "gpio" group ` +
          `(and make sure udev gives that group ${path.dirname(file)})`,
      );
    case 'EBUSY':
      return new Error(
        `GPIO ${line} is busy: another driver, a device-tree overlay or a libgpiod user holds it (see "gpioinfo")`,
      );
    case 'EINVAL':
      return new Error(`the kernel refused GPIO ${line} at ${file}: no such line on this system`);
    case 'ENOENT':
      return new Error(`${file} does not exist: sysfs GPIO is unavailable (use a gpiod:<chip>:<line> reset spec)`);
    default:
      return new Error(`${file}: ${message}`);
  }
}

/** After an export, udev needs a moment to hand the new files to the `gpio` group. */
async function waitForLineFiles(dir: string, line: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await access(path.join(dir, 'value'), constants.R_OK | constants.W_OK);
      await access(path.join(dir, 'direction'), constants.R_OK | constants.W_OK);
      return;
    } catch (err) {
      if (Date.now() >= deadline) throw explainGpioError(err, path.join(dir, 'value'), line);
      await sleep(10);
    }
  }
}

const EXPORT_WAIT_MS = 2000;

/**
 * onoff, loaded on first use: the agent must start where onoff's native part (epoll, compiled for
 * one machine and one Node.js) is absent, as in the Debian package, which carries no compiled code.
 * Its failure says what to do instead of listing the dozen paths `bindings` tried.
 */
export async function loadOnoff(load: () => Promise<typeof import('onoff')> = () => import('onoff')) {
  try {
    return await load();
  } catch (err) {
    const why = (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
    throw new Error(
      `gpio: resets drive the line with onoff, whose native part did not load (${why}): use a ` +
        'gpiod:<chip>:<line> reset spec (package gpiod), or compile it where the agent is installed ' +
        '(README, "Install the agent on a lab server")',
      { cause: err },
    );
  }
}

export function createSysfsGpioResetLine(target: Target, bcm: number, ctx: ResetContext): ResetLine {
  const root = ctx.gpioRoot ?? DEFAULT_GPIO_ROOT;
  const log = ctx.log.child({ target: target.name, reset: 'gpio' });
  return {
    describe: () => `gpio:${bcm} (sysfs GPIO)`,
    pulse: () =>
      asResetFailure(target, async () => {
        const chip = await detectGpioBase(root);
        if (bcm >= chip.ngpio) {
          throw new Error(`BCM GPIO ${bcm} is beyond ${chip.chip} ("${chip.label}", ${chip.ngpio} lines)`);
        }
        // Before the export: a line the agent cannot drive is left as it was.
        const { Gpio } = await loadOnoff();
        const line = chip.base + bcm;
        const dir = path.join(root, `gpio${line}`);
        log.debug('pulsing reset line', { chip: chip.chip, label: chip.label, base: chip.base, line, ms: ctx.pulseMs });

        const exported = await access(dir).then(
          () => true,
          () => false,
        );
        if (exported) {
          log.warn('reset line was already exported (left over from an earlier run?); taking it over', { line });
        } else {
          const exportFile = path.join(root, 'export');
          await writeFile(exportFile, String(line)).catch((err: unknown) => {
            throw explainGpioError(err, exportFile, line);
          });
        }
        await waitForLineFiles(dir, line, EXPORT_WAIT_MS);

        let gpio: InstanceType<typeof Gpio>;
        try {
          // 'in' without reconfiguring: opening the line must not move it; the pulse below does.
          gpio = new Gpio(line, 'in', undefined, { reconfigureDirection: false });
        } catch (err) {
          throw explainGpioError(err, dir, line);
        }
        let pulseError: Error | undefined;
        try {
          // active_low would invert "low"; writing "low" to direction makes it an output that
          // starts low (no glitch high), the value write states the intent for any sysfs clone.
          gpio.setActiveLow(false);
          gpio.setDirection('low');
          gpio.writeSync(0);
          await sleep(ctx.pulseMs);
        } catch (err) {
          pulseError = explainGpioError(err, dir, line);
        }
        try {
          // Input again, whatever happened above: the pull-up lets the board run.
          gpio.setDirection('in');
        } catch (err) {
          pulseError ??= explainGpioError(err, path.join(dir, 'direction'), line);
        } finally {
          gpio.unexport();
        }
        if (pulseError) throw pulseError;
      }),
    close: async () => {},
  };
}
