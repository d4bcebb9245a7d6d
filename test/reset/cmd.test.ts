import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CodedError } from '../../src/protocol/errors.js';
import { createResetLine } from '../../runner-agent/src/reset/index.js';
import { rejectionOf, targetWith, testContext } from './helpers.js';
import { waitUntil } from '../support/wait.js';

/** Whether a process is still alive (a zombie waiting for its reaper counts as gone). */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

describe('cmd reset', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'reset-cmd-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('runs the command through sh with the target in the environment', async () => {
    const out = path.join(dir, 'env.txt');
    const target = targetWith(`cmd:echo "$RPI_FLASH_TARGET $RPI_FLASH_MAC $RPI_FLASH_IP" > ${out} && echo done`);
    const line = createResetLine(target, testContext());
    expect(line.describe()).toContain('cmd: echo');
    await line.pulse();
    expect(await readFile(out, 'utf8')).toBe('board-1 b8:27:eb:28:f6:6d 127.0.0.9\n');
    await line.pulse(); // a second pulse is a second run
    await line.close();
  });

  it('fails with RESET_FAILED naming the target, the spec, the status and the end of stderr', async () => {
    const target = targetWith('cmd:for i in 1 2 3 4 5 6 7; do echo "line $i" >&2; done; exit 3');
    const err = await rejectionOf(createResetLine(target, testContext()).pulse());
    expect(err).toBeInstanceOf(CodedError);
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toMatch(
      new RegExp(
        String.raw`^cannot reset board-1 \(cmd:for i in .*exit 3\): the reset command exited with status 3; ` +
          String.raw`stderr: line 3 \| line 4 \| line 5 \| line 6 \| line 7$`,
      ),
    );
  });

  it('says so when a failing command printed nothing', async () => {
    const err = await rejectionOf(createResetLine(targetWith('cmd:false'), testContext()).pulse());
    expect(err.message).toMatch(/exited with status 1 \(no stderr\)/);
  });

  it('kills the whole process group when the command overruns', async () => {
    const pidFile = path.join(dir, 'bg.pid');
    // A background child that would outlive the shell: the timeout must end it too.
    const target = targetWith(`cmd:sleep 30 & echo $! > ${pidFile}; echo waiting >&2; wait`);
    const err = await rejectionOf(createResetLine(target, testContext({ cmdTimeoutMs: 300 })).pulse());
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toMatch(/did not finish within 300 ms and was killed; stderr: waiting/);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    expect(pid).toBeGreaterThan(0);
    // SIGKILL is delivered at once, but the reaper may take a moment (longer on a loaded machine).
    await waitUntil(async () => !(await alive(pid)), `the background child ${pid} to be gone`);
  });

  it('reports a command killed by a signal', async () => {
    const err = await rejectionOf(createResetLine(targetWith('cmd:kill -TERM $$'), testContext()).pulse());
    expect(err.message).toMatch(/was killed by SIGTERM/);
  });
});
