/**
 * One upload being received into the store (DESIGN §3.6): begin or resume, write, suspend,
 * discard, finish. The bytes go to the partial file and, on their way, through the sha256 and
 * the decompressor; `finish()` hands the verified image to the store, which
 * publishes it. An upload knows nothing of the other images: the store (image-store.ts) decides
 * whether it may start and tells it its files and limits (`UploadPlan`), and the upload calls back
 * through `UploadHost` only to publish and to say it is over.
 *
 * Resuming and the hash: Node's Hash cannot be saved and restored, so a resumed upload re-reads
 * its partial file from disk through the hash (and the decompressor) before
 * accepting more bytes. That is one code path for every case (same process or after a restart),
 * needs no trust in state kept elsewhere, and runs at disk speed, far above the network's. An
 * upload hashed on a worker thread (upload-digest.ts) has the worker read the file anyway: only
 * the decompressor of a compressed one is fed the held bytes again on this thread.
 *
 * No part CRCs are computed on the way: a flash computes those of the parts it serves (only the
 * image's mapped ranges, cut at their own offsets), and the stored ones, only for
 * `flash.writeZeros`, are read from the image the first time they are asked for. Computing them
 * here cost ~0.8 ms/MB on the main thread, a fifth of the agent's CPU per uploaded MB.
 *
 * Decompression runs while the upload arrives: each chunk goes to the partial file and to the
 * decompressor, whose output goes to a temp image. The wire bytes are kept until `finish()`
 * because a decompressor's state cannot be saved either: a resume replays them. That is why the
 * store's disk check counts both copies. A raw upload is its own image: its partial file is
 * renamed into place, no second copy.
 *
 * Memory: `write()` resolves once a chunk is hashed (or, on a worker, the worker is close enough
 * behind), accepted by the decompressor and queued for the disk; the write-behind
 * (write-behind.ts) holds at most (writesInFlight + 1) batches (12 MiB by default) per session.
 * Nothing ever holds a whole image.
 *
 * Durability: bytes are written without fsync while they arrive. A suspend (disconnect, error,
 * close) waits for every write, cuts the partial file back to the unbroken run of bytes on disk,
 * and fsyncs it: that length is the resume offset, and only bytes fsync'd so are promised to
 * survive. After a crash instead, the partial file may end in bytes that never reached the disk
 * or (two batch writes in flight) a hole; the sha256 at finish() catches either, the upload is
 * discarded and sent again — never published wrong.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { Transform } from 'node:stream';
import { CodedError } from '../../../src/protocol/errors.js';
import { COMPRESSIONS, SHA256_PATTERN, type Compression } from '../../../src/protocol/messages.js';
import { formatBytes } from '../../../src/protocol/units.js';
import type { Logger } from '../log.js';
import { createDecompressor, type Decompressor, type DecompressTools } from './decompress.js';
import { asNoSpace } from './disk-space.js';
import { fileSize, syncFile } from './files.js';
import type { StoredImage } from './image-store.js';
import { FileDigest, InlineDigest, type DigestResult } from './upload-digest.js';
import { WriteBehindFile, type WriteBehindOptions } from './write-behind.js';

export interface UploadSession {
  /** Bytes already held (the resume point): the client sends from here on. */
  readonly offset: number;
  /**
   * Appends a chunk; resolves when the next one may be written (backpressure): the chunk is hashed
   * and queued for the disk, not necessarily on it (write-behind; the store holds a few MiB at
   * most). The store keeps a reference to the chunk until it is written: never modify it.
   * Throws UPLOAD_TOO_LARGE past the declared size (the bytes before it are kept for a resume),
   * NO_SPACE when the disk fills, DECOMPRESS_FAILED on corrupt data (the partial upload is
   * discarded). A failed disk write surfaces at the next write() or finish(). After a throw the
   * session is closed.
   */
  write(chunk: Buffer): Promise<void>;
  /**
   * Completes the upload: UPLOAD_TRUNCATED when bytes are missing (kept for a resume),
   * SHA256_MISMATCH (discarded), DECOMPRESS_FAILED (discarded); otherwise publishes the image
   * atomically and evicts least-recently-used images past `maxBytes`.
   */
  finish(): Promise<StoredImage>;
  /** The connection dropped: keep the bytes received for a resume. Idempotent. */
  suspend(): Promise<void>;
  /** Forget the upload and its bytes. Idempotent. */
  discard(): Promise<void>;
}

export interface BeginUpload {
  sha256: string;
  /** Bytes on the wire. */
  size: number;
  compression: Compression;
  /** Decompressed size when the client knows it: sharpens the disk-space check. */
  imageSize?: number;
}

/** Refuses a malformed request (BAD_REQUEST, UNSUPPORTED_COMPRESSION) before anything is looked up. */
export function checkBeginUpload(o: BeginUpload): void {
  const { sha256, size, compression } = o;
  if (typeof sha256 !== 'string' || !SHA256_PATTERN.test(sha256)) {
    throw new CodedError('BAD_REQUEST', `sha256 must be 64 lower-case hex digits, got ${JSON.stringify(sha256)}`);
  }
  if (!COMPRESSIONS.includes(compression)) {
    throw new CodedError(
      'UNSUPPORTED_COMPRESSION',
      `compression ${JSON.stringify(compression)} is not one of ${COMPRESSIONS.join(', ')}`,
    );
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new CodedError('BAD_REQUEST', `bad upload size ${size}`);
  if (o.imageSize !== undefined && (!Number.isSafeInteger(o.imageSize) || o.imageSize < 0)) {
    throw new CodedError('BAD_REQUEST', `bad image size ${o.imageSize}`);
  }
  if (compression === 'none' && o.imageSize !== undefined && o.imageSize !== size) {
    throw new CodedError(
      'BAD_REQUEST',
      `an uncompressed upload of ${size} bytes cannot have an image size of ${o.imageSize}`,
    );
  }
}

/** A fully received upload whose bytes hash to its name, ready to be renamed into the store. */
export interface ReceivedImage {
  sha256: string;
  /** The image file: the decompressed temp, or the partial file itself for a raw upload. Synced. */
  file: string;
  imageSize: number;
  wireSize: number;
  compression: Compression;
}

/** The store, as an upload sees it: the only two things an upload asks of it. */
export interface UploadHost {
  /** Takes the image into the store (the commit point). On a throw the upload discards its files. */
  publish(image: ReceivedImage): Promise<StoredImage>;
  /**
   * The session is over (finished, suspended or discarded): its disk space is no longer promised,
   * and a new begin() of its sha256 may start. `keptBytes`: what its partial file now holds for a
   * resume (suspended), or null when it left none (published or discarded).
   */
  ended(keptBytes: number | null): void;
}

/** Everything the store decided for one upload at begin(). */
export interface UploadPlan extends BeginUpload {
  files: {
    /** The wire bytes received so far; its length is the resume point. */
    partial: string;
    /** Decompressed output being built. */
    decompressedTemp: string;
  };
  /** The store's directory, named in NO_SPACE errors. */
  storeDir: string;
  /** The decompressed output may not exceed this (a decompression bomb fills no disk). */
  maxImageBytes: number;
  /** Decompressed bytes the disk check allowed for (0 for raw: the upload is the image). */
  plannedImageBytes: number;
  writeBehind: WriteBehindOptions;
  /** sha256 on a worker thread that reads the partial file back. */
  hashOnWorker: boolean;
  tools: DecompressTools;
  log: Logger;
}

/** A resume replays the partial file in reads of this size. */
const READ_CHUNK = 1024 * 1024;

/** begin() for an image already stored: nothing to send, finish() returns the image. */
export class CompletedUpload implements UploadSession {
  constructor(
    readonly offset: number,
    private readonly getImage: () => Promise<StoredImage | null>,
  ) {}
  write(): Promise<void> {
    return Promise.reject(
      new CodedError('UPLOAD_TOO_LARGE', 'the agent already holds this image; no bytes are expected'),
    );
  }
  async finish(): Promise<StoredImage> {
    const image = await this.getImage();
    if (!image)
      throw new CodedError('IMAGE_NOT_FOUND', 'the image was evicted before the upload finished; upload it again');
    return image;
  }
  async suspend(): Promise<void> {}
  async discard(): Promise<void> {}
}

type UploadState = 'new' | 'open' | 'finishing' | 'done' | 'suspended' | 'discarded';

/** One upload in progress. Its wire bytes land in `plan.files.partial`. */
export class Upload implements UploadSession {
  readonly sha256: string;
  private state: UploadState = 'new';
  private received = 0;
  private digest: InlineDigest | FileDigest = new InlineDigest();
  /** Bytes out of the decompressor so far (a compressed upload's image size). */
  private decompressedBytes = 0;
  private file: FileHandle | undefined;
  /** The partial file's writer: chunks go to disk in batches behind the hash. */
  private writer: WriteBehindFile | undefined;
  private decompressor: Decompressor | undefined;
  private imageOut: WriteStream | undefined;
  private finishing: Promise<StoredImage> | undefined;
  /** Serialises write() calls even if a caller does not wait. */
  private queue: Promise<void> = Promise.resolve();
  private readonly log: Logger;

  constructor(
    private readonly plan: UploadPlan,
    private readonly host: UploadHost,
  ) {
    this.sha256 = plan.sha256;
    this.log = plan.log;
  }

  get offset(): number {
    return this.received;
  }

  /** Disk space this upload was granted and has not used yet (other begin() calls count it as taken). */
  outstandingBytes(): number {
    if (this.state !== 'new' && this.state !== 'open' && this.state !== 'finishing') return 0;
    const wire = Math.max(0, this.plan.size - this.received);
    const image = Math.max(0, this.plan.plannedImageBytes - (this.compressed ? this.decompressedBytes : 0));
    return wire + image;
  }

  private get compressed(): boolean {
    return this.plan.compression !== 'none';
  }

  /**
   * Bytes a partial upload of this sha256 already holds: where open() resumes. A partial longer
   * than the declared size cannot be a prefix of this upload, so it is dropped.
   */
  async heldBytes(): Promise<number> {
    const held = await fileSize(this.plan.files.partial);
    if (held === null) return 0;
    if (held > this.plan.size) {
      this.log.warn('partial upload is longer than the declared size; starting over', { held, size: this.plan.size });
      await fs.rm(this.plan.files.partial, { force: true });
      return 0;
    }
    return held;
  }

  /**
   * Opens the partial file and replays the `held` bytes already in it through the hash and the
   * decompressor. A partial that does not decompress is dropped and the upload
   * starts over (its bytes cannot belong to a valid file of this sha256).
   */
  async open(held: number): Promise<void> {
    try {
      await this.start(held);
    } catch (err) {
      await this.teardown(false);
      if (!(err instanceof CodedError && err.code === 'DECOMPRESS_FAILED') || held === 0) throw err;
      this.log.warn('partial upload does not decompress; starting over', { held, error: err.message });
      await fs.rm(this.plan.files.partial, { force: true });
      try {
        await this.start(0);
      } catch (again) {
        await this.teardown(false);
        throw again;
      }
    }
    this.state = 'open';
  }

  private async start(held: number): Promise<void> {
    this.received = 0;
    const partial = this.plan.files.partial;
    this.file = await fs.open(partial, held > 0 ? 'r+' : 'w');
    if (held > 0) await this.file.truncate(held);
    this.decompressedBytes = 0;
    if (this.plan.hashOnWorker) {
      const digest = new FileDigest({ file: partial });
      this.digest = digest;
      await digest.open();
      // The worker follows the writes: it reads as far as they have completed, the held bytes first.
      this.writer = new WriteBehindFile(this.file, held, this.plan.writeBehind, (bytes) => digest.written(bytes));
      digest.written(held);
    } else {
      this.digest = new InlineDigest();
      this.writer = new WriteBehindFile(this.file, held, this.plan.writeBehind);
    }
    if (this.compressed) this.decompressor = this.startDecompressor();
    // Only what runs on this thread is fed the held bytes again: the worker reads them from the file itself.
    if (held > 0 && (this.digest instanceof InlineDigest || this.compressed)) {
      for await (const chunk of createReadStream(partial, { start: 0, end: held - 1, highWaterMark: READ_CHUNK })) {
        await this.consume(chunk as Buffer);
      }
    }
    this.received = held;
  }

  private startDecompressor(): Decompressor {
    const limit = this.plan.maxImageBytes;
    const tap = new Transform({
      // An arrow function: `this` is the upload, which counts the image's bytes.
      transform: (chunk: Buffer, _encoding, callback) => {
        if (this.decompressedBytes + chunk.length > limit) {
          callback(
            new CodedError(
              'UPLOAD_TOO_LARGE',
              `the decompressed image grows past the store's limit of ${formatBytes(limit)}`,
            ),
          );
          return;
        }
        this.decompressedBytes += chunk.length;
        callback(null, chunk);
      },
    });
    // A large buffer lets the stream batch the decompressor's 64 KiB pipe reads into few writes.
    const out = createWriteStream(this.plan.files.decompressedTemp, { highWaterMark: READ_CHUNK });
    this.imageOut = out;
    return createDecompressor(this.plan.compression as 'gz' | 'xz' | 'zst', [tap, out], this.plan.tools);
  }

  /** The bytes go to everything on this thread that follows the stream, except the partial file. */
  private async consume(chunk: Buffer): Promise<void> {
    if (this.digest instanceof InlineDigest) this.digest.update(chunk);
    if (this.decompressor) await this.decompressor.write(chunk);
  }

  write(chunk: Buffer): Promise<void> {
    const run = this.queue.then(() => this.writeNow(chunk));
    this.queue = run.catch(() => {});
    return run;
  }

  private async writeNow(chunk: Buffer): Promise<void> {
    if (this.state !== 'open')
      throw new CodedError('BAD_REQUEST', `the upload is ${this.state}; no more bytes are accepted`);
    if (this.received + chunk.length > this.plan.size) {
      const err = new CodedError(
        'UPLOAD_TOO_LARGE',
        `the upload declared ${this.plan.size} bytes but ${this.received + chunk.length} arrived; ` +
          `the first ${this.received} are kept for a resume`,
      );
      await this.closeAfter(err);
      throw err;
    }
    // The disk write runs on the thread pool while the hash and decompressor work on this thread.
    const written = this.writer!.append(chunk);
    const consumed = this.consume(chunk);
    // A worker that reads the file back must not fall too far behind (see upload-digest.ts).
    const keptUp = this.digest instanceof FileDigest ? this.digest.keepUp(this.writer!.appended) : undefined;
    const [w, c, k] = await Promise.allSettled([written, consumed, keptUp]);
    const failed =
      w.status === 'rejected'
        ? { error: asNoSpace(w.reason, this.plan.storeDir, 'receiving an upload') }
        : c.status === 'rejected'
          ? { error: c.reason as unknown }
          : k.status === 'rejected'
            ? { error: new CodedError('INTERNAL', `hashing the upload failed: ${(k.reason as Error).message}`) }
            : undefined;
    if (failed) {
      await this.closeAfter(failed.error);
      throw failed.error;
    }
    this.received += chunk.length;
  }

  /** After a failed write: corrupt data cannot be resumed, anything else can. */
  private async closeAfter(err: unknown): Promise<void> {
    const corrupt = err instanceof CodedError && err.code === 'DECOMPRESS_FAILED';
    if (corrupt) this.log.warn('upload does not decompress; discarded', { error: err.message });
    await this.end(corrupt ? 'discarded' : 'suspended');
  }

  finish(): Promise<StoredImage> {
    this.finishing ??= this.finishNow();
    return this.finishing;
  }

  private async finishNow(): Promise<StoredImage> {
    await this.queue;
    if (this.state !== 'open') throw new CodedError('BAD_REQUEST', `the upload is ${this.state}; it cannot finish`);
    try {
      await this.writer!.flush();
    } catch (err) {
      const failure = asNoSpace(err, this.plan.storeDir, 'receiving an upload');
      await this.closeAfter(failure);
      throw failure;
    }
    this.state = 'finishing';
    if (this.received < this.plan.size) {
      await this.end('suspended');
      throw new CodedError(
        'UPLOAD_TRUNCATED',
        `the upload ended after ${this.received} of ${this.plan.size} bytes; ` +
          `the agent keeps them and the upload can resume at ${this.received}`,
      );
    }
    let decompressFailure: { error: unknown } | undefined;
    try {
      await this.decompressor?.end();
    } catch (error) {
      decompressFailure = { error };
    }
    let digest: DigestResult;
    try {
      digest = await (this.digest instanceof FileDigest ? this.digest.finish(this.received) : this.digest.finish());
    } catch (err) {
      // The bytes are on disk; a resume hashes them again.
      await this.end('suspended');
      throw new CodedError('INTERNAL', `hashing the upload failed: ${(err as Error).message}`);
    }
    // The sha256 is checked first: if the bytes are not the declared file, that is what to report.
    const actual = digest.sha256;
    if (actual !== this.sha256) {
      await this.end('discarded');
      throw new CodedError(
        'SHA256_MISMATCH',
        `the ${this.received} bytes received hash to ${actual}, not the declared ${this.sha256}; ` +
          'the upload was discarded, send it again',
      );
    }
    if (decompressFailure) {
      await this.end('discarded');
      throw decompressFailure.error;
    }
    try {
      const imageSize = this.compressed ? this.decompressedBytes : this.received;
      const partial = this.plan.files.partial;
      let file: string;
      if (this.compressed) {
        await this.file!.close();
        this.file = undefined;
        file = this.plan.files.decompressedTemp;
        await syncFile(file);
      } else {
        await this.file!.sync();
        await this.file!.close();
        this.file = undefined;
        file = partial;
      }
      if (this.plan.imageSize !== undefined && this.plan.imageSize !== imageSize) {
        this.log.warn('decompressed size differs from the size the client announced', {
          announced: this.plan.imageSize,
          actual: imageSize,
        });
      }
      const image = await this.host.publish({
        sha256: this.sha256,
        file,
        imageSize,
        wireSize: this.received,
        compression: this.plan.compression,
      });
      if (this.compressed) await fs.rm(partial, { force: true });
      this.state = 'done';
      this.host.ended(null);
      return image;
    } catch (err) {
      await this.end('discarded');
      throw asNoSpace(err, this.plan.storeDir, 'publishing an image');
    }
  }

  async suspend(): Promise<void> {
    if (this.state === 'finishing') {
      // finish() is past the point of no return (publishing or failing): let it complete.
      await this.finishing?.catch(() => {});
      return;
    }
    if (this.state !== 'new' && this.state !== 'open') return;
    await this.decompressor?.abort(); // unblocks a write waiting on the decompressor
    await this.queue;
    await this.end('suspended');
  }

  async discard(): Promise<void> {
    if (this.state === 'finishing') await this.finishing?.catch(() => {});
    if (this.state === 'done' || this.state === 'discarded') return;
    await this.decompressor?.abort();
    await this.queue;
    await this.end('discarded');
  }

  /**
   * Ends the session: the partial file is cut back to the bytes on disk without a gap and synced
   * (suspended) — that is the resume point, and the only bytes the store promises to keep — or
   * deleted (discarded); the decompressed temp always goes — a resume rebuilds it.
   */
  private async end(state: 'suspended' | 'discarded'): Promise<void> {
    if (this.state === 'done' || this.state === 'discarded') return;
    const wasOpen = this.state !== 'suspended';
    this.state = state;
    if (wasOpen) await this.teardown(state === 'suspended');
    if (state === 'discarded') await fs.rm(this.plan.files.partial, { force: true });
    this.host.ended(state === 'suspended' ? this.received : null);
    if (wasOpen || state === 'discarded') {
      this.log.info(state === 'suspended' ? 'upload suspended' : 'upload discarded', {
        received: this.received,
        size: this.plan.size,
      });
    }
  }

  private async teardown(keepPartial: boolean): Promise<void> {
    await this.digest.close();
    const decompressor = this.decompressor;
    this.decompressor = undefined;
    await decompressor?.abort();
    const out = this.imageOut;
    this.imageOut = undefined;
    // Wait for the temp file's descriptor to close, or the stream could re-create it after the rm.
    if (out && !out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
    if (this.file) {
      const file = this.file;
      const writer = this.writer;
      this.file = undefined;
      this.writer = undefined;
      try {
        // Every write must settle before the descriptor closes; a failed one ends the kept bytes.
        if (keepPartial) await writer?.flush().catch(() => {});
        else await writer?.abandon();
        if (keepPartial) {
          this.received = Math.min(this.received, writer?.written ?? this.received);
          await file.truncate(this.received);
          await file.sync();
        }
      } finally {
        await file.close();
      }
    }
    await fs.rm(this.plan.files.decompressedTemp, { force: true });
  }
}
