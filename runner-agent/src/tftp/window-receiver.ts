/**
 * The receiving side of a transfer (client RRQ, server WRQ), following RFC 7440 §4:
 * ACK when a window's worth of blocks arrived in order, when the last (short) block arrives,
 * at once on a gap (ACK of the last in-order block, so the sender restarts after it), and on timeout.
 *
 * Old blocks (a sender that missed our ACK and resent) are answered with the current ACK, but at
 * most once per half timeout: a burst of duplicates must not turn into a burst of ACKs.
 */
import { TftpError } from './errors.js';
import { TftpErrorCode } from './packets.js';

export interface ReceiverLink {
  /** Sends an ACK; `block` is already wrapped to 16 bits. Block 0 may mean "re-send the opening". */
  sendAck(block: number): void;
}

export interface WindowReceiverOptions {
  link: ReceiverLink;
  blksize: number;
  windowsize: number;
  timeoutMs: number;
  retries: number;
  /** More bytes than this fail the transfer with error 3. */
  maxSize?: number;
  onData(chunk: Buffer, offset: number): void;
}

export class WindowReceiver {
  /** Negotiated after the receiver is made (the client learns them from the OACK). */
  blksize: number;
  windowsize: number;
  timeoutMs: number;
  /** Next block expected (absolute, not wrapped). */
  private expected = 1;
  /** Last block we acknowledged; a window is complete `windowsize` blocks after it. */
  private ackedTo = 0;
  private lastAckAt = 0;
  private bytes = 0;
  private attempts = 0;
  private timer?: NodeJS.Timeout;
  private settled = false;
  private resolve!: (bytes: number) => void;
  private reject!: (err: Error) => void;
  /** Resolves with the byte count once the last block arrived and was acknowledged. */
  readonly done: Promise<number>;

  constructor(private readonly o: WindowReceiverOptions) {
    this.blksize = o.blksize;
    this.windowsize = o.windowsize;
    this.timeoutMs = o.timeoutMs;
    this.done = new Promise<number>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  /** Starts the timeout clock (the opening packet has just been sent). */
  start(): void {
    this.timer = setTimeout(() => this.onTimeout(), this.timeoutMs);
  }

  get finished(): boolean {
    return this.settled;
  }

  onData(block: number, data: Buffer): void {
    const ahead = (block - this.expected) & 0xffff;
    if (ahead !== 0 || this.settled) {
      if (ahead < 0x8000 && !this.settled) this.ackGap();
      else this.ackDuplicate();
      return;
    }
    if (data.length > this.blksize) {
      this.fail(
        new TftpError(
          `block ${block} carries ${data.length} bytes, more than blksize ${this.blksize}`,
          TftpErrorCode.ILLEGAL_OPERATION,
        ),
      );
      return;
    }
    if (this.o.maxSize !== undefined && this.bytes + data.length > this.o.maxSize) {
      this.fail(new TftpError(`upload larger than the ${this.o.maxSize} bytes allowed`, TftpErrorCode.DISK_FULL));
      return;
    }
    try {
      this.o.onData(data, this.bytes);
    } catch (err) {
      this.fail(
        new TftpError(`storing block ${block} failed: ${(err as Error).message ?? err}`, TftpErrorCode.NOT_DEFINED),
      );
      return;
    }
    this.bytes += data.length;
    const received = this.expected++;
    this.attempts = 0;
    if (data.length < this.blksize) {
      this.ack(received);
      this.settled = true;
      clearTimeout(this.timer);
      this.resolve(this.bytes);
      return;
    }
    if (received - this.ackedTo >= this.windowsize) this.ack(received);
    this.timer!.refresh();
  }

  /** Ends the transfer with an error (peer sent ERROR, server closing, aborted). */
  fail(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.reject(err);
  }

  /** Stops the timer; further duplicates of the last block are still re-acknowledged (dallying). */
  stop(): void {
    clearTimeout(this.timer);
  }

  private ack(block: number): void {
    this.ackedTo = block;
    this.lastAckAt = performance.now();
    this.o.link.sendAck(block & 0xffff);
  }

  /** A block beyond the expected one: some were lost. One ACK per gap position is enough. */
  private ackGap(): void {
    const inOrder = this.expected - 1;
    if (this.ackedTo === inOrder && performance.now() - this.lastAckAt < this.timeoutMs / 2) return;
    this.ack(inOrder);
  }

  private ackDuplicate(): void {
    if (performance.now() - this.lastAckAt < this.timeoutMs / 2) return;
    this.ack(this.expected - 1);
  }

  private onTimeout(): void {
    if (this.settled) return;
    if (this.attempts >= this.o.retries) {
      this.fail(
        new TftpError(
          `no data after ${this.attempts + 1} waits of ${this.timeoutMs} ms ` +
            `(last block received: ${this.expected - 1})`,
          TftpErrorCode.NOT_DEFINED,
        ),
      );
      return;
    }
    this.attempts++;
    this.ack(this.expected - 1);
    this.timer!.refresh();
  }
}
