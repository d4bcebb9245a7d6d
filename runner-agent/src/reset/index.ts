/**
 * Reset lines: one driver per reset spec kind (DESIGN §3.3), chosen from the target's database row.
 */
import type { Target } from '../targets/database.js';
import { createCmdResetLine } from './cmd.js';
import { createGpiodResetLine } from './gpiod.js';
import { createSysfsGpioResetLine } from './gpio-sysfs.js';
import { createQmpResetLine } from './qmp.js';
import type { ResetContext, ResetLine } from './reset-line.js';
import { createSimResetLine } from './sim.js';
import { createNoResetLine } from './none.js';
import { createSshResetLine } from './ssh.js';

export type { ResetContext, ResetLine } from './reset-line.js';
export { DEFAULT_CMD_TIMEOUT_MS, DEFAULT_GPIO_ROOT, DEFAULT_PULSE_MS } from './reset-line.js';
export { detectGpioBase, type GpioChipInfo } from './gpio-sysfs.js';

export function createResetLine(target: Target, ctx: ResetContext): ResetLine {
  const spec = target.reset;
  switch (spec.kind) {
    case 'gpio':
      return createSysfsGpioResetLine(target, spec.bcm, ctx);
    case 'gpiod':
      return createGpiodResetLine(target, spec.chip, spec.line, ctx);
    case 'cmd':
      return createCmdResetLine(target, spec.command, ctx);
    case 'qmp':
      return createQmpResetLine(target, spec.socket, ctx);
    case 'sim':
      return createSimResetLine(target, ctx);
    case 'none':
      return createNoResetLine();
    case 'ssh': {
      const hard = spec.fallback && createResetLine({ ...target, reset: spec.fallback }, ctx);
      return createSshResetLine(target, ctx, hard);
    }
  }
}
