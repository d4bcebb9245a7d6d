import { describe, expect, it } from 'vitest';
import { createResetLine } from '../../runner-agent/src/reset/index.js';
import { rejectionOf, targetWith, testContext } from './helpers.js';

describe('sim reset', () => {
  it('asks the simulated lab to reset the board by name', async () => {
    const resets: string[] = [];
    const line = createResetLine(
      targetWith('sim:no-show', 'sim-7'),
      testContext({ sim: { reset: async (name) => void resets.push(name) } }),
    );
    expect(line.describe()).toBe('sim:no-show (simulated board)');
    await line.pulse();
    await line.pulse();
    expect(resets).toEqual(['sim-7', 'sim-7']);
  });

  it('fails clearly when no simulated lab is wired in', async () => {
    const err = await rejectionOf(createResetLine(targetWith('sim'), testContext()).pulse());
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toMatch(/^cannot reset board-1 \(sim\): no simulated lab is wired into this agent/);
  });

  it("passes on the lab's own failure as RESET_FAILED", async () => {
    const ctx = testContext({ sim: { reset: async () => Promise.reject(new Error('board sim-9 is unplugged')) } });
    const err = await rejectionOf(createResetLine(targetWith('sim'), ctx).pulse());
    expect(err.code).toBe('RESET_FAILED');
    expect(err.message).toBe('cannot reset board-1 (sim): board sim-9 is unplugged');
  });
});
