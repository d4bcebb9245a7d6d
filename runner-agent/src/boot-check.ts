/**
 * Waiting for the boot check (DESIGN §3.1): after the flash, how the agent decides the new system
 * is up. The grammar of a check is src/protocol/boot-check.ts, shared with the action.
 * A connection that is accepted is all it takes: nothing is sent, the socket is closed at once.
 * Console lines are those of console/capture.ts: escape codes removed, a prompt without a line end
 * becomes a line once the console is quiet.
 */
import net from 'node:net';
import type { BootCheck } from '../../src/protocol/boot-check.js';
import type { Logger } from './log.js';

/**
 * What a `console:` check reads: the job's console capture (console/capture.ts's ConsoleCapture
 * fits). `waitFor` resolves with the first line numbered `since` or later that matches, or null
 * at the timeout; it rejects with `signal.reason` on abort.
 */
export interface BootConsole {
  waitFor(
    re: RegExp,
    o: { timeoutMs: number; signal?: AbortSignal; since?: number },
  ): Promise<{ line: string; ms: number } | null>;
}

export interface WaitForBootOptions {
  /** Overall deadline, from the call. */
  timeoutMs: number;
  /** Pause between failed attempts; 1 s unless given. */
  intervalMs?: number;
  /** Limit of one connection attempt (a host that drops SYNs would otherwise take minutes); 3 s unless given. */
  attemptTimeoutMs?: number;
  signal?: AbortSignal;
  log?: Logger;
  /** For `console:` checks: the target's console capture. Without it a console check throws. */
  console?: BootConsole;
  /**
   * For `console:` checks: the first console line that counts (the capture's mark()). Take it
   * when the board has written the new image, or just before the reset, and lines the new system
   * printed before the boot phase began still count, while the old system's never do. Default:
   * only lines after the call.
   */
  consoleSince?: number;
}

export interface BootResult {
  ok: boolean;
  /** Time from the call until the check passed (or gave up). */
  ms: number;
  attempts: number;
  /** For `console:` checks that passed: the line that matched. */
  line?: string;
}

const DEFAULT_INTERVAL_MS = 1000;
const DEFAULT_ATTEMPT_TIMEOUT_MS = 3000;

/**
 * One connection attempt: true when accepted, false on refusal, error or timeout; rejects with the
 * signal's reason on abort.
 */
function tryConnect(
  host: string,
  port: number,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<{ ok: boolean; error?: string }> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const socket = net.connect({ host, port });
    const finish = (outcome: { ok: boolean; error?: string } | { abort: unknown }) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.removeAllListeners();
      socket.on('error', () => {}); // errors after we gave up are of no interest
      socket.destroy();
      if ('abort' in outcome) reject(outcome.abort);
      else resolve(outcome);
    };
    const onAbort = () => finish({ abort: signal?.reason });
    const timer = setTimeout(() => finish({ ok: false, error: `no answer within ${timeoutMs} ms` }), timeoutMs);
    socket.once('connect', () => finish({ ok: true }));
    socket.once('error', (err: NodeJS.ErrnoException) => finish({ ok: false, error: err.code ?? err.message }));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A pause that ends early, rejecting with the signal's reason, when the signal aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Tries the check until it passes or `timeoutMs` has passed. Resolves `{ ok: false }` on timeout;
 * rejects with `signal.reason` as soon as the signal aborts (no socket or timer outlives the call).
 */
export async function waitForBoot(check: BootCheck, targetIp: string, o: WaitForBootOptions): Promise<BootResult> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  o.signal?.throwIfAborted();
  if (check.kind === 'none') return { ok: true, ms: 0, attempts: 0 };
  if (check.kind === 'console') {
    if (!o.console)
      throw new Error(
        `boot check console:${check.pattern.source} needs the target's console, and none is open ` +
          '(give the target a console in the targets database)',
      );
    const match = await o.console.waitFor(check.pattern, {
      timeoutMs: o.timeoutMs,
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.consoleSince !== undefined ? { since: o.consoleSince } : {}),
    });
    if (!match) return { ok: false, ms: elapsed(), attempts: 1 };
    o.log?.debug('boot check matched a console line', { line: match.line });
    return { ok: true, ms: elapsed(), attempts: 1, line: match.line };
  }

  const host = check.host ?? targetIp;
  const interval = o.intervalMs ?? DEFAULT_INTERVAL_MS;
  const attemptTimeout = o.attemptTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS;
  let attempts = 0;
  for (;;) {
    const remaining = o.timeoutMs - elapsed();
    if (remaining <= 0) break;
    attempts++;
    const attempt = await tryConnect(host, check.port, Math.min(attemptTimeout, remaining), o.signal);
    if (attempt.ok) return { ok: true, ms: elapsed(), attempts };
    o.log?.debug('boot check not yet passing', { host, port: check.port, attempt: attempts, error: attempt.error });
    const wait = Math.min(interval, o.timeoutMs - elapsed());
    if (wait <= 0) break;
    await pause(wait, o.signal);
  }
  return { ok: false, ms: elapsed(), attempts };
}
