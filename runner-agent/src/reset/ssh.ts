/**
 * `ssh` / `ssh,<hard spec>`: a soft reset for boards that run U-Boot and stage 1 but have no wire
 * to their RUN pin. The agent logs in to the running system over the row's SSH (the pinned host
 * key, targets/ssh-session.ts) and runs `reboot`; the board's U-Boot then runs stage 1, which finds
 * the job's flash.scr as after any reset. A session that drops under the command is a reboot
 * under way, not a failure.
 *
 * When SSH does not get the board to reboot (no answer within a few seconds, another host key,
 * the key refused, `reboot` refused), the hard reset of the spec pulses instead, with a warning
 * naming why; without one, the pulse fails with the SSH code (or RESET_FAILED for a refused
 * `reboot`). A freshly flashed image brings its own host keys and authorized_keys: a lab that
 * relies on `ssh` alone must bake both into its images.
 */
import { CodedError } from '../../../src/protocol/errors.js';
import type { Target } from '../targets/database.js';
import { SshError, SshSession } from '../targets/ssh-session.js';
import { resetFailed, type ResetContext, type ResetLine } from './reset-line.js';

/** How long a running board gets to answer SSH and log the agent in before the hard reset. */
export const SSH_RESET_ANSWER_MS = 5000;
/** `reboot` returns at once or drops the session; past this the board is taken to be on its way down. */
const REBOOT_COMMAND_MS = 15_000;

/** As root, or through password-less sudo for a user that is not. */
export const REBOOT_COMMAND = 'if [ "$(id -u)" = 0 ]; then reboot; else sudo -n reboot; fi';

export interface SshResetOptions {
  /** The command that reboots the board (tests pass a harmless one). */
  command?: string;
  answerMs?: number;
}

export function createSshResetLine(
  target: Target,
  ctx: ResetContext,
  fallback: ResetLine | undefined,
  o: SshResetOptions = {},
): ResetLine {
  const log = ctx.log.child({ target: target.name, reset: 'ssh' });
  const command = o.command ?? REBOOT_COMMAND;
  const answerMs = o.answerMs ?? SSH_RESET_ANSWER_MS;
  return {
    describe: () => `ssh reboot${fallback ? `, else ${fallback.describe()}` : ''}`,
    pulse: async () => {
      let failure: Error;
      try {
        await reboot(target, command, answerMs, log);
        return;
      } catch (err) {
        failure = err as Error;
      }
      if (!fallback) {
        if (failure instanceof SshError) throw failure;
        throw failure instanceof CodedError ? failure : resetFailed(target, failure.message);
      }
      log.warn(`ssh reboot did not happen (${failure.message}): using the hard reset`, {
        fallback: fallback.describe(),
      });
      await fallback.pulse();
    },
    close: async () => {
      await fallback?.close();
    },
  };
}

async function reboot(target: Target, command: string, answerMs: number, log: ResetContext['log']): Promise<void> {
  const access = target.ssh;
  if (!access)
    throw new CodedError('LAB_MISCONFIGURED', `${target.name}: reset ssh needs the ssh, sshkey and hostkey columns`);
  const session = await SshSession.connect(target.ip, access, { timeoutMs: answerMs });
  try {
    let result;
    try {
      result = await session.exec(command, { timeoutMs: REBOOT_COMMAND_MS });
    } catch (err) {
      // Logged in, the command sent, no status within the limit: a slow shutdown, not a failure;
      // stage 1 fetching flash.scr (or BOARD_NO_SHOW) tells the rest.
      if (err instanceof SshError && /did not finish/.test(err.message)) {
        log.warn('reboot sent over ssh; no exit status came', { ms: REBOOT_COMMAND_MS });
        return;
      }
      throw err;
    }
    if (result.dropped || result.code === 0) {
      log.info('rebooted over ssh', { dropped: result.dropped });
      return;
    }
    const why = (result.stderr || result.stdout).trim().slice(-300);
    const how = result.code === null ? `ended by ${result.signal ?? 'a signal'}` : `exited with ${result.code}`;
    throw resetFailed(target, `"reboot" over ssh ${how}${why ? `: ${why}` : ''}`);
  } finally {
    session.close();
  }
}
