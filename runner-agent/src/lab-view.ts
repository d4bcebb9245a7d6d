/**
 * The lab as its onlookers see it: one read-only snapshot (boards, leases, queues, running jobs,
 * the last jobs) and one event feed (something changed, a job's log line, a job's end, bytes
 * uploaded or served). The agent service feeds it; the dashboard and the metrics only read it, so
 * neither reaches into the service's sessions, and what they can make the agent keep is bounded
 * here: a log tail per running job and a short list of finished jobs.
 *
 * Listeners run synchronously inside the agent's own work (a job's event, an upload frame): they
 * must be cheap and must not throw; one that throws is logged and the work goes on.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ErrorCode } from '../../src/protocol/errors.js';
import type { JobResult, LogEvent, Phase, PhaseEvent, ProgressEvent } from '../../src/protocol/messages.js';
import type { BoardState, BoardStatus } from './lab/board-states.js';
import type { Logger } from './log.js';

/** Lines of a running job's log kept for a dashboard that opens mid-job. */
export const LOG_TAIL_LINES = 300;
/** Finished jobs the snapshot lists, newest first. */
export const RECENT_JOBS = 30;

export interface LogLine {
  time: number;
  level: LogEvent['level'];
  source: LogEvent['source'];
  phase?: Phase;
  message: string;
}

export interface JobProgress {
  phase: Phase;
  done: number;
  total?: number;
  part?: number;
  parts?: number;
}

export interface RunningJobView {
  id: string;
  target: string;
  holder: string;
  /** Epoch milliseconds. */
  startedAt: number;
  phase?: Phase;
  progress?: JobProgress;
}

export interface FinishedJobView {
  id: string;
  target: string;
  holder?: string;
  ok: boolean;
  code: ErrorCode;
  message: string;
  startedAt?: number;
  finishedAt: number;
  /** Seconds, the phases added up. */
  seconds: number;
}

export interface BoardView {
  name: string;
  model?: string;
  mac: string;
  ip: string;
  /** The pools (`label:<label>`) the board is in. */
  labels: string[];
  state: BoardState;
  /** Epoch milliseconds when the board entered `state`, when known. */
  stateSince?: number;
  reason?: string;
  lease?: { holder: string; since: number };
  /** The id of the job running on the board. */
  job?: string;
  /** Lease requests waiting for this board. */
  queue: number;
}

export interface LabSnapshot {
  /** Epoch milliseconds when the snapshot was taken. */
  now: number;
  boards: BoardView[];
  /** Each label some board carries: its boards, and the requests waiting for any of them. */
  pools: Array<{ name: string; boards: number; queue: number }>;
  running: RunningJobView[];
  recent: FinishedJobView[];
}

export type LabEvent =
  | { type: 'changed' }
  | { type: 'log'; job: string; target: string; line: LogLine }
  | { type: 'job-ended'; job: FinishedJobView; result: JobResult }
  | { type: 'uploaded'; bytes: number }
  | { type: 'tftp-served'; bytes: number };

export type LabListener = (event: LabEvent) => void;

/** What the feed reads from the service to build a snapshot. */
export interface LabSource {
  targets(): ReadonlyArray<{ name: string; model?: string; mac: string; ip: string; labels?: readonly string[] }>;
  leaseOf(target: string): { holder: string; since: number } | undefined;
  queueLength(target: string): number;
  /** Requests waiting for any board of a pool, when the service knows pools. */
  poolQueueLength?(pool: string): number;
  /** The board's kept state (lab/board-states.ts), when the agent keeps one. */
  boardStatus?(target: string): BoardStatus | undefined;
}

interface RunningJob extends RunningJobView {
  log: LogLine[];
}

export class LabFeed {
  private readonly listeners = new Set<LabListener>();
  private readonly running = new Map<string, RunningJob>();
  private recent: FinishedJobView[] = [];

  constructor(
    private readonly source: LabSource,
    private readonly log: Logger,
  ) {}

  /** Call `listener` on every event; the returned function unsubscribes. */
  subscribe(listener: LabListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(event: LabEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch (err) {
        this.log.error('a lab listener failed', { event: event.type, error: (err as Error)?.stack ?? String(err) });
      }
    }
  }

  /** A lease, a queue or a board's state changed. */
  changed(): void {
    this.emit({ type: 'changed' });
  }

  uploaded(bytes: number): void {
    this.emit({ type: 'uploaded', bytes });
  }

  tftpServed(bytes: number): void {
    this.emit({ type: 'tftp-served', bytes });
  }

  jobStarted(job: { id: string; target: string; holder: string }): void {
    this.running.set(job.id, { ...job, startedAt: Date.now(), log: [] });
    this.changed();
  }

  /** One of the job's events, as its client gets it. */
  jobEvent(jobId: string, event: Omit<LogEvent, 're'> | Omit<PhaseEvent, 're'> | Omit<ProgressEvent, 're'>): void {
    const job = this.running.get(jobId);
    if (!job) return;
    if (event.type === 'log') {
      const line: LogLine = {
        time: event.time,
        level: event.level,
        source: event.source,
        message: event.message,
        ...(event.phase ? { phase: event.phase } : {}),
      };
      job.log.push(line);
      if (job.log.length > LOG_TAIL_LINES) job.log.splice(0, job.log.length - LOG_TAIL_LINES);
      this.emit({ type: 'log', job: jobId, target: job.target, line });
    } else if (event.type === 'phase') {
      if (event.state === 'start') {
        job.phase = event.phase;
        delete job.progress;
        this.changed();
      }
    } else {
      const { phase, done, total, part, parts } = event;
      job.progress = { phase, done, ...(total !== undefined ? { total } : {}), ...(part ? { part, parts } : {}) };
      this.changed();
    }
  }

  /** `result` is undefined only for a job whose run() threw instead of settling (a bug): it just leaves. */
  jobEnded(jobId: string, result: JobResult | undefined): void {
    const job = this.running.get(jobId);
    this.running.delete(jobId);
    if (!result) return this.changed();
    const finished: FinishedJobView = {
      id: result.job,
      target: result.target.name,
      ok: result.ok,
      code: result.code,
      message: result.message,
      finishedAt: Date.now(),
      seconds: Object.values(result.timings).reduce((a, b) => a + (b ?? 0), 0),
      ...(job ? { holder: job.holder, startedAt: job.startedAt } : {}),
    };
    this.addRecent(finished);
    this.emit({ type: 'job-ended', job: finished, result });
    this.changed();
  }

  private addRecent(job: FinishedJobView): void {
    this.recent = [job, ...this.recent.filter((j) => j.id !== job.id)]
      .sort((a, b) => b.finishedAt - a.finishedAt)
      .slice(0, RECENT_JOBS);
  }

  /** The running job's log tail (a copy), or undefined when it is not running. */
  logTail(jobId: string): LogLine[] | undefined {
    return this.running.get(jobId)?.log.slice();
  }

  snapshot(): LabSnapshot {
    const jobsByTarget = new Map([...this.running.values()].map((j) => [j.target, j]));
    const pools = new Map<string, number>();
    const boards = this.source.targets().map((t): BoardView => {
      const lease = this.source.leaseOf(t.name);
      const job = jobsByTarget.get(t.name);
      const kept = this.source.boardStatus?.(t.name);
      for (const label of t.labels ?? []) pools.set(label, (pools.get(label) ?? 0) + 1);
      return {
        name: t.name,
        mac: t.mac,
        ip: t.ip,
        ...(t.model ? { model: t.model } : {}),
        labels: [...(t.labels ?? [])],
        // A running job's phase is known here first; between jobs the kept state (maintenance…) rules.
        state: job ? derivedState(lease, job) : (kept?.state ?? derivedState(lease, job)),
        ...(kept ? { stateSince: kept.since } : {}),
        ...(kept?.reason ? { reason: kept.reason } : {}),
        ...(lease ? { lease: { holder: lease.holder, since: lease.since } } : {}),
        ...(job ? { job: job.id } : {}),
        queue: this.source.queueLength(t.name),
      };
    });
    return {
      now: Date.now(),
      boards,
      pools: [...pools].map(([name, count]) => ({
        name,
        boards: count,
        queue: this.source.poolQueueLength?.(name) ?? 0,
      })),
      running: [...this.running.values()].map((j) => ({
        id: j.id,
        target: j.target,
        holder: j.holder,
        startedAt: j.startedAt,
        ...(j.phase ? { phase: j.phase } : {}),
        ...(j.progress ? { progress: { ...j.progress } } : {}),
      })),
      recent: this.recent.slice(),
    };
  }

  /**
   * Fill the last jobs from the records an earlier run left in `<stateDir>/jobs/`, so a restarted
   * agent's dashboard is not empty. Only the newest RECENT_JOBS records are read.
   */
  async loadRecords(dir: string): Promise<void> {
    let names: string[];
    try {
      names = (await readdir(dir)).filter((n) => /^[0-9a-f]+\.json$/.test(n));
    } catch {
      return;
    }
    const dated = await Promise.all(
      names.map(async (n) => ({ n, mtime: (await stat(path.join(dir, n)).catch(() => undefined))?.mtimeMs ?? 0 })),
    );
    dated.sort((a, b) => b.mtime - a.mtime);
    for (const { n } of dated.slice(0, RECENT_JOBS)) {
      try {
        const r = JSON.parse(await readFile(path.join(dir, n), 'utf8')) as JobRecordFields;
        if (typeof r.job !== 'string' || typeof r.code !== 'string' || !r.target?.name) continue;
        const finishedAt = Date.parse(r.finishedAt ?? '') || 0;
        const startedAt = Date.parse(r.startedAt ?? '');
        this.addRecent({
          id: r.job,
          target: r.target.name,
          ok: r.ok === true,
          code: r.code,
          message: typeof r.message === 'string' ? r.message : '',
          finishedAt,
          seconds: Object.values(r.timings ?? {}).reduce<number>((a, b) => a + (typeof b === 'number' ? b : 0), 0),
          ...(typeof r.holder === 'string' ? { holder: r.holder } : {}),
          ...(Number.isFinite(startedAt) ? { startedAt } : {}),
        });
      } catch (err) {
        this.log.warn('unreadable job record skipped', { file: n, error: (err as Error).message });
      }
    }
  }
}

interface JobRecordFields {
  job?: unknown;
  code?: ErrorCode;
  ok?: unknown;
  message?: unknown;
  target?: { name?: string };
  timings?: Record<string, unknown>;
  finishedAt?: string;
  startedAt?: string;
  holder?: unknown;
}

/** The state a board is in by what the service knows, when no board-state file says otherwise. */
function derivedState(lease: unknown, job: RunningJob | undefined): BoardState {
  if (job) return job.phase === 'boot' ? 'booting' : 'flashing';
  return lease ? 'leased' : 'idle';
}
