/**
 * The agent's content-addressed image store (DESIGN §3.6, §3.4): which images it holds, and the
 * disk they take. Looks images up, pins them, evicts the least recently used past `maxBytes`,
 * admits an upload only when it fits, and publishes a received image by rename. Receiving the
 * bytes is upload-session.ts: the store hands each upload a plan (its files and limits) and gets
 * back a verified image through `UploadHost.publish`.
 *
 * Images are named by the sha256 of the bytes the client uploaded (the compressed file when
 * compressed) and kept decompressed, so staging serves parts as byte ranges of one file.
 *
 * Partial uploads take disk like images do, so they count against `maxBytes` while they exist, and
 * the store makes room by evicting the least recently used of both: images by their last use,
 * partial uploads by their last byte received — never an image pinned by a job, never a partial
 * upload a session has open. One that no client resumes goes after a while (`expirePartials`,
 * called by the agent with its configured time to live).
 *
 * Layout under `dir`:
 *   images/<sha256>.img      the decompressed image — its presence is what "stored" means
 *   images/<sha256>.json     its record (sizes, times, part CRCs), written before the image is
 *                            renamed into place, so every published image has one
 *   partial/<sha256>.upload  bytes received so far of an upload (the wire bytes): the resume point
 *   *.tmp                    anything in progress (decompressed output, records being written);
 *                            always safe to delete, and `init()` does
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CodedError } from '../../../src/protocol/errors.js';
import type { Compression } from '../../../src/protocol/messages.js';
import { formatBytes } from '../../../src/protocol/units.js';
import type { Logger } from '../log.js';
import { checkDecompressor, type DecompressTools } from './decompress.js';
import { statfsFreeBytes, type FreeSpaceProbe } from './disk-space.js';
import { fileSize, syncDir } from './files.js';
import { META_VERSION, parseMeta, TEMP_SUFFIX, writeMeta, type ImageMeta } from './image-meta.js';
import { bmapByteRanges, parseBmap, verifyBmap } from './bmap.js';
import { deriveMappedRanges, type MappedRange } from './mapped-ranges.js';
import { checkPartSize, partCrcsOfFile } from './part-crc.js';
import {
  checkBeginUpload,
  CompletedUpload,
  Upload,
  type BeginUpload,
  type ReceivedImage,
  type UploadPlan,
  type UploadSession,
} from './upload-session.js';
import type { WriteBehindOptions } from './write-behind.js';

export interface StoredImage {
  sha256: string;
  /** The decompressed image file. */
  path: string;
  imageSize: number;
  /** Bytes uploaded (compressed size when compressed). */
  wireSize: number;
  compression: Compression;
  /** Milliseconds since the epoch. */
  storedAt: number;
  /** Milliseconds since the epoch, strictly increasing across the store so LRU order is total. */
  lastUsed: number;
}

/** A partial upload's file, open in a session or waiting for a resume. */
interface PartialUpload {
  /** Bytes in the file when the last session on it ended (a session's own count while one is open). */
  bytes: number;
  /** When its last session ended (or the file's mtime, found at init): its age for expiry and eviction. */
  touchedAt: number;
}

/** Something the store can delete to make room: an image or an idle partial upload. */
type Evictable = { kind: 'image' | 'partial'; sha256: string; usedAt: number };

export interface ImageStoreOptions {
  /** e.g. `<state>/images`. */
  dir: string;
  /** Least-recently-used images are evicted while the stored images total more than this. */
  maxBytes: number;
  log: Logger;
  /** Keep this much disk free; default 256 MiB. */
  minFreeBytes?: number;
  /** Milliseconds since the epoch; `Date.now` unless a test drives the time. */
  clock?: () => number;
  /** Free space on the file system holding a directory; default `fs.statfs`. */
  freeBytes?: FreeSpaceProbe;
  /** Commands for `.xz` and `.zst`; default `xz` and `zstd` on PATH. */
  tools?: DecompressTools;
  /** Received bytes are written in batches of this size; default 4 MiB. */
  writeBatchBytes?: number;
  /** Batch writes of one upload on the thread pool at once; default 2. */
  writesInFlight?: number;
  /**
   * Uploads of at least this many bytes are hashed (sha256) on a worker thread that reads the
   * partial file back (upload-digest.ts), smaller ones on the main thread; 0: always on a worker.
   * Default: DEFAULT_HASH_ON_WORKER_FROM_BYTES.
   */
  hashOnWorkerFromBytes?: number;
}

const MiB = 1024 * 1024;

/**
 * Uploads hashed on a worker by default: from 64 MiB on a machine with 4 cores or more, never on
 * fewer. Measured on the 2-core x86 lab machine (`npm run bench -- upload`), the worker takes
 * ~1.4 ms/MB of sha256 off the main thread but costs ~1 ms/MB more CPU in all (the read-back,
 * the thread's own work) and ~20 MiB more peak RSS, and bought no steady speed with both cores
 * busy. A Pi 4 has 4 cores and no SHA instructions: sha256 there is several ms per MB,
 * most of what one core can spend per MB at gigabit speed, and the idle cores are where it goes.
 */
export const DEFAULT_HASH_ON_WORKER_FROM_BYTES = os.availableParallelism() >= 4 ? 64 * MiB : Number.POSITIVE_INFINITY;

const DEFAULTS = {
  minFreeBytes: 256 * MiB,
  writeBatchBytes: 4 * MiB,
  writesInFlight: 2,
  hashOnWorkerFromBytes: DEFAULT_HASH_ON_WORKER_FROM_BYTES,
};
/** Guess of the decompressed size when the client does not say (disk images compress ~3–4×). */
const COMPRESSION_RATIO_ESTIMATE = 4;

const short = (sha256: string) => sha256.slice(0, 12);

export class ImageStore {
  private readonly dir: string;
  private readonly imagesDir: string;
  private readonly partialDir: string;
  private readonly maxBytes: number;
  private readonly minFreeBytes: number;
  private readonly clock: () => number;
  private readonly freeBytes: FreeSpaceProbe;
  private readonly tools: DecompressTools;
  private readonly writeBehind: WriteBehindOptions;
  private readonly hashOnWorkerFromBytes: number;
  private readonly log: Logger;

  private readonly images = new Map<string, ImageMeta>();
  private readonly pins = new Map<string, number>();
  /** Uploads in progress, by sha256: one at a time per image, and their disk space is promised. */
  private readonly uploads = new Map<string, Upload>();
  /** Partial upload files, by sha256, whether a session has them open or not. */
  private readonly partials = new Map<string, PartialUpload>();
  /** Partial files being deleted: a begin() of the same sha256 waits for the deletion. */
  private readonly partialRemovals = new Map<string, Promise<void>>();
  /** Per-image chain of record writes, so they land in order. */
  private readonly metaWrites = new Map<string, Promise<void>>();
  private lastClock = 0;
  private initialized = false;
  private closed = false;

  constructor(o: ImageStoreOptions) {
    if (!(o.maxBytes > 0)) throw new RangeError(`maxBytes must be positive, got ${o.maxBytes}`);
    this.dir = path.resolve(o.dir);
    this.imagesDir = path.join(this.dir, 'images');
    this.partialDir = path.join(this.dir, 'partial');
    this.maxBytes = o.maxBytes;
    this.minFreeBytes = o.minFreeBytes ?? DEFAULTS.minFreeBytes;
    this.clock = o.clock ?? Date.now;
    this.freeBytes = o.freeBytes ?? statfsFreeBytes;
    this.tools = o.tools ?? {};
    this.writeBehind = {
      batchBytes: o.writeBatchBytes ?? DEFAULTS.writeBatchBytes,
      maxInFlight: o.writesInFlight ?? DEFAULTS.writesInFlight,
    };
    this.hashOnWorkerFromBytes = o.hashOnWorkerFromBytes ?? DEFAULTS.hashOnWorkerFromBytes;
    this.log = o.log.child({ component: 'store' });
  }

  /** Creates the directories, removes what a crash left half-done, keeps partial uploads, loads the records. */
  async init(): Promise<void> {
    await fs.mkdir(this.imagesDir, { recursive: true });
    await fs.mkdir(this.partialDir, { recursive: true });
    await this.loadRecords();
    const partials = await this.sweepPartialUploads();
    this.initialized = true;
    this.log.info('image store ready', {
      dir: this.dir,
      images: this.images.size,
      bytes: this.totalBytes(),
      maxBytes: this.maxBytes,
      resumableUploads: partials,
      partialBytes: this.partialBytes(),
    });
    await this.evictPast(this.maxBytes);
  }

  /** Loads every image whose record and file agree; removes the rest (a crash's leftovers). */
  private async loadRecords(): Promise<void> {
    const names = new Set(await fs.readdir(this.imagesDir));
    for (const name of names) {
      if (name.endsWith(TEMP_SUFFIX)) {
        await this.removeLeftover(path.join(this.imagesDir, name), 'temporary file of an interrupted write');
        continue;
      }
      const match = /^([0-9a-f]{64})\.json$/.exec(name);
      if (!match) continue;
      const sha256 = match[1]!;
      const metaPath = this.metaPath(sha256);
      const meta = parseMeta(await fs.readFile(metaPath, 'utf8'), sha256);
      const imageSize = await fileSize(this.imagePath(sha256));
      if (typeof meta === 'string' || imageSize === null || imageSize !== meta.imageSize) {
        const why =
          typeof meta === 'string'
            ? `unreadable record (${meta})`
            : imageSize === null
              ? 'record without image (crash while publishing or evicting)'
              : `image is ${imageSize} bytes, its record says ${meta.imageSize}`;
        await this.removeLeftover(metaPath, why);
        await this.removeLeftover(this.imagePath(sha256), why);
        continue;
      }
      this.images.set(sha256, meta);
      this.lastClock = Math.max(this.lastClock, meta.lastUsed);
    }
    for (const name of names) {
      const match = /^([0-9a-f]{64})\.img$/.exec(name);
      if (match && !this.images.has(match[1]!)) {
        await this.removeLeftover(path.join(this.imagesDir, name), 'image without a record');
      }
    }
  }

  /**
   * Removes partial uploads that can never be resumed and notes the others; returns how many are
   * left to resume. Their age is the agent's to judge (`expirePartials`), not a crash's.
   */
  private async sweepPartialUploads(): Promise<number> {
    for (const name of await fs.readdir(this.partialDir)) {
      const file = path.join(this.partialDir, name);
      if (name.endsWith(TEMP_SUFFIX)) {
        // Decompressed output of an interrupted upload: a resume rebuilds it from the wire bytes.
        await this.removeLeftover(file, 'temporary output of an interrupted upload');
        continue;
      }
      const match = /^([0-9a-f]{64})\.upload$/.exec(name);
      if (!match) continue;
      const sha256 = match[1]!;
      if (this.images.has(sha256)) {
        await this.removeLeftover(file, 'partial upload of an image already stored');
        continue;
      }
      const stats = await fs.stat(file);
      this.partials.set(sha256, { bytes: stats.size, touchedAt: stats.mtimeMs });
    }
    return this.partials.size;
  }

  /**
   * Removes the partial uploads no session has open whose last byte came `ttlMs` or longer ago;
   * returns how many it removed. The agent calls this now and then with its configured time.
   */
  async expirePartials(ttlMs: number): Promise<number> {
    this.assertReady();
    if (this.closed) return 0;
    let removed = 0;
    for (const sha256 of [...this.partials.keys()]) {
      // Looked up again each time: a begin() may have claimed it while an earlier one was deleted.
      const p = this.partials.get(sha256);
      const idleMs = this.clock() - (p?.touchedAt ?? 0);
      if (!p || this.uploads.has(sha256) || idleMs < ttlMs) continue;
      await this.removePartial(sha256);
      // Said once it is true: whoever reads the log may look for the file.
      this.log.info('partial upload expired: no client resumed it', {
        sha256: short(sha256),
        bytes: p.bytes,
        idleSeconds: Math.round(idleMs / 1000),
      });
      removed++;
    }
    return removed;
  }

  /** The stored image, marked as just used (LRU); null when the store does not hold it. */
  async get(sha256: string): Promise<StoredImage | null> {
    this.assertReady();
    const meta = this.images.get(sha256);
    if (!meta) return null;
    if ((await fileSize(this.imagePath(sha256))) !== meta.imageSize) {
      this.log.warn('stored image vanished or changed on disk; forgetting it', { sha256: short(sha256) });
      await this.deleteImage(sha256);
      return null;
    }
    meta.lastUsed = this.tick();
    await this.saveMeta(meta);
    return this.toStored(meta);
  }

  /**
   * Keeps an image from eviction until the returned function is called (idempotent). Pin before
   * `get()` when the image is about to be used, so no eviction can slip in between.
   */
  pin(sha256: string): () => void {
    this.pins.set(sha256, (this.pins.get(sha256) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.pins.get(sha256) ?? 1) - 1;
      if (left > 0) this.pins.set(sha256, left);
      else this.pins.delete(sha256);
      // Pins may have held the store over its limit; catch up now.
      if (left <= 0 && !this.closed) {
        this.evictPast(this.maxBytes).catch((err: unknown) =>
          this.log.error('eviction failed', { error: (err as Error).message }),
        );
      }
    };
  }

  /**
   * CRC32 of each part of the image as stored, i.e. decompressed (the last part zero-padded to a
   * multiple of 512). Read from the image the first time a part size is asked for (only a flash
   * with `flash.writeZeros` asks), then cached in its record; an upload computes none.
   */
  async storedPartCrcs(sha256: string, partSize: number): Promise<number[]> {
    this.assertReady();
    try {
      checkPartSize(partSize);
    } catch (err) {
      throw new CodedError('BAD_REQUEST', (err as Error).message);
    }
    const key = String(partSize);
    const crcs = await this.fromRecord(sha256, {
      get: (meta) => meta.partCrcs[key],
      compute: () => partCrcsOfFile(this.imagePath(sha256), partSize),
      put: (meta, value) => (meta.partCrcs[key] = value),
    });
    return [...crcs];
  }

  /**
   * The image's mapped ranges (store/mapped-ranges.ts): derived by reading it once, then cached in
   * its record per `minZeroRun`.
   */
  async mappedRanges(sha256: string, minZeroRun: number): Promise<MappedRange[]> {
    const key = String(minZeroRun);
    const pairs = await this.fromRecord(sha256, {
      get: (meta) => meta.mapped?.[key],
      compute: async (meta) => asPairs(await deriveMappedRanges(this.imagePath(sha256), meta.imageSize, minZeroRun)),
      put: (meta, value) => (meta.mapped = { ...meta.mapped, [key]: value }),
    });
    return asRanges(pairs);
  }

  /**
   * The ranges of a block map the client sent with a job (bmap.ts), once checked against the image:
   * parsed, sizes compared, every range's checksum over the image's bytes. A map already checked
   * (the same text) is taken from the image's record without reading the image again.
   */
  async bmapRanges(sha256: string, bmapText: string): Promise<MappedRange[]> {
    const key = createHash('sha256').update(bmapText).digest('hex');
    const pairs = await this.fromRecord(sha256, {
      get: (meta) => meta.bmaps?.[key],
      compute: async (meta) => {
        const bmap = parseBmap(bmapText);
        await verifyBmap(bmap, this.imagePath(sha256), meta.imageSize);
        return asPairs(bmapByteRanges(bmap));
      },
      put: (meta, value) => (meta.bmaps = { ...meta.bmaps, [key]: value }),
    });
    return asRanges(pairs);
  }

  /**
   * Something an image's record keeps about its bytes: taken from the record when there, else
   * computed (the image pinned meanwhile, so no eviction removes it) and saved with the record
   * while the image is still stored.
   */
  private async fromRecord<T>(
    sha256: string,
    o: {
      get(meta: ImageMeta): T | undefined;
      compute(meta: ImageMeta): Promise<T>;
      put(meta: ImageMeta, value: T): void;
    },
  ): Promise<T> {
    this.assertReady();
    const meta = this.images.get(sha256);
    if (!meta) throw new CodedError('IMAGE_NOT_FOUND', `the store holds no image with sha256 ${sha256}`);
    const cached = o.get(meta);
    if (cached !== undefined) return cached;
    const release = this.pin(sha256);
    try {
      const value = await o.compute(meta);
      o.put(meta, value);
      if (this.images.get(sha256) === meta) await this.saveMeta(meta);
      return value;
    } finally {
      release();
    }
  }

  /** Every stored image, most recently used first. */
  list(): StoredImage[] {
    return [...this.images.values()].sort((a, b) => b.lastUsed - a.lastUsed).map((m) => this.toStored(m));
  }

  /** Total bytes of the stored (decompressed) images. */
  totalBytes(): number {
    let total = 0;
    for (const meta of this.images.values()) total += meta.imageSize;
    return total;
  }

  /** Total bytes of the partial uploads, open or waiting for a resume (the wire bytes received). */
  partialBytes(): number {
    let total = 0;
    for (const [sha256, p] of this.partials) total += this.uploads.get(sha256)?.offset ?? p.bytes;
    return total;
  }

  /** What counts against `maxBytes`: images and partial uploads. */
  private heldBytes(): number {
    return this.totalBytes() + this.partialBytes();
  }

  /**
   * Starts (or resumes) an upload. Every refusal happens here, before the client sends a byte:
   * BAD_REQUEST, UNSUPPORTED_COMPRESSION, UPLOAD_TOO_LARGE, NO_SPACE.
   */
  async begin(o: BeginUpload): Promise<UploadSession> {
    this.assertReady();
    if (this.closed) throw new CodedError('SHUTTING_DOWN', 'the image store is closing');
    checkBeginUpload(o);
    const { sha256, size, compression } = o;

    const stored = this.images.get(sha256);
    if (stored) return new CompletedUpload(stored.wireSize, () => this.get(sha256));

    if (this.uploads.has(sha256)) {
      throw new CodedError('UPLOAD_IN_PROGRESS', `an upload of ${sha256} is already in progress on another connection`);
    }
    const knownImageSize = compression === 'none' ? size : o.imageSize;
    if (knownImageSize !== undefined && knownImageSize > this.maxBytes) {
      throw new CodedError(
        'UPLOAD_TOO_LARGE',
        `the image is ${formatBytes(knownImageSize)}, ` +
          `more than this agent's store holds (${formatBytes(this.maxBytes)})`,
      );
    }

    const imageBytes = compression === 'none' ? 0 : (o.imageSize ?? size * COMPRESSION_RATIO_ESTIMATE);
    const upload: Upload = new Upload(this.uploadPlan(o, imageBytes), {
      publish: (image) => this.publish(image),
      ended: (kept) => this.uploadEnded(upload, kept),
    });
    // Claimed before any await: a second begin() sees it, and neither eviction nor expiry takes its file.
    this.uploads.set(sha256, upload);
    try {
      await this.partialRemovals.get(sha256);
      if (compression !== 'none') await checkDecompressor(compression, this.tools);
      const held = await upload.heldBytes();
      await this.ensureSpace(upload, size - held, imageBytes, o.imageSize === undefined && compression !== 'none');
      await upload.open(held);
    } catch (err) {
      this.uploads.delete(sha256);
      await this.notePartialOnDisk(sha256);
      throw err;
    }
    this.partials.set(sha256, { bytes: upload.offset, touchedAt: this.clock() });
    this.log.info(upload.offset > 0 ? 'upload resumed' : 'upload started', {
      sha256: short(sha256),
      size,
      compression,
      offset: upload.offset,
    });
    return upload;
  }

  /** Suspends every upload in progress and waits for pending record writes. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.uploads.values()].map((upload) => upload.suspend()));
    await Promise.allSettled([...this.metaWrites.values(), ...this.partialRemovals.values()]);
  }

  // ---- internals --------------------------------------------------------------------------------

  /**
   * An upload session ended: its sha256 is free for a new begin(), and its partial file (if it kept
   * one) waits for a resume from now on, counted until it is resumed, evicted or expired.
   */
  private uploadEnded(upload: Upload, kept: number | null): void {
    const { sha256 } = upload;
    // A late call from a session a newer one replaced says nothing about the newer one's file.
    if (this.uploads.has(sha256) && this.uploads.get(sha256) !== upload) return;
    this.uploads.delete(sha256);
    if (kept === null) {
      this.partials.delete(sha256);
      return;
    }
    this.partials.set(sha256, { bytes: kept, touchedAt: this.clock() });
    if (this.closed) return;
    this.evictPast(this.maxBytes).catch((err: unknown) =>
      this.log.error('eviction failed', { error: (err as Error).message }),
    );
  }

  /** After a begin() that failed: the partial file as it is now (kept, cut or removed by the attempt). */
  private async notePartialOnDisk(sha256: string): Promise<void> {
    const bytes = await fileSize(this.partialPath(sha256));
    if (this.uploads.has(sha256)) return; // another begin() claimed it meanwhile: its entry now
    if (bytes === null) this.partials.delete(sha256);
    else this.partials.set(sha256, { bytes, touchedAt: this.partials.get(sha256)?.touchedAt ?? this.clock() });
  }

  /** Deletes an idle partial upload: out of the catalogue at once, the file soon after. */
  private removePartial(sha256: string): Promise<void> {
    this.partials.delete(sha256);
    const removal = fs.rm(this.partialPath(sha256), { force: true }).finally(() => {
      if (this.partialRemovals.get(sha256) === removal) this.partialRemovals.delete(sha256);
    });
    this.partialRemovals.set(sha256, removal);
    return removal;
  }

  private partialPath(sha256: string): string {
    return path.join(this.partialDir, `${sha256}.upload`);
  }

  /** What an upload is told: where its bytes go and the limits the store holds it to. */
  private uploadPlan(o: BeginUpload, plannedImageBytes: number): UploadPlan {
    return {
      ...o,
      files: {
        partial: this.partialPath(o.sha256),
        // Ends in `.tmp` so that init() clears it after a crash: a resume rebuilds it.
        decompressedTemp: path.join(this.partialDir, `${o.sha256}.img${TEMP_SUFFIX}`),
      },
      storeDir: this.dir,
      maxImageBytes: this.maxBytes,
      plannedImageBytes,
      writeBehind: this.writeBehind,
      hashOnWorker: o.size >= this.hashOnWorkerFromBytes,
      tools: this.tools,
      log: this.log.child({ sha256: short(o.sha256) }),
    };
  }

  /**
   * Publishes a fully received, verified image: record first, then the image renamed into place
   * (the commit point), then the directory synced. Then eviction past the limit.
   */
  private async publish(o: ReceivedImage): Promise<StoredImage> {
    const now = this.tick();
    const meta: ImageMeta = {
      version: META_VERSION,
      sha256: o.sha256,
      imageSize: o.imageSize,
      wireSize: o.wireSize,
      compression: o.compression,
      storedAt: now,
      lastUsed: now,
      partCrcs: {},
    };
    await writeMeta(this.metaPath(o.sha256), meta);
    await fs.rename(o.file, this.imagePath(o.sha256));
    await syncDir(this.imagesDir);
    this.images.set(o.sha256, meta);
    // Its bytes are the image's now (a raw upload's file was renamed; a compressed one's goes next).
    this.partials.delete(o.sha256);
    this.log.info('image stored', {
      sha256: short(o.sha256),
      imageSize: o.imageSize,
      wireSize: o.wireSize,
      compression: o.compression,
    });
    // The image is stored whatever happens next: a failed eviction is logged, not thrown.
    await this.evictPast(this.maxBytes, o.sha256).catch((err: unknown) =>
      this.log.error('eviction failed', { error: (err as Error).message }),
    );
    return this.toStored(meta);
  }

  private assertReady(): void {
    if (!this.initialized) throw new Error('ImageStore.init() must be called first');
  }

  private imagePath(sha256: string): string {
    return path.join(this.imagesDir, `${sha256}.img`);
  }

  private metaPath(sha256: string): string {
    return path.join(this.imagesDir, `${sha256}.json`);
  }

  private toStored(meta: ImageMeta): StoredImage {
    return {
      sha256: meta.sha256,
      path: this.imagePath(meta.sha256),
      imageSize: meta.imageSize,
      wireSize: meta.wireSize,
      compression: meta.compression,
      storedAt: meta.storedAt,
      lastUsed: meta.lastUsed,
    };
  }

  /** Milliseconds since the epoch, but never equal to or before the previous value. */
  private tick(): number {
    this.lastClock = Math.max(this.clock(), this.lastClock + 1);
    return this.lastClock;
  }

  private saveMeta(meta: ImageMeta): Promise<void> {
    const previous = this.metaWrites.get(meta.sha256) ?? Promise.resolve();
    const next = previous
      .catch(() => {})
      .then(() => (this.images.get(meta.sha256) === meta ? writeMeta(this.metaPath(meta.sha256), meta) : undefined));
    this.metaWrites.set(meta.sha256, next);
    void next
      .finally(() => {
        if (this.metaWrites.get(meta.sha256) === next) this.metaWrites.delete(meta.sha256);
      })
      .catch(() => {});
    return next;
  }

  private async removeLeftover(file: string, why: string): Promise<void> {
    try {
      await fs.rm(file);
      this.log.warn('removed leftover file', { file, why });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /**
   * Refuses an upload that would not fit, before it starts. Needs the rest of the wire bytes, the
   * decompressed image (compressed uploads keep both until the end) and the reserve. Evicts the
   * least recently used images and idle partial uploads to make room first, since they would go anyway.
   */
  private async ensureSpace(
    self: Upload,
    wireBytes: number,
    imageBytes: number,
    imageEstimated: boolean,
  ): Promise<void> {
    const need = wireBytes + imageBytes + this.minFreeBytes;
    // Other uploads in progress will still write what they announced: that space is taken.
    const promised = () => {
      let total = 0;
      for (const upload of this.uploads.values()) if (upload !== self) total += upload.outstandingBytes();
      return total;
    };
    const measure = async () => (await this.freeBytes(this.dir)) - promised();
    let free = await measure();
    while (free < need) {
      const victim = this.oldestEvictable(self.sha256);
      if (!victim) break;
      this.log.info(
        `evicting ${victim.kind === 'image' ? 'an image' : 'a partial upload'} to make room for an upload`,
        {
          sha256: short(victim.sha256),
          need,
          free,
        },
      );
      await this.evict(victim);
      free = await measure();
    }
    if (free >= need) return;
    const parts = [`upload ${formatBytes(wireBytes)}`];
    if (imageBytes > 0)
      parts.push(`image ${formatBytes(imageBytes)}${imageEstimated ? ' (estimated: 4× the compressed size)' : ''}`);
    parts.push(`reserve ${formatBytes(this.minFreeBytes)}`);
    throw new CodedError(
      'NO_SPACE',
      `not enough disk space in ${this.dir} for this upload: it needs ${formatBytes(need)} (${parts.join(' + ')}), ` +
        `${formatBytes(free)} is free`,
    );
  }

  /**
   * The least recently used image no job pins, or idle partial upload, whichever is older; never
   * `exclude`, and never a partial file a session has open (or one being deleted already).
   */
  private oldestEvictable(exclude?: string): Evictable | undefined {
    let victim: Evictable | undefined;
    const consider = (candidate: Evictable) => {
      if (!victim || candidate.usedAt < victim.usedAt) victim = candidate;
    };
    for (const meta of this.images.values()) {
      if (meta.sha256 === exclude || this.pins.has(meta.sha256)) continue;
      consider({ kind: 'image', sha256: meta.sha256, usedAt: meta.lastUsed });
    }
    for (const [sha256, p] of this.partials) {
      if (sha256 === exclude || this.uploads.has(sha256)) continue;
      consider({ kind: 'partial', sha256, usedAt: p.touchedAt });
    }
    return victim;
  }

  private evict(victim: Evictable): Promise<void> {
    return victim.kind === 'image' ? this.deleteImage(victim.sha256) : this.removePartial(victim.sha256);
  }

  /** Evicts the oldest images and idle partial uploads while both together hold more than `limit`. */
  private async evictPast(limit: number, exclude?: string): Promise<void> {
    while (this.heldBytes() > limit) {
      const victim = this.oldestEvictable(exclude);
      if (!victim) {
        this.log.warn('image store is over its limit but every other image and partial upload is in use', {
          bytes: this.totalBytes(),
          partialBytes: this.partialBytes(),
          maxBytes: limit,
        });
        return;
      }
      this.log.info(`evicting least recently used ${victim.kind === 'image' ? 'image' : 'partial upload'}`, {
        sha256: short(victim.sha256),
        bytes: this.totalBytes(),
        partialBytes: this.partialBytes(),
        maxBytes: limit,
      });
      await this.evict(victim);
    }
  }

  /** Forgets an image: out of the map first (nobody gets it any more), then the image, then its record. */
  private async deleteImage(sha256: string): Promise<void> {
    this.images.delete(sha256);
    await fs.rm(this.imagePath(sha256), { force: true });
    await fs.rm(this.metaPath(sha256), { force: true });
  }
}

/** Ranges as the record keeps them: [offset, length] pairs. */
function asPairs(ranges: readonly MappedRange[]): Array<[number, number]> {
  return ranges.map((r) => [r.offset, r.length]);
}

function asRanges(pairs: ReadonlyArray<readonly [number, number]>): MappedRange[] {
  return pairs.map(([offset, length]) => ({ offset, length }));
}
