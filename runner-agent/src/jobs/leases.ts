/**
 * Leases: one holder per target at a time (labgrid's "places are leased"). A request names either
 * one board or a pool (`label:<label>`: any board whose targets row carries the label). Requests
 * that cannot be granted at once wait, each told its position whenever it changes.
 *
 * Fairness: every waiter gets a sequence number when it arrives, and a board that comes free goes
 * to the earliest waiter that can take it — a waiter for that board by name, or for a pool the
 * board is in. One order across both kinds means neither starves the other: a pool waiter that came
 * first gets the board before a later named waiter, and the other way round. A pool waiter takes
 * the first board (in the targets database's order) that is free and available.
 *
 * Availability (board states: unhealthy, maintenance) is the caller's: `availability(board)`
 * returns the error that refuses the board, or undefined. A request that no available board can
 * ever serve is refused at once with that error, never queued; a waiter whose boards all become
 * unavailable while it waits is refused then (`recheck()`). A `bypass` request (the health check)
 * takes a board whatever its availability: the check is what makes it available again.
 */
import { randomBytes } from 'node:crypto';
import { CodedError } from '../../../src/protocol/errors.js';

export interface Lease {
  readonly id: string;
  readonly target: string;
  readonly holder: string;
  readonly since: number;
}

/** What a request asks for: one board, or any board of a pool. */
export type LeaseWant = { board: string } | { label: string };

/** The prefix of a `target` that names a pool: `label:pi4`. */
export const LABEL_PREFIX = 'label:';

interface Waiter {
  seq: number;
  want: LeaseWant;
  holder: string;
  bypass: boolean;
  onPosition: (position: number, holder: string | undefined) => void;
  /** The last position told, so a waiter hears only changes. */
  told?: number;
  resolve: (lease: Lease) => void;
  reject: (err: unknown) => void;
}

export interface LeaseManagerOptions {
  /** The boards of a pool, in the targets database's order; empty for a label nobody carries. */
  boardsWithLabel?: (label: string) => readonly string[];
  /** The error that refuses new leases on a board (unhealthy, maintenance), or undefined when it may be leased. */
  availability?: (board: string) => CodedError | undefined;
}

export interface AcquireOptions {
  signal?: AbortSignal;
  onPosition?: (position: number, holder: string | undefined) => void;
  /** Take the board whatever its availability (the health check). Only for a named board. */
  bypass?: boolean;
}

export function newId(bytes = 8): string {
  // Lower-case base32-ish: safe in TFTP paths and log lines.
  return randomBytes(bytes).toString('hex');
}

export class LeaseManager {
  private readonly current = new Map<string, Lease>();
  private readonly byId = new Map<string, Lease>();
  /** Every waiter, in arrival order. */
  private queue: Waiter[] = [];
  private seq = 0;
  private closed = false;
  private readonly boardsWithLabel: (label: string) => readonly string[];
  private readonly availability: (board: string) => CodedError | undefined;

  constructor(o: LeaseManagerOptions = {}) {
    this.boardsWithLabel = o.boardsWithLabel ?? (() => []);
    this.availability = o.availability ?? (() => undefined);
  }

  /** The boards a waiter could take, in the database's order. */
  private boardsOf(want: LeaseWant): readonly string[] {
    return 'board' in want ? [want.board] : this.boardsWithLabel(want.label);
  }

  /** Why no board of `want` can serve a new request, or undefined when one can (now or later). */
  private refusal(want: LeaseWant, bypass: boolean): CodedError | undefined {
    const boards = this.boardsOf(want);
    if ('label' in want && boards.length === 0)
      return new CodedError('UNKNOWN_LABEL', `no target in the agent's database has the label "${want.label}"`);
    if (bypass) return undefined;
    const refusals = boards.map((b) => this.availability(b));
    if (refusals.some((r) => r === undefined)) return undefined;
    if ('board' in want) return refusals[0];
    // Every board of the pool is out: say so with the code of the first; the message names them all.
    const first = refusals[0]!;
    return new CodedError(
      first.code,
      `every board with the label "${want.label}" is out of service: ${refusals.map((r) => r!.message).join('; ')}`,
    );
  }

  private canTake(w: Waiter, board: string): boolean {
    return w.bypass || this.availability(board) === undefined;
  }

  /**
   * Wait for a board (`target` a name) or for any board of a pool (`{ label }`). `onPosition` is
   * called with the queue position (1 = next) each time it changes while waiting. Aborting the signal
   * leaves the queue. A request no available board can serve is refused at once.
   */
  acquire(target: string | LeaseWant, holder: string, o: AcquireOptions = {}): Promise<Lease> {
    if (this.closed)
      return Promise.reject(new CodedError('SHUTTING_DOWN', 'the agent is stopping and takes no new leases'));
    const want: LeaseWant = typeof target === 'string' ? { board: target } : target;
    const bypass = Boolean(o.bypass) && 'board' in want;
    const refused = this.refusal(want, bypass);
    if (refused) return Promise.reject(refused);
    return new Promise<Lease>((resolve, reject) => {
      const waiter: Waiter = {
        seq: ++this.seq,
        want,
        holder,
        bypass,
        onPosition: o.onPosition ?? (() => {}),
        resolve,
        reject,
      };
      this.queue.push(waiter);
      // Earlier waiters come first: the new one gets a board now only if none of them can take it.
      this.dispatch();
      if (!this.queue.includes(waiter)) return;
      o.signal?.addEventListener(
        'abort',
        () => {
          if (!this.remove(waiter)) return;
          reject(o.signal!.reason ?? new CodedError('CANCELLED', 'left the queue'));
          this.announce();
        },
        { once: true },
      );
    });
  }

  private remove(w: Waiter): boolean {
    const i = this.queue.indexOf(w);
    if (i < 0) return false;
    this.queue.splice(i, 1);
    return true;
  }

  /** Give every free board to the earliest waiter that can take it, then tell the rest their positions. */
  private dispatch(): void {
    for (let i = 0; i < this.queue.length;) {
      const w = this.queue[i]!;
      const board = this.boardsOf(w.want).find((b) => !this.current.has(b) && this.canTake(w, b));
      if (board === undefined) {
        i += 1;
        continue;
      }
      this.queue.splice(i, 1);
      w.resolve(this.grant(board, w.holder));
    }
    this.announce();
  }

  private grant(target: string, holder: string): Lease {
    const lease: Lease = { id: newId(), target, holder, since: Date.now() };
    this.current.set(target, lease);
    this.byId.set(lease.id, lease);
    return lease;
  }

  /** Position = 1 + the earlier waiters that compete for one of the same boards. */
  private announce(): void {
    this.queue.forEach((w, i) => {
      const mine = new Set(this.boardsOf(w.want));
      const ahead = this.queue.slice(0, i).filter((o) => this.boardsOf(o.want).some((b) => mine.has(b))).length;
      const position = ahead + 1;
      if (w.told === position) return;
      w.told = position;
      const first = [...mine][0];
      w.onPosition(position, first === undefined ? undefined : this.current.get(first)?.holder);
    });
  }

  /**
   * Boards' availability or the pools changed (a board went into maintenance, a health check passed,
   * the targets were reloaded): refuse waiters nobody can serve any more, and hand out boards that
   * became available.
   */
  recheck(): void {
    for (const w of [...this.queue]) {
      const refused = this.refusal(w.want, w.bypass);
      if (!refused) continue;
      this.remove(w);
      w.reject(refused);
    }
    this.dispatch();
  }

  get(id: string): Lease | undefined {
    return this.byId.get(id);
  }

  holderOf(target: string): Lease | undefined {
    return this.current.get(target);
  }

  /** Waiters that could take this board (by name or through a pool). */
  queueLength(target: string): number {
    return this.queue.filter((w) => this.boardsOf(w.want).includes(target)).length;
  }

  /** Waiters for any board of a pool (`label:<label>`), for the dashboard and the metrics. */
  labelQueueLength(label: string): number {
    return this.queue.filter((w) => 'label' in w.want && w.want.label === label).length;
  }

  /** End a lease; the earliest waiter that can take the board gets it. Releasing twice is harmless. */
  release(id: string): void {
    const lease = this.byId.get(id);
    if (!lease) return;
    this.byId.delete(id);
    if (this.current.get(lease.target)?.id !== id) return;
    this.current.delete(lease.target);
    this.dispatch();
  }

  /** Refuse new leases and fail every waiter; current leases are ended by their owners. */
  close(): void {
    this.closed = true;
    for (const w of this.queue.splice(0)) w.reject(new CodedError('SHUTTING_DOWN', 'the agent is stopping'));
  }

  active(): Lease[] {
    return [...this.byId.values()];
  }
}
