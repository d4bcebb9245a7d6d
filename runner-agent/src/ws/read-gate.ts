/**
 * What one client can make the agent hold is bounded here. Reading from a client stops while
 * anything holds its gate: its send buffer past the limit (it sends requests but reads none of the
 * replies), or the handler (an upload whose writes lag behind what the client sends). Not reading
 * is the backpressure TCP already has: the client's own sends block, and nothing more is taken in.
 *
 * Pausing does not stop what the agent sends on its own (a running job's events), so a client whose
 * send buffer passes twice the limit anyway is dropped: it has read nothing for megabytes.
 */
import type { WebSocket } from 'ws';
import type { Logger } from '../log.js';

export type Hold = 'send-buffer' | 'handler';

/** How often a gate held for the send buffer looks whether the client has read its replies. */
const DRAIN_POLL_MS = 50;

export class ReadGate {
  private readonly holds = new Set<Hold>();
  private drainPoll?: NodeJS.Timeout;

  constructor(
    private readonly ws: WebSocket,
    /** Bytes queued for the client past which reading stops; twice this drops the connection. */
    private readonly limit: number,
    private readonly log: Logger,
    /**
     * The client read some of its replies. While reading from it is paused its pongs go unread, so
     * this is the only sign that it is alive: one that reads slowly is not silent.
     */
    private readonly onProgress: () => void,
  ) {}

  has(hold: Hold): boolean {
    return this.holds.has(hold);
  }

  hold(hold: Hold): void {
    if (this.holds.size === 0) this.ws.pause();
    this.holds.add(hold);
  }

  release(hold: Hold): void {
    if (!this.holds.delete(hold)) return;
    if (this.holds.size === 0) this.ws.resume();
  }

  /** Queue one text frame, then hold or drop the client when its unread replies pile up. */
  send(text: string): void {
    this.ws.send(text);
    const buffered = this.ws.bufferedAmount;
    if (buffered > 2 * this.limit) {
      this.log.warn('client reads none of its replies; connection dropped', { buffered, limit: this.limit });
      this.close();
      this.ws.terminate();
      return;
    }
    if (buffered <= this.limit || this.holds.has('send-buffer')) return;
    this.log.warn('client does not read its replies; reading from it paused', { buffered, limit: this.limit });
    this.hold('send-buffer');
    // ws has no public drain event: look until the client has read half of what waits for it.
    let last = buffered;
    this.drainPoll = setInterval(() => {
      const now = this.ws.bufferedAmount;
      if (now < last) this.onProgress();
      last = now;
      if (now > this.limit / 2) return;
      clearInterval(this.drainPoll);
      this.drainPoll = undefined;
      this.log.info('client read its replies; reading from it resumed', { buffered: this.ws.bufferedAmount });
      this.release('send-buffer');
    }, DRAIN_POLL_MS);
    this.drainPoll.unref();
  }

  /** The connection is over: stop watching it. */
  close(): void {
    clearInterval(this.drainPoll);
    this.drainPoll = undefined;
  }
}
