import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createResetLine } from '../../runner-agent/src/reset/index.js';
import { rejectionOf, targetWith, testContext } from './helpers.js';

/**
 * No GPIO chip exists here, so libgpiod's tools are replaced by scripts first on PATH that record
 * their argv (one invocation a line, each argument in brackets) and act as told by the test.
 */
describe('gpiod reset', () => {
  let dir: string;
  let calls: string;
  const savedPath = process.env.PATH;

  /** A fake tool: records `[name][arg]…`, then runs `body` (default: succeed silently). */
  async function fakeTool(name: string, body = 'exit 0'): Promise<void> {
    const file = path.join(dir, name);
    await writeFile(
      file,
      '#!/bin/sh\n' +
        `{ printf '[%s]' "${name}"; for a in "$@"; do printf '[%s]' "$a"; done; echo; } >> "${calls}"\n` +
        `${body}\n`,
    );
    await chmod(file, 0o755);
  }
  const recorded = async () => (await readFile(calls, 'utf8').catch(() => '')).trim().split('\n').filter(Boolean);

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'reset-gpiod-'));
    calls = path.join(dir, 'calls.log');
    process.env.PATH = `${dir}:${savedPath}`;
  });
  afterEach(async () => {
    process.env.PATH = savedPath;
    await rm(dir, { recursive: true, force: true });
  });

  it('drives a line given by offset low for the pulse, then reads it back to input', async () => {
    await fakeTool('gpioset');
    await fakeTool('gpioget', 'echo 1');
    const line = createResetLine(targetWith('gpiod:gpiochip0:17'), testContext({ pulseMs: 250 }));
    expect(line.describe()).toBe('gpiod:gpiochip0:17 (libgpiod)');
    await line.pulse();
    expect(await recorded()).toEqual([
      '[gpioset][--mode=time][--usec=250000][gpiochip0][17=0]',
      '[gpioget][gpiochip0][17]',
    ]);
  });

  it('finds a named line with gpiofind', async () => {
    await fakeTool('gpiofind', 'echo "gpiochip0 27"');
    await fakeTool('gpioset');
    await fakeTool('gpioget', 'echo 1');
    await createResetLine(targetWith('gpiod:gpiochip0:GPIO27'), testContext()).pulse();
    expect(await recorded()).toEqual([
      '[gpiofind][GPIO27]',
      '[gpioset][--mode=time][--usec=20000][gpiochip0][27=0]',
      '[gpioget][gpiochip0][27]',
    ]);
  });

  it('refuses a named line that gpiofind places on another chip', async () => {
    await fakeTool('gpiofind', 'echo "gpiochip4 3"');
    await fakeTool('gpioset');
    const err = await rejectionOf(createResetLine(targetWith('gpiod:/dev/gpiochip0:RUN_PI3'), testContext()).pulse());
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toBe(
      'cannot reset board-1 (gpiod:/dev/gpiochip0:RUN_PI3): line "RUN_PI3" is on gpiochip4, not on /dev/gpiochip0',
    );
    expect(await recorded()).toEqual(['[gpiofind][RUN_PI3]']);
  });

  it('names a line that gpiofind does not know', async () => {
    await fakeTool('gpiofind', 'exit 1');
    const err = await rejectionOf(createResetLine(targetWith('gpiod:gpiochip0:NOPE'), testContext()).pulse());
    expect(err.message).toMatch(
      new RegExp(
        String.raw`^cannot reset board-1 \(gpiod:gpiochip0:NOPE\): ` +
          String.raw`no GPIO line is named "NOPE" \(gpiofind NOPE failed \(status 1\)\)$`,
      ),
    );
  });

  it("reports gpioset's error and still returns the line to input", async () => {
    await fakeTool(
      'gpioset',
      'echo "gpioset: error setting the GPIO line values: Device or resource busy" >&2; exit 1',
    );
    await fakeTool('gpioget', 'echo 1');
    const ctx = testContext();
    const err = await rejectionOf(createResetLine(targetWith('gpiod:gpiochip0:17'), ctx).pulse());
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toBe(
      'cannot reset board-1 (gpiod:gpiochip0:17): gpioset --mode=time --usec=20000 gpiochip0 17=0 failed (status 1): ' +
        'gpioset: error setting the GPIO line values: Device or resource busy',
    );
    expect(await recorded()).toEqual([
      '[gpioset][--mode=time][--usec=20000][gpiochip0][17=0]',
      '[gpioget][gpiochip0][17]',
    ]);
  });

  it('fails when the line cannot be released, since the board would stay in reset', async () => {
    await fakeTool('gpioset');
    await fakeTool('gpioget', 'echo "gpioget: error reading GPIO values: Device or resource busy" >&2; exit 1');
    const err = await rejectionOf(createResetLine(targetWith('gpiod:gpiochip0:17'), testContext()).pulse());
    expect(err.message).toMatch(/gpioget gpiochip0 17 failed \(status 1\): gpioget: error reading GPIO values/);
  });

  it('explains libgpiod 2.x option errors', async () => {
    await fakeTool('gpioset', 'echo "gpioset: unrecognized option \'--mode=time\'" >&2; exit 1');
    await fakeTool('gpioget', 'echo 1');
    const err = await rejectionOf(createResetLine(targetWith('gpiod:gpiochip0:17'), testContext()).pulse());
    expect(err.message).toMatch(/libgpiod 2\.x changed the command line/);
  });

  it('says which package to install when the tools are missing', async () => {
    process.env.PATH = dir; // nothing but an empty folder
    const err = await rejectionOf(createResetLine(targetWith('gpiod:gpiochip0:17'), testContext()).pulse());
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toBe(
      'cannot reset board-1 (gpiod:gpiochip0:17): gpioset not found on PATH: ' +
        'install the libgpiod 1.6 tools (Debian package "gpiod")',
    );
  });
});
