/**
 * Turns what happens during a job — the action's own steps and the agent's `queued`, `phase`,
 * `progress` and `log` events — into the step log: one collapsible group per phase, progress lines
 * throttled to every 10 % or 10 s, and the queue position while waiting. Pure: the clock and the
 * writer are injected, so tests replay events and read the lines.
 */
import type { LogEvent, Phase, PhaseEvent, ProgressEvent, QueuedMessage } from '../protocol/messages.js';
import { formatBytes } from '../protocol/units.js';

/** The agent's phases plus the action's own first step. */
export type StoryPhase = 'connect' | Phase;

export const PHASE_TITLES: Record<StoryPhase, string> = {
  connect: 'Connect to the agent',
  queue: 'Wait for the target',
  upload: 'Upload the image',
  stage: 'Stage the job',
  reset: 'Reset the board',
  transfer: 'Transfer and write (board)',
  verify: 'Verify',
  boot: 'Boot check',
};

/** Where the story goes: `@actions/core` in the action, an array in tests. */
export interface StoryWriter {
  startGroup(title: string): void;
  endGroup(): void;
  info(line: string): void;
  debug(line: string): void;
}

export interface StoryOptions {
  writer: StoryWriter;
  /** Milliseconds; `Date.now` in the action. */
  clock?: () => number;
  /** Print progress each time it crosses a multiple of this percentage… */
  progressStepPercent?: number;
  /** …or when this long has passed since the last progress line. */
  progressIntervalMs?: number;
}

export type StoryEvent = Pick<QueuedMessage, 'type' | 'position' | 'holder'> | LogEvent | PhaseEvent | ProgressEvent;

interface ProgressState {
  lastBucket: number;
  lastPrintAt: number;
  startedAt: number;
  startDone: number;
  lastDone: number;
  part: number | undefined;
  finished: boolean;
}

export class JobStory {
  private readonly writer: StoryWriter;
  private readonly clock: () => number;
  private readonly stepPercent: number;
  private readonly intervalMs: number;
  private open: { phase: StoryPhase; startedAt: number } | undefined;
  private readonly seconds: Partial<Record<StoryPhase, number>> = {};
  private readonly progressByPhase = new Map<Phase, ProgressState>();
  private lastQueueLine = '';
  private last: StoryPhase | undefined;

  constructor(options: StoryOptions) {
    this.writer = options.writer;
    this.clock = options.clock ?? Date.now;
    this.stepPercent = options.progressStepPercent ?? 10;
    this.intervalMs = options.progressIntervalMs ?? 10_000;
  }

  /** The phase whose group is open, if any. */
  get currentPhase(): StoryPhase | undefined {
    return this.open?.phase;
  }

  /** The phase started last, open or not: where a failure happened. */
  get lastPhase(): StoryPhase | undefined {
    return this.last;
  }

  /** Seconds per phase that ended: the agent's figure when it sent one, else measured here. */
  timings(): Partial<Record<StoryPhase, number>> {
    return { ...this.seconds };
  }

  /** Opens the phase's group, closing the one before (GitHub groups do not nest). Repeats are ignored. */
  phaseStart(phase: StoryPhase): void {
    if (this.open?.phase === phase) return;
    this.phaseEnd();
    this.writer.startGroup(PHASE_TITLES[phase]);
    this.open = { phase, startedAt: this.clock() };
    this.last = phase;
  }

  /**
   * Ends `phase` (or whichever is open), recording its duration. `seconds` is the agent's own figure;
   * without it the story measures from its own `phaseStart`.
   */
  phaseEnd(phase?: StoryPhase, seconds?: number): void {
    if (phase !== undefined && this.open?.phase !== phase) {
      if (seconds !== undefined) this.seconds[phase] = seconds;
      return;
    }
    if (!this.open) return;
    const took = seconds ?? (this.clock() - this.open.startedAt) / 1000;
    this.seconds[this.open.phase] = took;
    this.writer.info(`${this.open.phase} finished in ${took.toFixed(1)} s`);
    this.writer.endGroup();
    this.open = undefined;
  }

  /** Closes any open group: call from `finally` so a failure does not leave the log inside a group. */
  close(): void {
    if (!this.open) return;
    this.writer.endGroup();
    this.open = undefined;
  }

  /** One line outside the throttle (the action's own messages). */
  line(text: string): void {
    this.writer.info(text);
  }

  handle(event: StoryEvent): void {
    switch (event.type) {
      case 'queued':
        return this.queued(event.position, event.holder);
      case 'phase':
        return event.state === 'start' ? this.phaseStart(event.phase) : this.phaseEnd(event.phase, event.seconds);
      case 'progress':
        return this.progress(event.phase, event.done, event.total, event.part, event.parts);
      case 'log':
        return this.log(event);
    }
  }

  queued(position: number, holder?: string): void {
    this.phaseStart('queue');
    const line = `Target busy: position ${position} in line${holder ? ` (held by ${holder})` : ''}`;
    if (line === this.lastQueueLine) return;
    this.lastQueueLine = line;
    this.writer.info(line);
  }

  /**
   * Byte (or item) progress of a phase. Printed when it crosses the next step (10 %, 20 %…), when
   * the interval has passed since the last line, and once at completion.
   */
  progress(phase: Phase, done: number, total?: number, part?: number, parts?: number): void {
    const now = this.clock();
    let state = this.progressByPhase.get(phase);
    // A count that goes backwards starts a new run (a retried upload, or per-part counts for the next part).
    if (!state || done < state.lastDone || (part !== undefined && part !== state.part)) {
      state = {
        lastBucket: -1,
        lastPrintAt: -Infinity,
        startedAt: now,
        startDone: done,
        lastDone: done,
        part,
        finished: false,
      };
      this.progressByPhase.set(phase, state);
    }
    state.lastDone = done;
    if (state.finished) return;
    const known = total !== undefined && total > 0;
    const percent = known ? Math.min(100, (done / total) * 100) : undefined;
    const bucket = percent === undefined ? state.lastBucket : Math.floor(percent / this.stepPercent);
    const complete = known && done >= total;
    const due = complete || bucket > state.lastBucket || now - state.lastPrintAt >= this.intervalMs;
    if (!due) return;
    // Rate from the first report on, so resumed uploads are not credited with bytes sent earlier.
    const elapsed = (now - state.startedAt) / 1000;
    const rate = elapsed > 0 ? ` at ${((done - state.startDone) / elapsed / 1e6).toFixed(1)} MB/s` : '';
    const partText = part !== undefined ? `part ${part}${parts !== undefined ? `/${parts}` : ''}: ` : '';
    const amount = known
      ? `${percent!.toFixed(0)} % (${formatBytes(done)} of ${formatBytes(total)})`
      : formatBytes(done);
    this.writer.info(`${phase}: ${partText}${amount}${rate}`);
    state.lastBucket = bucket;
    state.lastPrintAt = now;
    state.finished = complete;
  }

  private log(event: LogEvent): void {
    const text = event.source === 'agent' ? event.message : `[${event.source}] ${event.message}`;
    if (event.level === 'debug') this.writer.debug(text);
    else this.writer.info(event.level === 'info' ? text : `${event.level}: ${text}`);
  }
}
