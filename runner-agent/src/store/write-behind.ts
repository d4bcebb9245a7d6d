/**
 * Write-behind for an upload's partial file: chunks are gathered into batches of a few MiB and
 * each batch goes to disk with one positional `writev` on the thread pool, a bounded number at a
 * time, while the caller goes on hashing and receiving. One awaited 1 MiB write per chunk left
 * the upload waiting on a thread-pool round trip for every chunk; batching cuts the round trips
 * (and the thread hand-offs, costly on a busy 2-core machine) by the batch factor.
 *
 * The chunks are not copied: the batch holds references until its write completes, so a caller
 * must not modify a chunk after appending it (WebSocket messages are fresh buffers; fine).
 *
 * Positional writes may complete out of order, so `written` is the unbroken run of bytes from
 * the start of the file that is on disk (in the page cache, not necessarily synced): a failed
 * write stops it there for good, and that is where a suspended upload is cut back to.
 */
import type { FileHandle } from 'node:fs/promises';

export interface WriteBehindOptions {
  /** A batch is written once it holds this many bytes. */
  batchBytes: number;
  /** Batch writes on the thread pool at once; a caller appending past that waits. */
  maxInFlight: number;
}

/** Told each time `written` grows (a hashing thread that reads the file back follows it). */
export type OnWritten = (written: number) => void;

/** A batch of more iovecs than this is written at once, whatever its size (IOV_MAX is 1024). */
const MAX_BATCH_CHUNKS = 256;

interface PendingWrite {
  /** File position just past this batch. */
  end: number;
  state: 'pending' | 'done' | 'failed';
  /** Settles when the write does; never rejects. */
  settled: Promise<void>;
}

export class WriteBehindFile {
  private batch: Buffer[] = [];
  private batchLength = 0;
  /** File position of the next byte appended. */
  private position: number;
  private writtenEnd: number;
  /** Issued writes in file order, oldest first, down to the first one not yet part of `written`. */
  private readonly inFlight: PendingWrite[] = [];
  private failure: unknown;
  private hasFailed = false;

  constructor(
    private readonly file: FileHandle,
    /** Bytes already in the file before the first append (a resumed upload). */
    start: number,
    private readonly o: WriteBehindOptions,
    private readonly onWritten: OnWritten = () => {},
  ) {
    if (!(o.batchBytes > 0) || !Number.isSafeInteger(o.maxInFlight) || o.maxInFlight < 1) {
      throw new RangeError(
        `write-behind needs batchBytes > 0 and maxInFlight ≥ 1, got ${o.batchBytes} and ${o.maxInFlight}`,
      );
    }
    this.position = start;
    this.writtenEnd = start;
  }

  /** Bytes on disk as one unbroken run from the start of the file. */
  get written(): number {
    return this.writtenEnd;
  }

  /** Bytes appended, on disk or not. */
  get appended(): number {
    return this.position;
  }

  /**
   * Queues a chunk; resolves when the caller may append the next one (at most `maxInFlight`
   * batch writes run, plus the batch being gathered). Rejects with the first write error; every
   * later call rejects with it too.
   */
  async append(chunk: Buffer): Promise<void> {
    if (this.hasFailed) throw this.failure;
    if (chunk.length === 0) return;
    this.batch.push(chunk);
    this.batchLength += chunk.length;
    this.position += chunk.length;
    if (this.batchLength >= this.o.batchBytes || this.batch.length >= MAX_BATCH_CHUNKS) {
      while (this.inFlight.length >= this.o.maxInFlight && !this.hasFailed) await this.inFlight[0]!.settled;
      if (this.hasFailed) throw this.failure;
      this.issueBatch();
    }
  }

  /** Writes the batch being gathered and waits for every write; rejects with the first error. */
  async flush(): Promise<void> {
    if (!this.hasFailed) this.issueBatch();
    await this.settleAll();
    if (this.hasFailed) throw this.failure;
  }

  /** Drops the batch being gathered and waits for the writes already issued (before closing the file). */
  async abandon(): Promise<void> {
    this.batch = [];
    this.batchLength = 0;
    await this.settleAll();
  }

  private async settleAll(): Promise<void> {
    while (this.inFlight.some((w) => w.state === 'pending')) {
      await Promise.all(this.inFlight.map((w) => w.settled));
    }
  }

  private issueBatch(): void {
    if (this.batchLength === 0) return;
    const buffers = this.batch;
    const start = this.position - this.batchLength;
    this.batch = [];
    this.batchLength = 0;
    const write: PendingWrite = { end: this.position, state: 'pending', settled: Promise.resolve() };
    write.settled = writevAll(this.file, buffers, start).then(
      () => {
        write.state = 'done';
        this.advanceWritten();
      },
      (err: unknown) => {
        write.state = 'failed';
        if (!this.hasFailed) {
          this.hasFailed = true;
          this.failure = err;
        }
      },
    );
    this.inFlight.push(write);
  }

  private advanceWritten(): void {
    const before = this.writtenEnd;
    while (this.inFlight[0]?.state === 'done') this.writtenEnd = this.inFlight.shift()!.end;
    if (this.writtenEnd > before) this.onWritten(this.writtenEnd);
  }
}

/** `writev` may write less than asked (e.g. near a full disk): go on from where it stopped. */
async function writevAll(file: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let rest = buffers;
  let at = position;
  while (rest.length > 0) {
    const { bytesWritten } = await file.writev(rest, at);
    if (bytesWritten === 0) throw new Error('the disk accepted no bytes');
    at += bytesWritten;
    let skip = bytesWritten;
    let i = 0;
    while (i < rest.length && skip >= rest[i]!.length) skip -= rest[i++]!.length;
    rest = rest.slice(i);
    if (skip > 0) rest[0] = rest[0]!.subarray(skip);
  }
}
