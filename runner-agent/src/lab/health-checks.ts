/**
 * Health checks: a known-good image flashed and booted on a board, to tell a broken board from a
 * broken job. A check runs on the config's schedule, after `afterFailures` jobs in a row failed for
 * the board's own reasons (board-faults.ts), and on demand (`rpi-flash-agent board TARGET health`).
 * It passes → the board is `idle`; it fails → `unhealthy`, refused to every job until a later check
 * passes (or an operator resumes it). A board in `maintenance` stays there whatever a check says:
 * taking it out and back is the operator's; the check's result is recorded beside it.
 *
 * This module decides the states; the job itself is the agent service's (`run`), through the same
 * lease and FlashJob path as a client's job, so a check waits its turn like anyone.
 */
import { CodedError, type ErrorCode } from '../../../src/protocol/errors.js';
import type { HealthSettings } from '../config.js';
import type { Logger } from '../log.js';
import { isBoardFault } from './board-faults.js';
import type { BoardStates, BoardStatus } from './board-states.js';

export interface HealthJobResult {
  ok: boolean;
  code: ErrorCode;
  message: string;
}

export interface HealthCheckOutcome extends HealthJobResult {
  status: BoardStatus;
}

export interface HealthChecksDeps {
  states: BoardStates;
  settings: HealthSettings;
  /**
   * Run one health job on the board and resolve with its result. The runner calls
   * `healthJobEnded` itself before it releases the lease, so no waiter gets the board in between.
   */
  run: (board: string) => Promise<HealthJobResult>;
  log: Logger;
  now?: () => number;
}

export class HealthChecks {
  private readonly running = new Map<string, Promise<HealthCheckOutcome>>();
  private timer: NodeJS.Timeout | undefined;
  private readonly startedAt: number;
  private readonly now: () => number;
  private stopped = false;

  constructor(private readonly d: HealthChecksDeps) {
    this.now = d.now ?? Date.now;
    this.startedAt = this.now();
  }

  /** Start the schedule (when the config has one and an image). */
  start(): void {
    const { schedule, image } = this.d.settings;
    if (schedule === undefined || image === undefined || this.timer) return;
    // Looked at a few times per period, at most once a minute: a check is due `schedule` after the last.
    const tick = Math.min(60_000, Math.max(250, (schedule * 1000) / 4));
    this.timer = setInterval(() => this.runDue(), tick);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** A check on the board is running or waiting for its lease. */
  isRunning(board: string): boolean {
    return this.running.has(board);
  }

  private runDue(): void {
    const period = this.d.settings.schedule! * 1000;
    for (const s of this.d.states.list()) {
      if (s.state === 'maintenance' || this.running.has(s.name)) continue;
      // A board never checked counts from the agent's start: a restart does not flash every board at once.
      const last = Math.max(s.lastHealth?.at ?? 0, this.startedAt);
      if (this.now() - last >= period) this.background(s.name, 'scheduled');
    }
  }

  /** Start a check nobody waits for; its failure is in the board's state and the log. */
  private background(board: string, why: string): void {
    this.check(board, why).catch((err: unknown) =>
      this.d.log.warn('health check could not run', { target: board, why, error: (err as Error).message }),
    );
  }

  /**
   * Run a check on the board (or join the one running) and resolve with its result and the board's
   * status after it. Rejects when no check can run: no `health.image`, an unknown board, the agent stopping.
   */
  check(board: string, why: string): Promise<HealthCheckOutcome> {
    const running = this.running.get(board);
    if (running) return running;
    if (this.stopped) return Promise.reject(new CodedError('SHUTTING_DOWN', 'the agent is stopping'));
    if (!this.d.settings.image)
      return Promise.reject(
        new CodedError('LAB_MISCONFIGURED', 'no health check can run: the config names no health.image'),
      );
    if (!this.d.states.get(board)) return Promise.reject(new CodedError('UNKNOWN_TARGET', `no target "${board}"`));
    this.d.log.info('health check starting', { target: board, why });
    const p = this.d
      .run(board)
      .then((result) => {
        this.d.log[result.ok ? 'info' : 'warn']('health check ended', {
          target: board,
          why,
          ok: result.ok,
          code: result.code,
        });
        return { ...result, status: this.d.states.get(board)! };
      })
      .finally(() => this.running.delete(board));
    this.running.set(board, p);
    return p;
  }

  /**
   * A health job ended (called before its lease is released): the board is idle when it passed,
   * unhealthy when it failed, and stays in maintenance either way.
   */
  healthJobEnded(board: string, result: HealthJobResult): void {
    const { states } = this.d;
    states.recordHealth(board, { at: this.now(), ok: result.ok, ...(result.ok ? {} : { code: result.code }) });
    if (states.get(board)?.state === 'maintenance') return;
    if (result.ok) states.set(board, 'idle', 'health check passed');
    else states.set(board, 'unhealthy', `health check failed: ${result.code}: ${result.message}`);
  }

  /**
   * A client's job ended (called before its lease is released): count a board-fault failure, and at
   * `afterFailures` of them in a row make the board unhealthy and check it once the lease is free.
   */
  clientJobEnded(board: string, code: ErrorCode): void {
    const { states, settings } = this.d;
    const status = states.recordJobEnd(board, code !== 'OK' && isBoardFault(code));
    if (!status || status.state === 'maintenance') return;
    if (status.consecutiveFailures >= settings.afterFailures) {
      states.set(
        board,
        'unhealthy',
        `${status.consecutiveFailures} jobs in a row failed for the board's own reasons (last: ${code})`,
      );
      // The check waits for the lease the ending job still holds, like any other waiter.
      if (settings.image) queueMicrotask(() => this.background(board, `${status.consecutiveFailures} failures`));
      return;
    }
    states.set(board, 'idle');
  }
}
