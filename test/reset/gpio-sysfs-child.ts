/**
 * Runs one sysfs GPIO pulse through the real `onoff`, inside a private mount namespace where a
 * tmpfs sits over /sys/class and /sys/class/gpio is a fake tree (see gpio-sysfs.test.ts). Nothing
 * plays the kernel there, so this process does: it watches `export`/`unexport` and creates or
 * removes `gpioN/`, and records every change of `direction`, `value` and `active_low` in order.
 * Prints one JSON line with what it saw.
 *
 * Usage (only inside the namespace): node --import tsx gpio-sysfs-child.ts <fresh|pre-exported> <pulseMs>
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { silentLogger } from '../../runner-agent/src/log.js';
import { createResetLine } from '../../runner-agent/src/reset/index.js';
import { parseTargets } from '../../runner-agent/src/targets/database.js';

const ROOT = '/sys/class/gpio';
const [scenario = 'fresh', pulseArg = '100'] = process.argv.slice(2);
const pulseMs = Number(pulseArg);

if (existsSync(path.join(ROOT, 'export')) || !existsSync(ROOT)) {
  throw new Error(`refusing to run: ${ROOT} must be an empty fake tree in a private mount namespace`);
}

// A Pi 4 on a 6.6 kernel: the SoC's bank at 512, the firmware's expander after it.
const chip = (name: string, base: number, label: string, ngpio: number) => {
  mkdirSync(path.join(ROOT, name));
  writeFileSync(path.join(ROOT, name, 'base'), `${base}\n`);
  writeFileSync(path.join(ROOT, name, 'label'), `${label}\n`);
  writeFileSync(path.join(ROOT, name, 'ngpio'), `${ngpio}\n`);
};
chip('gpiochip512', 512, 'pinctrl-bcm2711', 58);
chip('gpiochip570', 570, 'raspberrypi-exp-gpio', 8);
writeFileSync(path.join(ROOT, 'export'), '');
writeFileSync(path.join(ROOT, 'unexport'), '');

const ATTRS = ['active_low', 'direction', 'value'] as const;
type Attr = (typeof ATTRS)[number];
const createLine = (n: number, initial: Record<Attr, string>) => {
  const dir = path.join(ROOT, `gpio${n}`);
  mkdirSync(dir);
  for (const attr of ATTRS) writeFileSync(path.join(dir, attr), `${initial[attr]}\n`);
  writeFileSync(path.join(dir, 'edge'), 'none\n');
};

const events: string[] = [];
const times: Record<string, number> = {};
const lines = new Map<number, Record<Attr, string>>();
const started = performance.now();
const note = (event: string) => {
  events.push(event);
  times[event] ??= performance.now() - started;
};

if (scenario === 'pre-exported') {
  // Left behind by an agent that died mid-pulse: still driving, and inverted for good measure.
  const leftover = { active_low: '1', direction: 'out', value: '0' };
  createLine(512 + 17, leftover);
  lines.set(512 + 17, { ...leftover });
}

const kernel = () => {
  const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8').trim();
  for (const [n, last] of lines) {
    for (const attr of ATTRS) {
      const now = read(`gpio${n}/${attr}`);
      if (now !== last[attr]) {
        last[attr] = now;
        note(`${attr}=${now}`);
      }
    }
  }
  const exported = read('export');
  if (exported) {
    writeFileSync(path.join(ROOT, 'export'), '');
    note(`export ${exported}`);
    const initial = { active_low: '0', direction: 'in', value: '1' };
    createLine(Number(exported), initial);
    lines.set(Number(exported), { ...initial });
  }
  const unexported = read('unexport');
  if (unexported) {
    writeFileSync(path.join(ROOT, 'unexport'), '');
    note(`unexport ${unexported}`);
    rmSync(path.join(ROOT, `gpio${unexported}`), { recursive: true });
    lines.delete(Number(unexported));
  }
};
const ticker = setInterval(kernel, 1);

const [target] = parseTargets('name,mac,ip,reset\npi4,dc:a6:32:01:02:03,10.0.0.1,gpio:17\n', 'lab.csv');
let error: string | undefined;
try {
  await createResetLine(target!, { log: silentLogger, pulseMs }).pulse();
} catch (err) {
  error = (err as Error).message;
}
await new Promise((r) => setTimeout(r, 20));
kernel();
clearInterval(ticker);
process.stdout.write(
  JSON.stringify({
    events,
    heldMs:
      times['direction=in'] !== undefined && times['value=0'] !== undefined
        ? times['direction=in'] - times['value=0']
        : undefined,
    linesLeft: [...lines.keys()],
    error,
  }) + '\n',
);
// No process.exit: the process must end on its own, so a handle the pulse leaks (onoff's epoll
// poller, a timer) shows up as the test's timeout.
