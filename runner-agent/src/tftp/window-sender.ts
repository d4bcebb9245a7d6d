/**
 * The sending side of a transfer (server RRQ, client WRQ): windows of DATA blocks (RFC 7440;
 * windowsize 1 is plain RFC 1350 lock-step), driven by ACKs and one timer.
 *
 * - ACK of the window's last block → next window.
 * - ACK of an earlier block of the window (the receiver saw a gap) → restart right after it.
 * - ACK of an already acknowledged block → ignored: answering duplicates is the Sorcerer's Apprentice bug.
 * - Timeout → resend from the block after the last ACK; give up after `retries` resends in a row.
 */
import { frame, type BlockSource } from './block-source.js';
import { TftpError } from './errors.js';
import { TftpErrorCode } from './packets.js';

export interface SenderLink {
  /** Sends one DATA packet (header included); `block` is its number, 1-based and not wrapped. */
  sendData(block: number, packet: Buffer): void;
  /** Re-sends the packet that opens the transfer (an OACK), when the first ACK is for block 0. */
  resendOpening?(): void;
}

export interface WindowSenderOptions {
  source: BlockSource;
  link: SenderLink;
  windowsize: number;
  timeoutMs: number;
  retries: number;
  /** True when an OACK was sent and the receiver must ACK block 0 before data flows. */
  awaitAck0: boolean;
  /** Called as blocks are acknowledged, with the bytes the receiver holds. */
  onAcked?(bytes: number): void;
  /** Test-only fault injection: may replace a block's payload (see TftpServerOptions.faults). */
  corrupt?(block: number, payload: Buffer): Buffer | undefined;
}

export class WindowSender {
  /** Highest block the receiver acknowledged (absolute, 0 = none / the OACK). */
  private acked = 0;
  /** Highest block sent in the current window (absolute). */
  private sentTo = 0;
  private attempts = 0;
  private timer?: NodeJS.Timeout;
  private settled = false;
  /** Bumped on every (re)send so a window waiting for disk data can tell it was superseded. */
  private generation = 0;
  private readingDisk = false;
  /** Retransmissions after a timeout, over the whole transfer (a health figure for logs). */
  timeouts = 0;
  private resolve!: () => void;
  private reject!: (err: Error) => void;
  readonly done: Promise<void>;

  constructor(private readonly o: WindowSenderOptions) {
    this.done = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  start(): void {
    this.timer = setTimeout(() => this.onTimeout(), this.o.timeoutMs);
    if (!this.o.awaitAck0) this.sendWindow(1);
  }

  /** Handles an ACK; `block` is the 16-bit number from the packet. */
  onAck(block: number): void {
    if (this.settled) return;
    if (this.o.awaitAck0 && this.sentTo === 0) {
      if (block !== 0) return;
      this.o.awaitAck0 = false;
      this.attempts = 0;
      this.sendWindow(1);
      return;
    }
    // Which outstanding block does this 16-bit number name? Windows are far shorter than 65536 blocks.
    const ahead = (block - this.acked) & 0xffff;
    if (ahead === 0 || ahead > this.sentTo - this.acked) return; // duplicate, old, or never sent
    this.acked += ahead;
    this.attempts = 0;
    this.o.onAcked?.(Math.min(this.acked * this.o.source.blksize, this.o.source.size));
    if (this.acked === this.o.source.blocks) {
      this.finish();
      return;
    }
    this.sendWindow(this.acked + 1);
  }

  /** Ends the transfer with an error (peer sent ERROR, socket failed, server closing). */
  abort(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.reject(err);
  }

  private finish(): void {
    this.settled = true;
    clearTimeout(this.timer);
    this.resolve();
  }

  private onTimeout(): void {
    if (this.settled) return;
    if (this.readingDisk) {
      this.timer!.refresh();
      return;
    }
    if (this.attempts >= this.o.retries) {
      this.abort(
        new TftpError(
          `no ACK after ${this.attempts + 1} tries of ${this.o.timeoutMs} ms (last ACK: block ${this.acked})`,
          TftpErrorCode.NOT_DEFINED,
        ),
      );
      return;
    }
    this.attempts++;
    this.timeouts++;
    if (this.o.awaitAck0 && this.sentTo === 0) {
      this.o.link.resendOpening?.();
      this.timer!.refresh();
      return;
    }
    this.sendWindow(this.acked + 1);
  }

  private sendWindow(from: number): void {
    const { source } = this.o;
    const to = Math.min(from + this.o.windowsize - 1, source.blocks);
    const generation = ++this.generation;
    const loading = source.load(from, to);
    if (loading === undefined) {
      this.transmit(from, to);
      return;
    }
    // A slow disk is not the receiver's fault: timeouts do not count while reading.
    this.readingDisk = true;
    loading.then(
      () => {
        this.readingDisk = false;
        if (!this.settled && generation === this.generation) this.transmit(from, to);
      },
      (err: unknown) =>
        this.abort(
          new TftpError(`reading the file failed: ${(err as Error).message ?? err}`, TftpErrorCode.NOT_DEFINED),
        ),
    );
  }

  private transmit(from: number, to: number): void {
    const { source, link } = this.o;
    for (let n = from; n <= to; n++) {
      let packet = source.packet(n);
      if (!packet) {
        // A source that lost a block it said it held: end this transfer, not the process.
        this.abort(new TftpError(`block ${n} is not in memory`, TftpErrorCode.NOT_DEFINED));
        return;
      }
      if (this.o.corrupt) {
        const replaced = this.o.corrupt(n, packet.subarray(4));
        if (replaced) packet = frame(n, replaced);
      }
      link.sendData(n, packet);
    }
    this.sentTo = to;
    this.timer!.refresh();
  }
}
