/**
 * One flash job: stage → reset → transfer → verify → boot, then clean up whatever happened.
 *
 * The job owns the phases, the reset line, the console capture, the boot check, cancel, the
 * timers and the record; how the image reaches the card — what is served, what the board is told,
 * what its reports mean — is its layout's (layouts/). Every wait is bounded by a timeout and by
 * the job's abort signal, so cancel and shutdown end it promptly; the layout's files are removed
 * in `finally` whatever the outcome.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { codeOf, CodedError, type ErrorCode } from '../../../src/protocol/errors.js';
import type {
  JobMethod,
  JobResult,
  LogEvent,
  Phase,
  PhaseEvent,
  ProgressEvent,
  TargetInfo,
} from '../../../src/protocol/messages.js';
import { parseBootCheck, type BootCheck } from '../../../src/protocol/boot-check.js';
import { waitForBoot } from '../boot-check.js';
import { openConsole, type ConsoleCapture } from '../console/capture.js';
import type { BoardWatch, FlashMethod, Layout, LayoutJob } from '../layouts/layout.js';
import { createResetLine, type ResetContext, type ResetLine } from '../reset/index.js';
import type { Target } from '../targets/database.js';

export type JobEvent = Omit<LogEvent, 're'> | Omit<PhaseEvent, 're'> | Omit<ProgressEvent, 're'>;

export interface FlashJobOptions extends Omit<LayoutJob, 'timeouts'> {
  /** How the image lands on the card, and the name it was picked by (layouts/registry.ts). */
  layout: Layout;
  layoutName: string;
  /** What the client asked the job to do with the image; `netboot` runs the `netboot` layout. */
  method: JobMethod;
  bootCheck: string;
  timeouts: { boardShow: number; stall: number; boot: number };
  /** How the target's reset line is driven; the job opens the line for its reset and closes it at its end. */
  reset: Omit<ResetContext, 'log'>;
  /** Where the job's record goes (`<job>.json`, `<job>.log`, `<job>.console.log`); none = not kept. */
  recordDir?: string;
  /** Who holds the lease, for the record (the dashboard's last jobs). */
  holder?: string;
  emit(event: JobEvent): void;
}

/** Lines of the job's own log its record keeps (`<job>.log`); a console has its own file. */
export const MAX_RECORD_LOG_LINES = 20_000;

export function targetInfo(t: Target): TargetInfo {
  return { name: t.name, mac: t.mac, ip: t.ip, ...(t.model ? { model: t.model } : {}) };
}

export class FlashJob {
  private readonly abort = new AbortController();
  private readonly timings: Partial<Record<Phase, number>> = {};
  private phase: Phase = 'stage';
  private readonly method: FlashMethod;
  private resetLine?: ResetLine;
  private console?: ConsoleCapture;
  /** The first console line that may satisfy a `console:` boot check (taken when the board is done). */
  private consoleSince?: number;
  /** Resolves whatever the job is waiting for from the board. */
  private wake: (() => void) | undefined;
  private lastActivity = Date.now();
  /** Until when the board may be silent because it is writing (epoch ms). */
  private busyUntil = 0;
  /** Texts the job's log and console lines never show (a layout's report secret). */
  private readonly secrets: string[] = [];
  /** The job's own log lines (redacted), for `<job>.log`: the dashboard links each finished job to it. */
  private readonly logLines: string[] = [];
  private droppedLogLines = 0;
  private readonly startedAt = new Date();

  constructor(private readonly o: FlashJobOptions) {
    this.method = o.layout(o, this.boardWatch());
  }

  get id(): string {
    return this.o.id;
  }

  /** Ask the job to stop; `run()` then resolves with CANCELLED (or the code given). */
  cancel(reason = 'cancelled by the client', code: ErrorCode = 'CANCELLED'): void {
    if (!this.abort.signal.aborted) this.abort.abort(new CodedError(code, reason));
  }

  async run(): Promise<JobResult> {
    const { target, image } = this.o;
    let code: ErrorCode = 'OK';
    let message: string;
    try {
      this.throwIfCancelled();
      const bootCheck = this.parseBootCheck();
      await this.inPhase('stage', async () => {
        await this.method.stage();
        this.throwIfCancelled();
      });
      await this.openConsole(bootCheck);
      await this.inPhase('reset', () => this.reset());
      await this.inPhase('transfer', () => {
        // The quiet timer starts with the watch: staging and the reset are not the board's time.
        this.lastActivity = Date.now();
        return this.method.watch();
      });
      await this.inPhase('verify', () => this.method.verify());
      const booted = await this.checkBoot(bootCheck);
      message =
        this.o.method === 'netboot'
          ? booted
            ? 'booted from the network; nothing written to the card'
            : 'served the network boot; no boot check ran (boot check none)'
          : booted
            ? 'flashed, verified and booted'
            : 'flashed and verified; no boot check ran (boot check none)';
    } catch (err) {
      const failure: unknown = this.abort.signal.aborted ? this.abort.signal.reason : err;
      code = codeOf(failure);
      if (code === 'INTERNAL') {
        message = `internal error: ${(failure as Error)?.message ?? String(failure)}`;
        this.o.log.error('job failed unexpectedly', { error: (failure as Error)?.stack ?? String(failure) });
      } else {
        message = (failure as Error).message;
      }
      // Said once the job knows where the board got to: a card cut short may not boot.
      if (this.method.outcome().card === 'partial')
        message += '; the card holds a partly written image and may not boot until it is flashed again';
      this.log(code === 'CANCELLED' ? 'warn' : 'error', `${code}: ${message}`);
    } finally {
      await this.method
        .unstage()
        .catch((err: Error) => this.o.log.error('could not delete the staged folder', { error: err.message }));
      await this.resetLine
        ?.close()
        .catch((err: Error) => this.o.log.warn('could not release the reset line', { error: err.message }));
      await this.console?.close().catch(() => {});
    }
    const result: JobResult = {
      ok: code === 'OK',
      code,
      message,
      job: this.o.id,
      target: targetInfo(target),
      sha256: image.sha256,
      method: this.o.method,
      imageSize: image.imageSize,
      timings: this.timings,
      ...this.method.outcome(),
    };
    await this.keepRecord(result);
    return result;
  }

  /** What the layout may do with the job while the board works. */
  private boardWatch(): BoardWatch {
    return {
      log: (level, message, source) => this.log(level, message, source),
      progress: (event) => this.o.emit({ type: 'progress', job: this.o.id, ...event }),
      activity: () => this.notify(),
      busyFor: (seconds, what) => {
        this.busyUntil = Math.max(this.busyUntil, Date.now() + seconds * 1000);
        this.log('info', `${what}: allowing ${Math.ceil(seconds)} s of silence`);
      },
      until: (ready, quietSeconds, onQuiet) => this.waitFor(ready, quietSeconds, onQuiet),
      fail: (code, message) => this.cancel(message, code),
      flashDone: () => {
        // From here on, console lines are the new system's: only they may pass a console: check.
        this.consoleSince = this.console?.mark();
      },
      redact: (secret) => {
        if (secret) this.secrets.push(secret);
      },
    };
  }

  private parseBootCheck(): BootCheck {
    let check: BootCheck;
    try {
      check = parseBootCheck(this.o.bootCheck);
    } catch (err) {
      throw new CodedError('BAD_REQUEST', `boot check: ${(err as Error).message}`);
    }
    if (check.kind === 'console' && !this.o.target.console)
      throw new CodedError(
        'BAD_REQUEST',
        `boot check ${this.o.bootCheck} needs a console, and ${this.o.target.name} has none ` +
          'in the targets database (console column)',
      );
    return check;
  }

  private async reset(): Promise<void> {
    const line = createResetLine(this.o.target, { ...this.o.reset, log: this.o.log });
    this.resetLine = line;
    this.log('info', `resetting ${this.o.target.name} through ${line.describe()}`);
    await this.raceAbort(line.pulse());
  }

  /** Runs the boot check; false when there is none to run. */
  private async checkBoot(check: BootCheck): Promise<boolean> {
    if (check.kind === 'none') {
      this.log('info', 'boot check skipped (none)');
      return false;
    }
    const { target, timeouts } = this.o;
    const spec = this.o.bootCheck;
    await this.inPhase('boot', async () => {
      this.log('info', `waiting for ${spec} on ${target.ip} (up to ${timeouts.boot} s)`);
      const boot = await waitForBoot(check, target.ip, {
        timeoutMs: timeouts.boot * 1000,
        signal: this.abort.signal,
        log: this.o.log,
        ...(this.console ? { console: this.console } : {}),
        ...(this.consoleSince !== undefined ? { consoleSince: this.consoleSince } : {}),
      });
      this.throwIfCancelled();
      if (!boot.ok)
        throw new CodedError(
          'BOOT_TIMEOUT',
          `the new system did not answer ${spec} on ${target.ip} within ${timeouts.boot} s`,
        );
      const how = boot.line !== undefined ? `matched "${boot.line}"` : 'answered';
      this.log('info', `booted: ${spec} ${how} after ${(boot.ms / 1000).toFixed(1)} s`);
    });
    return true;
  }

  /** The text as the job may show it: every secret replaced. */
  private redacted(text: string): string {
    return this.secrets.reduce((t, secret) => t.replaceAll(secret, '<secret>'), text);
  }

  private log(level: LogEvent['level'], text: string, source: LogEvent['source'] = 'agent'): void {
    const message = this.redacted(text);
    this.o.log[level](message, { phase: this.phase, ...(source !== 'agent' ? { source } : {}) });
    this.keepLogLine(
      `${new Date().toISOString()} ${level.padEnd(5)} ${this.phase.padEnd(8)} ${source.padEnd(7)} ${message}`,
    );
    this.o.emit({ type: 'log', job: this.o.id, level, source, phase: this.phase, message, time: Date.now() });
  }

  private async inPhase<T>(phase: Phase, body: () => T | Promise<T>): Promise<T> {
    this.phase = phase;
    const started = performance.now();
    this.o.emit({ type: 'phase', job: this.o.id, phase, state: 'start' });
    try {
      return await body();
    } finally {
      const seconds = Math.round(performance.now() - started) / 1000;
      this.timings[phase] = seconds;
      this.o.emit({ type: 'phase', job: this.o.id, phase, state: 'end', seconds });
    }
  }

  /** Start capturing the board's console (when the target has one) before the reset. */
  private async openConsole(check: BootCheck): Promise<void> {
    const spec = this.o.target.console;
    if (!spec) return;
    try {
      this.console = await openConsole(spec, {
        log: this.o.log,
        onLine: (line, time) =>
          this.o.emit({
            type: 'log',
            job: this.o.id,
            level: 'info',
            source: 'console',
            phase: this.phase,
            message: this.redacted(line),
            time,
          }),
      });
      this.o.log.info('console capture started', { console: spec.kind });
    } catch (err) {
      // A console is a nice-to-have unless the boot check reads it.
      if (check.kind === 'console') throw err;
      this.log('warn', `no console capture: ${(err as Error).message}`);
    }
  }

  /** Bounded: a job that logs without end keeps its first lines and a count of the rest. */
  private keepLogLine(line: string): void {
    if (this.logLines.length < MAX_RECORD_LOG_LINES) this.logLines.push(line);
    else this.droppedLogLines++;
  }

  /** The job's record beside the agent's state: the result, its log and the console it saw. */
  private async keepRecord(result: JobResult): Promise<void> {
    if (!this.o.recordDir) return;
    try {
      await mkdir(this.o.recordDir, { recursive: true });
      const record = {
        ...result,
        layout: this.o.layoutName,
        ...(this.o.holder !== undefined ? { holder: this.o.holder } : {}),
        startedAt: this.startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
        console: this.console?.stats(),
      };
      await writeFile(path.join(this.o.recordDir, `${this.o.id}.json`), JSON.stringify(record, null, 2) + '\n');
      const dropped = this.droppedLogLines ? [`… ${this.droppedLogLines} more lines not kept`] : [];
      await writeFile(path.join(this.o.recordDir, `${this.o.id}.log`), [...this.logLines, ...dropped, ''].join('\n'));
      if (this.console)
        await writeFile(path.join(this.o.recordDir, `${this.o.id}.console.log`), this.redacted(this.console.text()));
    } catch (err) {
      this.o.log.warn('could not keep the job record', { error: (err as Error).message });
    }
  }

  private throwIfCancelled(): void {
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
  }

  private raceAbort<T>(work: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => reject(this.abort.signal.reason);
      if (this.abort.signal.aborted) return onAbort();
      this.abort.signal.addEventListener('abort', onAbort, { once: true });
      work.then(resolve, reject).finally(() => this.abort.signal.removeEventListener('abort', onAbort));
    });
  }

  private notify(): void {
    this.lastActivity = Date.now();
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Wait until `ready()` holds, the board goes quiet for `quietSeconds`, or the job is aborted. */
  private async waitFor(ready: () => boolean, quietSeconds: number, onQuiet: () => Error): Promise<void> {
    while (!ready()) {
      this.throwIfCancelled();
      const left = Math.max(this.lastActivity, this.busyUntil) + quietSeconds * 1000 - Date.now();
      if (left <= 0) throw onQuiet();
      await new Promise<void>((resolve) => {
        // Whichever comes first (board activity, the 1 s tick, abort) removes the other two.
        const done = () => {
          clearTimeout(timer);
          this.abort.signal.removeEventListener('abort', done);
          if (this.wake === done) this.wake = undefined;
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 1000));
        this.abort.signal.addEventListener('abort', done, { once: true });
        this.wake = done;
      });
    }
  }
}
