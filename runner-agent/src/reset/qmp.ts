/**
 * `qmp:<socket path>`: QEMU's `system_reset` over its QMP unix socket — the stand-in for the RUN
 * line on an emulated board (DESIGN §4). One short connection per pulse: QEMU's QMP server takes
 * one client at a time, so holding it open would lock out a developer's own `qmp-shell`.
 *
 * QMP is line-delimited JSON: a greeting `{"QMP": …}`, then `qmp_capabilities` to leave
 * negotiation mode, then commands; each answer is `{"return": …}` or `{"error": {class, desc}}`,
 * and asynchronous `{"event": …}` lines may arrive in between (a reset emits one).
 */
import net from 'node:net';
import type { Target } from '../targets/database.js';
import { asResetFailure, type ResetContext, type ResetLine } from './reset-line.js';

const DEFAULT_QMP_TIMEOUT_MS = 10_000;
/** QMP's answers to our commands are short: a longer line is not QMP, and is not buffered further. */
const MAX_QMP_LINE = 1024 * 1024;

type QmpMessage = Record<string, unknown>;

/** Opens the socket, runs `commands` in order and closes; rejects with a reason a human can act on. */
export async function qmpExecute(
  socketPath: string,
  commands: readonly string[],
  timeoutMs: number,
): Promise<unknown[]> {
  const socket = net.createConnection({ path: socketPath });
  const inbox: QmpMessage[] = [];
  let failure: Error | undefined;
  let notify: (() => void) | undefined;
  let buffered = '';
  let stage = 'connecting';

  const wake = () => {
    const n = notify;
    notify = undefined;
    n?.();
  };
  const fail = (err: Error) => {
    failure ??= err;
    wake();
  };
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buffered += chunk;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      let message: unknown;
      try {
        message = JSON.parse(line);
      } catch {
        fail(new Error(`QMP sent a line that is not JSON: ${line.slice(0, 200)}`));
        continue;
      }
      // Every QMP message is an object; `null`, a number or a list is a peer that is not QEMU.
      if (typeof message === 'object' && message !== null && !Array.isArray(message)) inbox.push(message as QmpMessage);
      else fail(new Error(`QMP sent a line that is not a JSON object: ${line.slice(0, 200)}`));
    }
    if (buffered.length > MAX_QMP_LINE) {
      fail(new Error(`QMP sent over ${MAX_QMP_LINE} bytes without a line end`));
      buffered = '';
    }
    wake();
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT')
      fail(
        new Error(`no QMP socket at ${socketPath} (is QEMU running with -qmp unix:${socketPath},server=on,wait=off?)`),
      );
    else if (err.code === 'ECONNREFUSED')
      fail(new Error(`nothing accepts connections on ${socketPath} (QEMU has exited?)`));
    else if (err.code === 'EACCES') fail(new Error(`permission denied on ${socketPath}`));
    else fail(new Error(`QMP socket ${socketPath}: ${err.message}`));
  });
  socket.on('close', () => fail(new Error(`QEMU closed the QMP connection while ${stage}`)));
  const timer = setTimeout(
    () =>
      fail(
        new Error(
          `QMP on ${socketPath} did not answer within ${timeoutMs} ms while ${stage}` +
            (stage === 'waiting for the greeting' ? ' (another client may hold the QMP monitor)' : ''),
        ),
      ),
    timeoutMs,
  );

  /** The next message that is not an asynchronous event. */
  const next = async (): Promise<QmpMessage> => {
    for (;;) {
      if (failure) throw failure;
      const msg = inbox.shift();
      if (msg && !('event' in msg)) return msg;
      if (!msg) await new Promise<void>((resolve) => (notify = resolve));
    }
  };

  try {
    stage = 'waiting for the greeting';
    const greeting = await next();
    if (!('QMP' in greeting))
      throw new Error(`${socketPath} does not speak QMP (first line: ${JSON.stringify(greeting).slice(0, 200)})`);
    const results: unknown[] = [];
    for (const command of ['qmp_capabilities', ...commands]) {
      stage = `running ${command}`;
      socket.write(JSON.stringify({ execute: command }) + '\n');
      const answer = await next();
      if ('error' in answer) {
        const e = answer.error as { class?: string; desc?: string };
        throw new Error(`QMP ${command} failed: ${e.class ?? 'error'}: ${e.desc ?? JSON.stringify(e)}`);
      }
      if (!('return' in answer))
        throw new Error(`QMP ${command}: unexpected answer ${JSON.stringify(answer).slice(0, 200)}`);
      results.push(answer.return);
    }
    stage = 'closing';
    return results.slice(1);
  } finally {
    clearTimeout(timer);
    socket.removeAllListeners('close');
    socket.on('error', () => {}); // a late error after destroy must not become an uncaught exception
    socket.destroy();
  }
}

export function createQmpResetLine(target: Target, socketPath: string, ctx: ResetContext): ResetLine {
  const timeoutMs = ctx.cmdTimeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
  const log = ctx.log.child({ target: target.name, reset: 'qmp' });
  return {
    describe: () => `qmp:${socketPath} (QEMU system_reset)`,
    pulse: () =>
      asResetFailure(target, async () => {
        log.debug('sending system_reset', { socket: socketPath });
        await qmpExecute(socketPath, ['system_reset'], timeoutMs);
      }),
    close: async () => {},
  };
}
