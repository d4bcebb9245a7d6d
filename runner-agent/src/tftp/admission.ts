/**
 * Which requests get a transfer: at most `maxPerClient` at once from one client address and
 * `maxTransfers` in all, so no peer can make the server hold sockets, file handles and buffers
 * without bound.
 *
 * A full server is not simply closed to newcomers, or whoever fills it first would keep everyone
 * out. A new request takes the slot of a transfer that is doing nothing, the way a SYN backlog
 * drops half-open connections: first the oldest "unconfirmed" one, whose peer has not sent a
 * single packet to its TID (a spoofed source, a flood, a client gone); then the one that has made
 * no progress for longest, if that is at least its retransmission timeout (a client that answered
 * once and went silent). A real client answers within a round trip and then acknowledges blocks
 * far more often than its timeout, so it is never the one to go. Only when every slot is held by
 * a transfer that moves is the request refused.
 */

export interface AdmissionLimits {
  maxTransfers: number;
  maxPerClient: number;
}

/** A transfer's claim on the limits, from its request until it ends. */
export interface Slot {
  /** The peer sent a packet to the transfer's TID: it receives what we send. */
  confirm(): void;
  /** The transfer moved on (a new block acknowledged or received). */
  progress(): void;
  /** How long without progress makes the transfer stalled: its retransmission timeout. */
  stallAfter(ms: number): void;
  /** The transfer ended (idempotent; an evicted slot is already released). */
  release(): void;
}

interface Held extends Slot {
  readonly address: string;
  confirmed: boolean;
  progressAt: number;
  stallMs: number;
  released: boolean;
  /** Ends the transfer whose slot was given to a newcomer. */
  readonly evict: () => void;
}

export class Admission {
  /** Every held slot, oldest first (a Set keeps insertion order). */
  private readonly held = new Set<Held>();
  /** Per client address, oldest first. */
  private readonly byAddress = new Map<string, Set<Held>>();

  constructor(
    private readonly limits: AdmissionLimits,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Transfers held right now, in all and for one address. */
  get size(): number {
    return this.held.size;
  }
  count(address: string): number {
    return this.byAddress.get(address)?.size ?? 0;
  }

  /**
   * A slot for a request from `address`, evicting an idle transfer if that makes room; else the
   * reason for the refusal. `evict` is called (synchronously) if this slot is later given away.
   * `stallMs` is the retransmission timeout until the transfer negotiates its own.
   */
  claim(address: string, stallMs: number, evict: () => void): Slot | string {
    const mine = this.byAddress.get(address);
    if (mine && mine.size >= this.limits.maxPerClient && !this.evictIdlest(mine))
      return `too many transfers from ${address} at once (${this.limits.maxPerClient}); try again later`;
    if (this.held.size >= this.limits.maxTransfers && !this.evictIdlest(this.held))
      return `server busy (${this.limits.maxTransfers} transfers at once); try again later`;
    const slot: Held = {
      address,
      confirmed: false,
      progressAt: this.now(),
      stallMs,
      released: false,
      evict,
      confirm: () => void (slot.confirmed = true),
      progress: () => void (slot.progressAt = this.now()),
      stallAfter: (ms) => void (slot.stallMs = ms),
      release: () => this.release(slot),
    };
    this.held.add(slot);
    let set = this.byAddress.get(address);
    if (!set) this.byAddress.set(address, (set = new Set()));
    set.add(slot);
    return slot;
  }

  /** Frees the slot in `from` most worth giving away; false when every transfer there moves. */
  private evictIdlest(from: Set<Held>): boolean {
    const now = this.now();
    let victim: Held | undefined;
    let idlest = 0;
    for (const slot of from) {
      if (!slot.confirmed) {
        victim = slot; // the oldest unconfirmed: nothing beats it
        break;
      }
      const idle = now - slot.progressAt;
      if (idle >= slot.stallMs && idle > idlest) {
        victim = slot;
        idlest = idle;
      }
    }
    if (!victim) return false;
    this.release(victim);
    victim.evict();
    return true;
  }

  private release(slot: Held): void {
    if (slot.released) return;
    slot.released = true;
    this.held.delete(slot);
    const set = this.byAddress.get(slot.address);
    set?.delete(slot);
    if (set?.size === 0) this.byAddress.delete(slot.address);
  }
}
