/**
 * What a health check's result means for a board, on its own: the job that runs it is the agent
 * service's (tested end to end in test/agent/board-states.test.ts); here `run` is the test's.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BoardStates } from '../../runner-agent/src/lab/board-states.js';
import { HealthChecks, type HealthJobResult } from '../../runner-agent/src/lab/health-checks.js';
import { silentLogger } from '../../runner-agent/src/log.js';
import { waitUntil } from '../support/wait.js';

let dir: string | undefined;
let checks: HealthChecks | undefined;
let states: BoardStates | undefined;
afterEach(async () => {
  checks?.stop();
  checks = undefined;
  // A state change's write may still be in flight; removing the folder under it races its rename.
  await states?.flush();
  states = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function setup(o: { image?: string; schedule?: number; afterFailures?: number } = {}) {
  dir = await mkdtemp(path.join(os.tmpdir(), 'health-checks-'));
  const opened = await BoardStates.open({ file: path.join(dir, 'boards.json'), names: ['a', 'b'] });
  states = opened.states;
  const runs: string[] = [];
  let answer: HealthJobResult = { ok: true, code: 'OK', message: 'booted' };
  let release: () => void = () => {};
  let gate: Promise<void> = Promise.resolve();
  checks = new HealthChecks({
    states: opened.states,
    settings: {
      afterFailures: o.afterFailures ?? 2,
      ...(o.image !== undefined ? { image: o.image } : { image: '/x.img' }),
      ...(o.schedule ? { schedule: o.schedule } : {}),
    },
    log: silentLogger,
    run: async (board) => {
      runs.push(board);
      await gate;
      checks!.healthJobEnded(board, answer);
      return answer;
    },
  });
  return {
    states: opened.states,
    checks,
    runs,
    answer: (a: HealthJobResult) => (answer = a),
    hold: () => {
      gate = new Promise((r) => (release = r));
    },
    release: () => release(),
  };
}

describe('HealthChecks', () => {
  it('joins a check already running instead of starting a second', async () => {
    const t = await setup();
    t.hold();
    const one = t.checks.check('a', 'on demand');
    const two = t.checks.check('a', 'on demand');
    expect(t.checks.isRunning('a')).toBe(true);
    t.release();
    expect(await one).toBe(await two);
    expect(t.runs).toEqual(['a']);
    expect(t.checks.isRunning('a')).toBe(false);
  });

  it('a failing check makes the board unhealthy, a passing one idle; maintenance stays maintenance', async () => {
    const t = await setup();
    t.answer({ ok: false, code: 'BOOT_TIMEOUT', message: 'no ssh' });
    expect((await t.checks.check('a', 'test')).status).toMatchObject({
      state: 'unhealthy',
      reason: 'health check failed: BOOT_TIMEOUT: no ssh',
      lastHealth: { ok: false, code: 'BOOT_TIMEOUT' },
    });
    t.answer({ ok: true, code: 'OK', message: 'booted' });
    expect((await t.checks.check('a', 'test')).status).toMatchObject({ state: 'idle', lastHealth: { ok: true } });
    t.states.set('b', 'maintenance', 'operator');
    expect((await t.checks.check('b', 'test')).status).toMatchObject({ state: 'maintenance', reason: 'operator' });
  });

  it('counts only the board’s failures toward unhealthy, and checks the board when it gets there', async () => {
    const t = await setup({ afterFailures: 2 });
    t.answer({ ok: false, code: 'BOARD_NO_SHOW', message: 'silent' });
    t.checks.clientJobEnded('a', 'BOARD_NO_SHOW');
    t.checks.clientJobEnded('a', 'IMAGE_NOT_DISK');
    t.checks.clientJobEnded('a', 'BOARD_NO_SHOW');
    expect(t.states.get('a')).toMatchObject({ state: 'idle', consecutiveFailures: 1 });
    t.checks.clientJobEnded('a', 'RESET_FAILED');
    expect(t.states.get('a')!.state).toBe('unhealthy');
    expect(t.states.get('a')!.reason).toMatch(
      /2 jobs in a row failed for the board's own reasons \(last: RESET_FAILED\)/,
    );
    await waitUntil(() => t.runs.length === 1, 'the check after the failures');
    expect(t.runs).toEqual(['a']);
  });

  it('without an image: no check runs, the board stays unhealthy, a request is LAB_MISCONFIGURED', async () => {
    const t = await setup({ image: '' });
    t.checks.clientJobEnded('a', 'BOARD_TIMEOUT');
    t.checks.clientJobEnded('a', 'BOARD_TIMEOUT');
    expect(t.states.get('a')!.state).toBe('unhealthy');
    await expect(t.checks.check('a', 'test')).rejects.toMatchObject({ code: 'LAB_MISCONFIGURED' });
    expect(t.runs).toEqual([]);
  });

  it('the schedule checks every board but those in maintenance', async () => {
    const t = await setup({ schedule: 0.3 });
    t.states.set('b', 'maintenance');
    t.checks.start();
    await waitUntil(() => t.runs.length >= 1, 'a scheduled check');
    await new Promise((r) => setTimeout(r, 700));
    expect(new Set(t.runs)).toEqual(new Set(['a']));
  });
});
