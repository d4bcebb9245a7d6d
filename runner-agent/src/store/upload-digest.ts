/**
 * The sha256 of an upload's wire bytes (and, for a raw upload, its part CRCs), computed as the
 * bytes arrive — on this thread, or on a worker thread.
 *
 * Node's hashing is synchronous: on the agent's main thread sha256 and the part CRCs cost about
 * as much CPU as receiving the WebSocket frames, so a big upload ran at half the speed the socket
 * allows. A worker thread takes that work to the other core. It gets a copy of each chunk (a
 * memcpy is ~20× cheaper than hashing it) so the main thread can still write the original to disk,
 * and it may lag behind by a bounded number of bytes (`maxLagBytes`), which bounds its memory.
 *
 * The worker is plain JavaScript evaluated from a string: no file to locate, so it runs the same
 * under tsx, vitest, compiled JavaScript and any Node ≥ 20.
 */
import { createHash, type Hash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { checkPartSize } from './part-crc.js';

export interface DigestResult {
  sha256: string;
  /** Part CRCs, when the digest was asked for them (see PartCrcAccumulator for their definition). */
  partCrcs?: number[];
}

export interface UploadDigest {
  /** Feeds the next bytes, in order; resolves when more may be fed. */
  update(chunk: Buffer): Promise<void> | void;
  /** The result; the digest takes no bytes after this. */
  finish(): Promise<DigestResult>;
  /** Stops the digest (idempotent); a pending finish() rejects. */
  close(): Promise<void>;
}

/** sha256 on this thread (small uploads: not worth a thread's start-up). */
export class InlineDigest implements UploadDigest {
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
 * The worker's side. The part-CRC arithmetic mirrors PartCrcAccumulator (part-crc.ts; the store's
 * tests check both against a reference): CRC32 per `partSize` bytes, the last part padded with
 * zeros to a multiple of 512.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const zlib = require('node:zlib');
const hash = createHash('sha256');
const partSize = workerData.partSize;
const crcs = [];
let crc = 0, inPart = 0, total = 0;
parentPort.on('message', (m) => {
  if (m.type === 'update') {
    const chunk = m.chunk;
    hash.update(chunk);
    if (partSize > 0) {
      let at = 0;
      while (at < chunk.length) {
        const take = Math.min(chunk.length - at, partSize - inPart);
        crc = zlib.crc32(chunk.subarray(at, at + take), crc);
        inPart += take;
        at += take;
        if (inPart === partSize) { crcs.push(crc >>> 0); crc = 0; inPart = 0; }
      }
    }
    total += chunk.length;
    parentPort.postMessage({ type: 'progress', bytes: total });
  } else if (m.type === 'finish') {
    if (partSize > 0 && inPart > 0) {
      const pad = (512 - (inPart % 512)) % 512;
      if (pad > 0) crc = zlib.crc32(Buffer.alloc(pad), crc);
      crcs.push(crc >>> 0);
    }
    const sha256 = hash.digest('hex');
    parentPort.postMessage({ type: 'result', sha256, crcs: partSize > 0 ? crcs : undefined, bytes: total });
  }
});
`;

type FromWorker =
  { type: 'progress'; bytes: number } | { type: 'result'; sha256: string; crcs?: number[]; bytes: number };

export interface WorkerDigestOptions {
  /** Also compute the CRC of each part of this size (a raw upload is its own image). */
  partSize?: number;
  /** Bytes the worker may fall behind before update() waits; default 16 MiB. */
  maxLagBytes?: number;
}

/** sha256 (and part CRCs) on a worker thread, at most `maxLagBytes` behind the bytes fed. */
export class WorkerDigest implements UploadDigest {
  private readonly worker: Worker;
  private readonly maxLagBytes: number;
  private fed = 0;
  private digested = 0;
  private failure: Error | undefined;
  /** Woken on every message, error and exit. */
  private wake: (() => void) | undefined;
  private result: (FromWorker & { type: 'result' }) | undefined;
  private closed = false;

  constructor(o: WorkerDigestOptions = {}) {
    const partSize = o.partSize ?? 0;
    if (partSize > 0) checkPartSize(partSize);
    this.maxLagBytes = o.maxLagBytes ?? 16 * 1024 * 1024;
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { partSize } });
    this.worker.on('message', (m: FromWorker) => {
      if (m.type === 'progress') this.digested = m.bytes;
      else this.result = m;
      this.notify();
    });
    this.worker.on('error', (err) => {
      this.failure ??= new Error(`the hashing thread failed: ${err.message}`);
      this.notify();
    });
    this.worker.on('exit', (code) => {
      this.failure ??= new Error(`the hashing thread ended (exit code ${code})`);
      this.notify();
    });
  }

  async update(chunk: Buffer): Promise<void> {
    this.throwIfFailed();
    if (chunk.length === 0) return;
    // Posting copies the bytes (structured clone): the caller's chunk stays usable.
    this.worker.postMessage({ type: 'update', chunk });
    this.fed += chunk.length;
    while (this.fed - this.digested > this.maxLagBytes && !this.failure) await this.nextEvent();
    this.throwIfFailed();
  }

  async finish(): Promise<DigestResult> {
    this.throwIfFailed();
    this.worker.postMessage({ type: 'finish' });
    while (!this.result && !this.failure) await this.nextEvent();
    const result = this.result;
    await this.close();
    if (!result) throw this.failure!;
    if (result.bytes !== this.fed)
      throw new Error(`the hashing thread saw ${result.bytes} bytes, ${this.fed} were fed`);
    return { sha256: result.sha256, ...(result.crcs ? { partCrcs: result.crcs } : {}) };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failure ??= new Error('the digest was closed');
    this.notify();
    await this.worker.terminate();
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
