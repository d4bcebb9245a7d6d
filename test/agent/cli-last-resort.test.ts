/**
 * The agent's last-resort guard, tested by forking the real CLI with a preload that throws where no
 * handler catches it (a `process.nextTick` or timer callback, a rejected promise nobody awaits):
 * during start-up the agent exits non-zero with the stack; once it serves, it logs the error with
 * its stack at error level and a whole job on a simulated board still passes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { connectAgent } from '../../src/protocol/client.js';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';
import { sha256File } from '../support/lab.js';

const CLI = path.resolve('runner-agent/src/cli.ts');
const token = 'cli-guard-token-0123456789';
/** A safety net for a loaded machine, not a figure. */
const DEADLINE_MS = 60_000;

let child: ChildProcess | undefined;
let dir: string | undefined;
afterEach(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  child = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/**
 * A preload that watches the agent's log on stdout and, when a line contains `marker`, runs `inject`
 * (JavaScript source) once, outside any handler's reach.
 */
function preload(marker: string, inject: string): string {
  const code = `
    const write = process.stdout.write.bind(process.stdout);
    let done = false;
    process.stdout.write = (chunk, ...rest) => {
      const ok = write(chunk, ...rest);
      if (!done && String(chunk).includes(${JSON.stringify(marker)})) { done = true; ${inject} }
      return ok;
    };`;
  return `data:text/javascript,${encodeURIComponent(code)}`;
}

async function makeLab(): Promise<string> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-guard-'));
  await writeFile(path.join(dir, 'targets.csv'), 'name,mac,ip,reset\npi,02:00:00:00:09:11,127.0.9.11,sim\n');
  await writeFile(
    path.join(dir, 'agent.json'),
    JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      token,
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      flash: { partSize: '1MiB' },
      timeouts: { boardShow: 60, stall: 60, boot: 60 },
      bootCheck: 'tcp:2222',
      sim: { bootPort: 2222, cardSize: '16MiB' },
      defaultLayout: 'whole',
    }),
  );
  return path.join(dir, 'agent.json');
}

function fork(config: string, importUrl: string) {
  const proc = spawn(
    process.execPath,
    ['--import', 'tsx', '--import', importUrl, CLI, '--config', config, '--allow-root'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  child = proc;
  const exit = once(proc, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  let out = '';
  let err = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const waitFor = async (check: () => boolean, what: string) => {
    const deadline = Date.now() + DEADLINE_MS;
    while (!check()) {
      if (Date.now() > deadline)
        throw new Error(`waited ${DEADLINE_MS} ms for ${what}; the agent's output:\n${out}${err}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  return { out: () => out, err: () => err, exit, waitFor };
}

describe('the last-resort guard of the agent process', { timeout: 3 * DEADLINE_MS }, () => {
  it('during start-up: an uncaught error still stops the agent with a non-zero status and its stack', async () => {
    const config = await makeLab();
    const r = fork(
      config,
      preload('"tftp listening"', `process.nextTick(() => { throw new Error('injected during start-up'); });`),
    );
    const [code] = await Promise.race([
      r.exit,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error(`no exit: ${r.out()}${r.err()}`)), DEADLINE_MS),
      ),
    ]);
    expect(code, r.out() + r.err()).toBe(1);
    expect(r.err()).toMatch(
      /unexpected error during start-up \(uncaughtException\): Error: injected during start-up\n\s+at /,
    );
    expect(r.out()).not.toContain('"agent listening"');
  });

  it('once serving: uncaught errors and rejections are logged with their stacks, and a job passes', async () => {
    const config = await makeLab();
    const r = fork(
      config,
      preload(
        '"agent listening"',
        `setTimeout(() => { throw new Error('injected after start-up'); }, 10);
         setTimeout(() => { Promise.reject(new Error('injected rejection')); }, 20);`,
      ),
    );
    await r.waitFor(
      () => (r.out().match(/"unexpected error; the agent keeps serving"/g) ?? []).length >= 2,
      'both errors logged',
    );
    // The log line carries the stack on one line: a `\n` (backslash, n) before each frame.
    const errorLine = (origin: string, message: string) =>
      new RegExp(
        `ERROR "unexpected error; the agent keeps serving" origin=${origin} error="Error: ${message}\\\\n\\s+at `,
      );
    expect(r.out()).toMatch(errorLine('uncaughtException', 'injected after start-up'));
    expect(r.out()).toMatch(errorLine('unhandledRejection', 'injected rejection'));
    const url = /"agent listening" url=(\S+)/.exec(r.out())![1]!;
    const image = path.join(dir!, 'img');
    await writeSampleImage(image, 2 * 1024 * 1024, 3);
    const sha256 = await sha256File(image);
    const conn = await connectAgent({ url, token, client: 'guard-test' });
    try {
      await conn.lease('pi');
      await conn.upload({ path: image, sha256, size: 2 * 1024 * 1024, compression: 'none' });
      const result = await conn.flash({ sha256 });
      expect(result, r.out()).toMatchObject({ ok: true, code: 'OK' });
    } finally {
      conn.close();
    }
    expect(child!.exitCode).toBe(null);
  });
});
