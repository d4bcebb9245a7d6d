/**
 * The sha256 of an upload's wire bytes, computed as the bytes arrive: on this thread, or on a
 * worker thread that reads them back from the partial file.
 *
 * Node's hashing is synchronous: on the agent's main thread sha256 costs about as much CPU as
 * receiving the WebSocket frames (on the 2-core x86 lab machine ~1.4 ms/MB; on a Pi 4, which
 * lacks the SHA instructions, several ms per MB), so it decides
 * whether an upload keeps up with the link. A worker thread takes that work to another core. It
 * is not handed the chunks: copying each one to it (structured clone) cost the main thread about
 * as much as hashing did. It reads the bytes back from the partial file instead, only as far as
 * the writes have completed (`written`), into one reused buffer: the page cache still holds them,
 * the read is a memcpy on the worker's core, and the worker holds no chunk. It may lag
 * `maxLagBytes` behind the bytes appended; that lag is in the file, not in memory, and is kept
 * short only so that the page cache still has the bytes when the worker reads them.
 *
 * The worker is plain JavaScript evaluated from a string: no file to locate, so it runs the same
 * under tsx, vitest, compiled JavaScript and any Node ≥ 20.
 */
import { createHash, type Hash } from 'node:crypto';
import fs, { type FileHandle } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';

export interface DigestResult {
  sha256: string;
}

/** sha256 on this thread, fed the chunks (small uploads: not worth a thread's start-up). */
export class InlineDigest {
  private readonly hash: Hash = createHash('sha256');
  update(chunk: Buffer): void {
    this.hash.update(chunk);
  }
  finish(): Promise<DigestResult> {
    return Promise.resolve({ sha256: this.hash.digest('hex') });
  }
  async close(): Promise<void> {}
}

/**
 * The worker's side: it reads the file (through the main thread's descriptor: descriptors belong
 * to the process) up to the last `upto`, in 1 MiB reads into one buffer, and reports how far it
 * got.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const { fd } = workerData;
const hash = createHash('sha256');
const buf = Buffer.allocUnsafe(1024 * 1024);
let total = 0, target = 0;
function catchUp() {
  let reported = total;
  while (total < target) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, target - total), total);
    if (n === 0) throw new Error('the partial file ends at ' + total + ' bytes, ' + target + ' were written');
    hash.update(buf.subarray(0, n));
    total += n;
    // A long catch-up (a resumed upload's bytes) reports as it goes: the upload may wait on it.
    if (total - reported >= 16 * 1024 * 1024) {
      parentPort.postMessage({ type: 'progress', bytes: total });
      reported = total;
    }
  }
  parentPort.postMessage({ type: 'progress', bytes: total });
}
parentPort.on('message', (m) => {
  target = Math.max(target, m.bytes);
  catchUp();
  if (m.type !== 'finish') return;
  parentPort.postMessage({ type: 'result', sha256: hash.digest('hex'), bytes: total });
});
`;

type FromWorker = { type: 'progress'; bytes: number } | { type: 'result'; sha256: string; bytes: number };

export interface FileDigestOptions {
  /** The file whose bytes, from its start, are the upload's (the partial file). */
  file: string;
  /** Bytes the worker may fall behind the bytes appended before keepUp() waits; default 16 MiB. */
  maxLagBytes?: number;
}

/**
 * sha256 of a file being written, on a worker thread that reads as far as
 * `written()` says the file holds. `open()` starts it.
 */
export class FileDigest {
  private worker: Worker | undefined;
  private handle: FileHandle | undefined;
  private readonly maxLagBytes: number;
  /** Bytes the file holds, as last told to the worker. */
  private posted = 0;
  private digested = 0;
  private failure: Error | undefined;
  /** Woken on every message, error and exit. */
  private wake: (() => void) | undefined;
  private result: (FromWorker & { type: 'result' }) | undefined;
  private closed = false;

  constructor(private readonly o: FileDigestOptions) {
    this.maxLagBytes = o.maxLagBytes ?? 16 * 1024 * 1024;
  }

  /** Opens the file for reading and starts the worker. */
  async open(): Promise<void> {
    this.handle = await fs.open(this.o.file, 'r');
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { fd: this.handle.fd },
      // It allocates next to nothing (one read buffer, small messages): a small heap keeps its RSS small.
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 },
    });
    this.worker = worker;
    worker.on('message', (m: FromWorker) => {
      if (m.type === 'progress') this.digested = m.bytes;
      else this.result = m;
      this.notify();
    });
    worker.on('error', (err) => {
      this.failure ??= new Error(`the hashing thread failed: ${err.message}`);
      this.notify();
    });
    worker.on('exit', (code) => {
      this.failure ??= new Error(`the hashing thread ended (exit code ${code})`);
      this.notify();
    });
  }

  /** The file now holds `bytes` from its start (written, in the page cache at least): the worker may read them. */
  written(bytes: number): void {
    if (bytes <= this.posted || this.closed || !this.worker) return;
    this.posted = bytes;
    this.worker.postMessage({ type: 'upto', bytes });
  }

  /**
   * Resolves once the worker is at most `maxLagBytes` behind `appended` bytes, or has read all
   * that was written (the rest is still on its way to the file); rejects when the worker failed.
   */
  async keepUp(appended: number): Promise<void> {
    while (!this.failure && appended - this.digested > this.maxLagBytes && this.digested < this.posted)
      await this.nextEvent();
    this.throwIfFailed();
  }

  /** The result once the worker read `total` bytes (all written by now); it reads no more after this. */
  async finish(total: number): Promise<DigestResult> {
    this.throwIfFailed();
    this.posted = Math.max(this.posted, total);
    this.worker!.postMessage({ type: 'finish', bytes: total });
    while (!this.result && !this.failure) await this.nextEvent();
    const result = this.result;
    await this.close();
    if (!result) throw this.failure!;
    if (result.bytes !== total) throw new Error(`the hashing thread read ${result.bytes} bytes, ${total} were written`);
    return { sha256: result.sha256 };
  }

  /** Stops the worker and closes its descriptor (idempotent); a pending finish() rejects. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failure ??= new Error('the digest was closed');
    this.notify();
    // The descriptor closes only once the worker can no longer read through it.
    await this.worker?.terminate();
    await this.handle?.close();
  }

  /** A method, not an inline check: the failure is set by the worker's events, across awaits. */
  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  private nextEvent(): Promise<void> {
    return new Promise<void>((resolve) => (this.wake = resolve));
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}
