/**
 * `sim`: the built-in simulated board (DESIGN §5, loopback integration). The reset goes to the
 * simulated lab wired into the agent, which decides what the board does next (the spec's flags
 * such as `no-show` are the lab's business, read from the target).
 */
import type { Target } from '../targets/database.js';
import { asResetFailure, type ResetContext, type ResetLine } from './reset-line.js';

export function createSimResetLine(target: Target, ctx: ResetContext): ResetLine {
  return {
    describe: () => `${target.resetText} (simulated board)`,
    pulse: () =>
      asResetFailure(target, async () => {
        if (!ctx.sim)
          throw new Error('no simulated lab is wired into this agent (sim targets work only in the demo and tests)');
        await ctx.sim.reset(target.name);
      }),
    close: async () => {},
  };
}
