/**
 * Leases: one holder per target at a time, the others wait in a FIFO queue and are told their
 * position whenever it changes (labgrid's "places are leased").
 */
import { randomBytes } from 'node:crypto';
import { CodedError } from '../../../src/protocol/errors.js';

export interface Lease {
  readonly id: string;
  readonly target: string;
  readonly holder: string;
  readonly since: number;
}

interface Waiter {
  holder: string;
  onPosition: (position: number, holder: string | undefined) => void;
  resolve: (lease: Lease) => void;
  reject: (err: unknown) => void;
}

interface Place {
  current?: Lease;
  queue: Waiter[];
}

export function newId(bytes = 8): string {
  // Lower-case base32-ish: safe in TFTP paths and log lines.
  return randomBytes(bytes).toString('hex');
}

export class LeaseManager {
  private readonly places = new Map<string, Place>();
  private readonly byId = new Map<string, Lease>();
  private closed = false;

  private place(target: string): Place {
    let p = this.places.get(target);
    if (!p) {
      p = { queue: [] };
      this.places.set(target, p);
    }
    return p;
  }

  /**
   * Wait for the target. `onPosition` is called with the queue position (1 = next) each time it
   * changes while waiting. Aborting the signal leaves the queue.
   */
  acquire(
    target: string,
    holder: string,
    o: { signal?: AbortSignal; onPosition?: (position: number, holder: string | undefined) => void } = {},
  ): Promise<Lease> {
    if (this.closed)
      return Promise.reject(new CodedError('SHUTTING_DOWN', 'the agent is stopping and takes no new leases'));
    const place = this.place(target);
    if (!place.current && place.queue.length === 0) return Promise.resolve(this.grant(place, target, holder));
    return new Promise<Lease>((resolve, reject) => {
      const waiter: Waiter = { holder, onPosition: o.onPosition ?? (() => {}), resolve, reject };
      place.queue.push(waiter);
      waiter.onPosition(place.queue.length, place.current?.holder);
      o.signal?.addEventListener(
        'abort',
        () => {
          const i = place.queue.indexOf(waiter);
          if (i < 0) return;
          place.queue.splice(i, 1);
          reject(o.signal!.reason ?? new CodedError('CANCELLED', 'left the queue'));
          this.announce(place);
        },
        { once: true },
      );
    });
  }

  private grant(place: Place, target: string, holder: string): Lease {
    const lease: Lease = { id: newId(), target, holder, since: Date.now() };
    place.current = lease;
    this.byId.set(lease.id, lease);
    return lease;
  }

  private announce(place: Place): void {
    place.queue.forEach((w, i) => w.onPosition(i + 1, place.current?.holder));
  }

  get(id: string): Lease | undefined {
    return this.byId.get(id);
  }

  holderOf(target: string): Lease | undefined {
    return this.places.get(target)?.current;
  }

  queueLength(target: string): number {
    return this.places.get(target)?.queue.length ?? 0;
  }

  /** End a lease; the next waiter (if any) gets the target. Releasing twice is harmless. */
  release(id: string): void {
    const lease = this.byId.get(id);
    if (!lease) return;
    this.byId.delete(id);
    const place = this.place(lease.target);
    if (place.current?.id !== id) return;
    place.current = undefined;
    const next = place.queue.shift();
    if (next) {
      next.resolve(this.grant(place, lease.target, next.holder));
      this.announce(place);
    }
  }

  /** Refuse new leases and fail every waiter; current leases are ended by their owners. */
  close(): void {
    this.closed = true;
    for (const place of this.places.values()) {
      for (const w of place.queue.splice(0)) w.reject(new CodedError('SHUTTING_DOWN', 'the agent is stopping'));
    }
  }

  active(): Lease[] {
    return [...this.byId.values()];
  }
}
