/**
 * `none`: no reset line. For boards whose layout restarts them itself (`ota`: the board reboots
 * from its RAM system once the card is written), the job's reset phase does nothing.
 */
import type { ResetLine } from './reset-line.js';

export function createNoResetLine(): ResetLine {
  return {
    describe: () => 'none (the layout restarts the board itself)',
    pulse: async () => {},
    close: async () => {},
  };
}
