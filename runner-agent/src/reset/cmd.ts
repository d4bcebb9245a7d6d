/**
 * `cmd:<command>`: any external power or reset command — a relay board, a PoE switch, `uhubctl`.
 * Run with `/bin/sh -c` so the database can hold a small pipeline; the target's identity comes in
 * the environment so one script can serve every board.
 */
import type { Target } from '../targets/database.js';
import { asResetFailure, DEFAULT_CMD_TIMEOUT_MS, type ResetContext, type ResetLine } from './reset-line.js';
import { outputTail, runProcess } from './run-process.js';

export function createCmdResetLine(target: Target, command: string, ctx: ResetContext): ResetLine {
  const timeoutMs = ctx.cmdTimeoutMs ?? DEFAULT_CMD_TIMEOUT_MS;
  const log = ctx.log.child({ target: target.name, reset: 'cmd' });
  return {
    describe: () => `cmd: ${command}`,
    pulse: () =>
      asResetFailure(target, async () => {
        log.debug('running reset command', { command });
        const result = await runProcess('/bin/sh', ['-c', command], {
          timeoutMs,
          env: {
            ...process.env,
            RPI_FLASH_TARGET: target.name,
            RPI_FLASH_MAC: target.mac,
            RPI_FLASH_IP: target.ip,
          },
        });
        const stderr = outputTail(result.stderr);
        if (result.timedOut) {
          throw new Error(
            `the reset command did not finish within ${timeoutMs} ms and was killed` +
              (stderr ? `; stderr: ${stderr}` : ''),
          );
        }
        if (result.code !== 0) {
          const how = result.code === null ? `was killed by ${result.signal}` : `exited with status ${result.code}`;
          throw new Error(`the reset command ${how}${stderr ? `; stderr: ${stderr}` : ' (no stderr)'}`);
        }
        const stdout = outputTail(result.stdout);
        if (stdout) log.debug('reset command output', { stdout });
      }),
    close: async () => {},
  };
}
