import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CodedError } from '../../src/protocol/errors.js';
import { createResetLine } from '../../runner-agent/src/reset/index.js';
import { qmpExecute } from '../../runner-agent/src/reset/qmp.js';
import { rejectionOf, targetWith, testContext } from './helpers.js';

const QEMU = 'qemu-system-aarch64';
const haveQemu = spawnSync(QEMU, ['--version']).status === 0;
// CI installs QEMU (DESIGN §5): there a missing QEMU fails these tests instead of skipping them.
const runQemu = haveQemu || Boolean(process.env.CI);
/** Said in the name of each test that needs QEMU, when it skips. */
const needsQemu = runQemu ? '' : ` (skipped: ${QEMU} is not installed; apt-get install qemu-system-arm)`;

describe('qmp reset', () => {
  let dir: string;
  const children: ChildProcess[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'reset-qmp-'));
  });
  afterEach(async () => {
    // Whatever a test did, no QEMU outlives it.
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) {
        const gone = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGKILL');
        await gone;
      }
    }
    await rm(dir, { recursive: true, force: true });
  });

  /** A QEMU with no firmware: the CPU idles, QMP answers. */
  async function startQemu(
    extra: string[] = [],
  ): Promise<{ socket: string; child: ChildProcess; exited: Promise<number | null> }> {
    const socket = path.join(dir, 'qmp.sock');
    const child = spawn(
      QEMU,
      [
        '-M',
        'virt',
        '-cpu',
        'cortex-a57',
        '-m',
        '128M',
        '-nographic',
        '-nodefaults',
        '-display',
        'none',
        '-serial',
        'none',
        '-qmp',
        `unix:${socket},server=on,wait=off`,
        ...extra,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    children.push(child);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    // QEMU makes its socket within a second; the limit is a hang guard for a loaded machine.
    for (let i = 0; !existsSync(socket); i++) {
      if (child.exitCode !== null) throw new Error(`QEMU exited with ${child.exitCode}: ${stderr}`);
      if (i > 1500) throw new Error(`QEMU did not create ${socket} within 30 s: ${stderr}`);
      await Promise.race([new Promise((r) => setTimeout(r, 20)), spawnError]);
    }
    return { socket, child, exited };
  }

  it.runIf(runQemu)(`delivers system_reset to a real QEMU${needsQemu}`, async () => {
    // With -no-reboot QEMU exits on a reset request: its exit proves the reset arrived.
    const { socket, exited } = await startQemu(['-no-reboot']);
    const line = createResetLine(targetWith(`qmp:${socket}`), testContext());
    expect(line.describe()).toBe(`qmp:${socket} (QEMU system_reset)`);
    await line.pulse();
    expect(await exited).toBe(0);
  });

  it.runIf(runQemu)(`resets the same QEMU again and again, one connection each${needsQemu}`, async () => {
    const { socket, child } = await startQemu();
    const line = createResetLine(targetWith(`qmp:${socket}`), testContext());
    for (let i = 0; i < 3; i++) await line.pulse();
    expect(child.exitCode).toBeNull();
    // The monitor is free again: another client gets real answers.
    const [status] = await qmpExecute(socket, ['query-status'], 5000);
    expect(status).toMatchObject({ running: true, status: 'running' });
  });

  it.runIf(runQemu)(`reports QMP errors with their class${needsQemu}`, async () => {
    const { socket } = await startQemu();
    const err = await rejectionOf(qmpExecute(socket, ['no-such-command'], 5000));
    expect(err.message).toMatch(
      /^QMP no-such-command failed: CommandNotFound: The command no-such-command has not been found$/,
    );
  });

  it.runIf(runQemu)(`says QEMU has gone when nothing accepts on the socket${needsQemu}`, async () => {
    const { socket, child, exited } = await startQemu();
    child.kill('SIGKILL');
    await exited;
    // QEMU killed with SIGKILL leaves its socket file behind.
    expect(existsSync(socket)).toBe(true);
    const err = await rejectionOf(createResetLine(targetWith(`qmp:${socket}`), testContext()).pulse());
    expect(err.message).toBe(
      `cannot reset board-1 (qmp:${socket}): nothing accepts connections on ${socket} (QEMU has exited?)`,
    );
  });

  it('names a missing socket', async () => {
    const socket = path.join(dir, 'absent.sock');
    const err = await rejectionOf(createResetLine(targetWith(`qmp:${socket}`), testContext()).pulse());
    expect(err).toBeInstanceOf(CodedError);
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toBe(
      `cannot reset board-1 (qmp:${socket}): no QMP socket at ${socket} ` +
        `(is QEMU running with -qmp unix:${socket},server=on,wait=off?)`,
    );
  });

  it('gives up on a socket that never greets, and on one that does not speak QMP', async () => {
    const silentPath = path.join(dir, 'silent.sock');
    const chattyPath = path.join(dir, 'chatty.sock');
    const accepted: net.Socket[] = [];
    const silent = net.createServer((s) => accepted.push(s));
    const chatty = net.createServer((s) => {
      accepted.push(s);
      s.write('{"hello": "not qmp"}\n');
    });
    await Promise.all([
      new Promise<void>((r) => silent.listen(silentPath, r)),
      new Promise<void>((r) => chatty.listen(chattyPath, r)),
    ]);
    try {
      const slow = await rejectionOf(
        createResetLine(targetWith(`qmp:${silentPath}`), testContext({ cmdTimeoutMs: 200 })).pulse(),
      );
      expect(slow.message).toMatch(
        /did not answer within 200 ms while waiting for the greeting \(another client may hold the QMP monitor\)$/,
      );
      const wrong = await rejectionOf(qmpExecute(chattyPath, ['system_reset'], 2000));
      expect(wrong.message).toBe(`${chattyPath} does not speak QMP (first line: {"hello":"not qmp"})`);
    } finally {
      for (const s of accepted) s.destroy();
      await Promise.all([new Promise((r) => silent.close(r)), new Promise((r) => chatty.close(r))]);
    }
  });
});
