/**
 * The agent's content-addressed image store (DESIGN §3.6, §3.4).
 *
 * Images are named by the sha256 of the bytes the client uploaded (the compressed file when
 * compressed) and kept decompressed, so staging serves parts as byte ranges of one file.
 *
 * Layout under `dir`:
 *   images/<sha256>.img      the decompressed image — its presence is what "stored" means
 *   images/<sha256>.json     its record (sizes, times, part CRCs), written before the image is
 *                            renamed into place, so every published image has one
 *   partial/<sha256>.upload  bytes received so far of an upload (the wire bytes): the resume point
 *   *.tmp                    anything in progress (decompressed output, records being written);
 *                            always safe to delete, and `init()` does
 *
 * Resuming and the hash: Node's Hash cannot be saved and restored, so a resumed upload re-reads
 * its partial file from disk through the hash (and the decompressor, and the part CRCs) before
 * accepting more bytes. That is one code path for every case (same process or after a restart),
 * needs no trust in state kept elsewhere, and runs at disk speed, far above the network's.
 *
 * Decompression runs while the upload arrives: each chunk goes to the partial file and to the
 * decompressor, whose output goes to a temp image. The wire bytes are kept until `finish()`
 * because a decompressor's state cannot be saved either: a resume replays them. The disk check
 * counts both copies for that reason. A raw upload is its own image: its partial file is renamed
 * into place, no second copy.
 *
 * Memory: `write()` resolves once a chunk is hashed, accepted by the decompressor and queued for
 * the disk; the write-behind (write-behind.ts) holds at most (writesInFlight + 1) batches
 * (12 MiB by default) per session. Nothing ever holds a whole image.
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
import path from 'node:path';
import { Transform } from 'node:stream';
import { CodedError } from '../../../src/protocol/errors.js';
import { COMPRESSIONS, SHA256_PATTERN, type Compression } from '../../../src/protocol/messages.js';
import type { Logger } from '../log.js';
import { checkDecompressor, createDecompressor, type Decompressor, type DecompressTools } from './decompress.js';
import { formatBytes } from '../../../src/protocol/units.js';
import { asNoSpace, statfsFreeBytes, type FreeSpaceProbe } from './disk-space.js';
import { META_VERSION, parseMeta, TEMP_SUFFIX, writeMeta, type ImageMeta } from './image-meta.js';
import { checkPartSize, PartCrcAccumulator, partCrcsOfFile } from './part-crc.js';
import { WriteBehindFile, type WriteBehindOptions } from './write-behind.js';
import { InlineDigest, WorkerDigest, type DigestResult, type UploadDigest } from './upload-digest.js';

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

export interface ImageStoreOptions {
  /** e.g. `<state>/images`. */
  dir: string;
  /** Least-recently-used images are evicted while the stored images total more than this. */
  maxBytes: number;
  log: Logger;
  /** Keep this much disk free; default 256 MiB. */
  minFreeBytes?: number;
  /** The part size whose CRCs are computed while storing; default 64 MiB. */
  defaultPartSize?: number;
  /** Partial uploads untouched this long are removed by `init()`; default 24 h. */
  partialMaxAgeMs?: number;
  /** Free space on the file system holding a directory; default `fs.statfs`. */
  freeBytes?: FreeSpaceProbe;
  /** Commands for `.xz` and `.zst`; default `xz` and `zstd` on PATH. */
  tools?: DecompressTools;
  /** Received bytes are written in batches of this size; default 4 MiB. */
  writeBatchBytes?: number;
  /** Batch writes of one upload on the thread pool at once; default 2. */
  writesInFlight?: number;
  /**
   * Uploads of at least this many bytes are hashed on a worker thread (sha256, and the part CRCs
   * of a raw upload), smaller ones on the main thread; 0: always on a worker. Default: never.
   * Measured on the 2-core lab machine the worker bought no speed (the kernel's copy into the page
   * cache, not hashing, is the agent's biggest cost) and cost ~45 MiB of RSS; on a board with
   * more idle cores it moves ~1.7 CPU-seconds per GiB off the main thread.
   */
  hashOnWorkerFromBytes?: number;
}

export interface UploadSession {
  /** Bytes already held (the resume point): the client sends from here on. */
  readonly offset: number;
  /**
   * Appends a chunk; resolves when the next one may be written (backpressure): the chunk is hashed
   * and queued for the disk, not necessarily on it (write-behind; the store holds a few MiB at
   * most). The store keeps a reference to the chunk until it is written: never modify it. Throws UPLOAD_TOO_LARGE past the declared size (the bytes before it
   * are kept for a resume), NO_SPACE when the disk fills, DECOMPRESS_FAILED on corrupt data
   * (the partial upload is discarded). A failed disk write surfaces at the
   * next write() or finish(). After a throw the session is closed.
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

const MiB = 1024 * 1024;
const DEFAULTS = {
  minFreeBytes: 256 * MiB,
  defaultPartSize: 64 * MiB,
  partialMaxAgeMs: 24 * 3600 * 1000,
  writeBatchBytes: 4 * MiB,
  writesInFlight: 2,
  hashOnWorkerFromBytes: Number.POSITIVE_INFINITY,
};
/** Guess of the decompressed size when the client does not say (disk images compress ~3–4×). */
const COMPRESSION_RATIO_ESTIMATE = 4;
const READ_CHUNK = MiB;

const short = (sha256: string) => sha256.slice(0, 12);

export class ImageStore {
  private readonly dir: string;
  private readonly imagesDir: string;
  private readonly partialDir: string;
  private readonly maxBytes: number;
  private readonly minFreeBytes: number;
  private readonly defaultPartSize: number;
  private readonly partialMaxAgeMs: number;
  private readonly freeBytes: FreeSpaceProbe;
  private readonly tools: DecompressTools;
  private readonly writeBehind: WriteBehindOptions;
  private readonly hashOnWorkerFromBytes: number;
  private readonly log: Logger;

  private readonly images = new Map<string, ImageMeta>();
  private readonly pins = new Map<string, number>();
  private readonly sessions = new Map<string, Upload>();
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
    this.defaultPartSize = o.defaultPartSize ?? DEFAULTS.defaultPartSize;
    checkPartSize(this.defaultPartSize);
    this.partialMaxAgeMs = o.partialMaxAgeMs ?? DEFAULTS.partialMaxAgeMs;
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

    let partials = 0;
    const now = Date.now();
    for (const name of await fs.readdir(this.partialDir)) {
      const file = path.join(this.partialDir, name);
      if (name.endsWith(TEMP_SUFFIX)) {
        // Decompressed output of an interrupted upload: a resume rebuilds it from the wire bytes.
        await this.removeLeftover(file, 'temporary output of an interrupted upload');
        continue;
      }
      const match = /^([0-9a-f]{64})\.upload$/.exec(name);
      if (!match) continue;
      const stats = await fs.stat(file);
      if (this.images.has(match[1]!)) await this.removeLeftover(file, 'partial upload of an image already stored');
      else if (now - stats.mtimeMs > this.partialMaxAgeMs)
        await this.removeLeftover(file, 'partial upload never resumed');
      else partials++;
    }

    this.initialized = true;
    this.log.info('image store ready', {
      dir: this.dir,
      images: this.images.size,
      bytes: this.totalBytes(),
      maxBytes: this.maxBytes,
      resumableUploads: partials,
    });
    await this.evictPast(this.maxBytes);
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
   * CRC32 of each part of the decompressed image (the last part zero-padded to a multiple of 512).
   * Computed while storing for `defaultPartSize`; other sizes read the image once and are cached.
   */
  async partCrcs(sha256: string, partSize: number): Promise<number[]> {
    this.assertReady();
    try {
      checkPartSize(partSize);
    } catch (err) {
      throw new CodedError('BAD_REQUEST', (err as Error).message);
    }
    const meta = this.images.get(sha256);
    if (!meta) throw new CodedError('IMAGE_NOT_FOUND', `the store holds no image with sha256 ${sha256}`);
    const cached = meta.partCrcs[String(partSize)];
    if (cached) return [...cached];
    const release = this.pin(sha256);
    try {
      const crcs = await partCrcsOfFile(this.imagePath(sha256), partSize);
      meta.partCrcs[String(partSize)] = crcs;
      if (this.images.get(sha256) === meta) await this.saveMeta(meta);
      return [...crcs];
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

  /**
   * Starts (or resumes) an upload. Every refusal happens here, before the client sends a byte:
   * BAD_REQUEST, UNSUPPORTED_COMPRESSION, UPLOAD_TOO_LARGE, NO_SPACE.
   */
  async begin(o: BeginUpload): Promise<UploadSession> {
    this.assertReady();
    if (this.closed) throw new CodedError('SHUTTING_DOWN', 'the image store is closing');
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

    const stored = this.images.get(sha256);
    if (stored) return new CompletedUpload(stored.wireSize, () => this.get(sha256));

    if (this.sessions.has(sha256)) {
      throw new CodedError('UPLOAD_IN_PROGRESS', `an upload of ${sha256} is already in progress on another connection`);
    }
    const knownImageSize = compression === 'none' ? size : o.imageSize;
    if (knownImageSize !== undefined && knownImageSize > this.maxBytes) {
      throw new CodedError(
        'UPLOAD_TOO_LARGE',
        `the image is ${formatBytes(knownImageSize)}, more than this agent's store holds (${formatBytes(this.maxBytes)})`,
      );
    }

    const upload = new Upload(this, {
      ...o,
      partSize: this.defaultPartSize,
      maxImageBytes: this.maxBytes,
      writeBehind: this.writeBehind,
      hashOnWorker: size >= this.hashOnWorkerFromBytes,
    });
    this.sessions.set(sha256, upload); // claimed before any await: a second begin() sees it
    try {
      if (compression !== 'none') await checkDecompressor(compression, this.tools);
      const held = await this.resumableBytes(sha256, size);
      const imageBytes = compression === 'none' ? 0 : (o.imageSize ?? size * COMPRESSION_RATIO_ESTIMATE);
      upload.plannedImageBytes = imageBytes;
      await this.ensureSpace(upload, size - held, imageBytes, o.imageSize === undefined && compression !== 'none');
      await upload.open(held);
    } catch (err) {
      this.sessions.delete(sha256);
      throw err;
    }
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
    await Promise.allSettled([...this.sessions.values()].map((s) => s.suspend()));
    await Promise.allSettled([...this.metaWrites.values()]);
  }

  // ---- used by Upload -------------------------------------------------------------------------

  /** @internal */
  partialPath(sha256: string): string {
    return path.join(this.partialDir, `${sha256}.upload`);
  }

  /** @internal Decompressed output being built; ends in `.tmp` so `init()` clears it after a crash. */
  decompressedTempPath(sha256: string): string {
    return path.join(this.partialDir, `${sha256}.img${TEMP_SUFFIX}`);
  }

  /** @internal */
  get logger(): Logger {
    return this.log;
  }

  /** @internal */
  get toolCommands(): DecompressTools {
    return this.tools;
  }

  /** @internal */
  get storeDir(): string {
    return this.dir;
  }

  /** @internal The session is over (finished, suspended or discarded). */
  released(upload: Upload): void {
    if (this.sessions.get(upload.sha256) === upload) this.sessions.delete(upload.sha256);
  }

  /**
   * @internal Publishes a fully received, verified image: record first, then the image renamed
   * into place (the commit point), then the directory synced. Then eviction past the limit.
   */
  async publish(o: {
    sha256: string;
    file: string;
    imageSize: number;
    wireSize: number;
    compression: Compression;
    partSize: number;
    crcs: number[];
  }): Promise<StoredImage> {
    const now = this.tick();
    const meta: ImageMeta = {
      version: META_VERSION,
      sha256: o.sha256,
      imageSize: o.imageSize,
      wireSize: o.wireSize,
      compression: o.compression,
      storedAt: now,
      lastUsed: now,
      partCrcs: { [String(o.partSize)]: o.crcs },
    };
    await writeMeta(this.metaPath(o.sha256), meta);
    await fs.rename(o.file, this.imagePath(o.sha256));
    await syncDir(this.imagesDir);
    this.images.set(o.sha256, meta);
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

  // ---- internals --------------------------------------------------------------------------------

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
    this.lastClock = Math.max(Date.now(), this.lastClock + 1);
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

  /** Bytes of `sha256` a partial upload holds, or 0 (a partial longer than declared is dropped). */
  private async resumableBytes(sha256: string, size: number): Promise<number> {
    const held = await fileSize(this.partialPath(sha256));
    if (held === null) return 0;
    if (held > size) {
      this.log.warn('partial upload is longer than the declared size; starting over', {
        sha256: short(sha256),
        held,
        size,
      });
      await fs.rm(this.partialPath(sha256), { force: true });
      return 0;
    }
    return held;
  }

  /**
   * Refuses an upload that would not fit, before it starts. Needs the rest of the wire bytes, the
   * decompressed image (compressed uploads keep both until the end) and the reserve. Evicts
   * least-recently-used images to make room first, since they would go anyway.
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
      for (const upload of this.sessions.values()) if (upload !== self) total += upload.outstandingBytes();
      return total;
    };
    const measure = async () => (await this.freeBytes(this.dir)) - promised();
    let free = await measure();
    while (free < need) {
      const victim = this.leastRecentlyUsedEvictable();
      if (!victim) break;
      this.log.info('evicting an image to make room for an upload', { need, free });
      await this.deleteImage(victim);
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

  private leastRecentlyUsedEvictable(exclude?: string): string | undefined {
    let victim: ImageMeta | undefined;
    for (const meta of this.images.values()) {
      if (meta.sha256 === exclude || this.pins.has(meta.sha256)) continue;
      if (!victim || meta.lastUsed < victim.lastUsed) victim = meta;
    }
    return victim?.sha256;
  }

  private async evictPast(limit: number, exclude?: string): Promise<void> {
    while (this.totalBytes() > limit) {
      const victim = this.leastRecentlyUsedEvictable(exclude);
      if (!victim) {
        this.log.warn('image store is over its limit but every other image is in use', {
          bytes: this.totalBytes(),
          maxBytes: limit,
        });
        return;
      }
      this.log.info('evicting least recently used image', {
        sha256: short(victim),
        bytes: this.totalBytes(),
        maxBytes: limit,
      });
      await this.deleteImage(victim);
    }
  }

  /** Forgets an image: out of the map first (nobody gets it any more), then the image, then its record. */
  private async deleteImage(sha256: string): Promise<void> {
    this.images.delete(sha256);
    await fs.rm(this.imagePath(sha256), { force: true });
    await fs.rm(this.metaPath(sha256), { force: true });
  }
}

/** begin() for an image already stored: nothing to send, finish() returns the image. */
class CompletedUpload implements UploadSession {
  constructor(
    readonly offset: number,
    private readonly getImage: () => Promise<StoredImage | null>,
  ) {}
  async write(): Promise<void> {
    throw new CodedError('UPLOAD_TOO_LARGE', 'the agent already holds this image; no bytes are expected');
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

interface UploadPlan extends BeginUpload {
  partSize: number;
  /** The decompressed output may not exceed this (a decompression bomb fills no disk). */
  maxImageBytes: number;
  writeBehind: WriteBehindOptions;
  /** sha256 (and a raw upload's part CRCs) on a worker thread. */
  hashOnWorker: boolean;
}

/** One upload in progress. Its bytes land in `partial/<sha256>.upload`. */
class Upload implements UploadSession {
  readonly sha256: string;
  private state: UploadState = 'new';
  private received = 0;
  private digest: UploadDigest = new InlineDigest();
  /** The digest computes the part CRCs too (a raw upload hashed on a worker); `crcs` stays unused. */
  private crcsInDigest = false;
  private crcs: PartCrcAccumulator;
  private file: FileHandle | undefined;
  /** The partial file's writer: chunks go to disk in batches behind the hash. */
  private writer: WriteBehindFile | undefined;
  private decompressor: Decompressor | undefined;
  private imageOut: WriteStream | undefined;
  private finishing: Promise<StoredImage> | undefined;
  /** Decompressed bytes this upload was allowed for at begin() (0 for raw: the upload is the image). */
  plannedImageBytes = 0;
  /** Serialises write() calls even if a caller does not wait. */
  private queue: Promise<void> = Promise.resolve();
  private readonly log: Logger;

  constructor(
    private readonly store: ImageStore,
    private readonly plan: UploadPlan,
  ) {
    this.sha256 = plan.sha256;
    this.crcs = new PartCrcAccumulator(plan.partSize);
    this.log = store.logger.child({ sha256: short(plan.sha256) });
  }

  get offset(): number {
    return this.received;
  }

  /** Disk space this upload was granted and has not used yet (other begin() calls count it as taken). */
  outstandingBytes(): number {
    if (this.state !== 'new' && this.state !== 'open' && this.state !== 'finishing') return 0;
    const wire = Math.max(0, this.plan.size - this.received);
    const image = Math.max(0, this.plannedImageBytes - (this.compressed ? this.crcs.bytes : 0));
    return wire + image;
  }

  private get compressed(): boolean {
    return this.plan.compression !== 'none';
  }

  /**
   * Opens the partial file and replays the `held` bytes already in it through the hash, the part
   * CRCs and the decompressor. A partial that does not decompress is dropped and the upload
   * starts over (its bytes cannot belong to a valid file of this sha256).
   */
  async open(held: number): Promise<void> {
    try {
      await this.start(held);
    } catch (err) {
      await this.teardown(false);
      if (!(err instanceof CodedError && err.code === 'DECOMPRESS_FAILED') || held === 0) throw err;
      this.log.warn('partial upload does not decompress; starting over', { held, error: err.message });
      await fs.rm(this.store.partialPath(this.sha256), { force: true });
      this.crcs = new PartCrcAccumulator(this.plan.partSize);
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
    const partial = this.store.partialPath(this.sha256);
    this.file = await fs.open(partial, held > 0 ? 'r+' : 'w');
    if (held > 0) await this.file.truncate(held);
    this.writer = new WriteBehindFile(this.file, held, this.plan.writeBehind);
    this.crcsInDigest = this.plan.hashOnWorker && !this.compressed;
    this.digest = this.plan.hashOnWorker
      ? new WorkerDigest(this.crcsInDigest ? { partSize: this.plan.partSize } : {})
      : new InlineDigest();
    if (this.compressed) this.decompressor = this.startDecompressor();
    if (held === 0) return;
    for await (const chunk of createReadStream(partial, { start: 0, end: held - 1, highWaterMark: READ_CHUNK })) {
      await this.consume(chunk as Buffer);
    }
    this.received = held;
  }

  private startDecompressor(): Decompressor {
    const limit = this.plan.maxImageBytes;
    const crcs = () => this.crcs;
    const tap = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        const acc = crcs();
        if (acc.bytes + chunk.length > limit) {
          callback(
            new CodedError(
              'UPLOAD_TOO_LARGE',
              `the decompressed image grows past the store's limit of ${formatBytes(limit)}`,
            ),
          );
          return;
        }
        acc.update(chunk);
        callback(null, chunk);
      },
    });
    // A large buffer lets the stream batch the decompressor's 64 KiB pipe reads into few writes.
    const out = createWriteStream(this.store.decompressedTempPath(this.sha256), { highWaterMark: READ_CHUNK });
    this.imageOut = out;
    return createDecompressor(this.plan.compression as 'gz' | 'xz' | 'zst', [tap, out], this.store.toolCommands);
  }

  /** The bytes go to everything that follows the stream except the partial file. */
  private async consume(chunk: Buffer): Promise<void> {
    const digested = this.digest.update(chunk);
    if (this.decompressor) await this.decompressor.write(chunk);
    else if (!this.crcsInDigest) this.crcs.update(chunk);
    await digested;
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
    const [w, c] = await Promise.allSettled([written, consumed]);
    const failure =
      w.status === 'rejected'
        ? asNoSpace(w.reason, this.store.storeDir, 'receiving an upload')
        : c.status === 'rejected'
          ? c.reason
          : undefined;
    if (failure !== undefined) {
      await this.closeAfter(failure);
      throw failure;
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
      const failure = asNoSpace(err, this.store.storeDir, 'receiving an upload');
      await this.closeAfter(failure);
      throw failure;
    }
    this.state = 'finishing';
    if (this.received < this.plan.size) {
      await this.end('suspended');
      throw new CodedError(
        'UPLOAD_TRUNCATED',
        `the upload ended after ${this.received} of ${this.plan.size} bytes; the agent keeps them and the upload can resume at ${this.received}`,
      );
    }
    let decompressError: unknown;
    try {
      await this.decompressor?.end();
    } catch (err) {
      decompressError = err;
    }
    let digest: DigestResult;
    try {
      digest = await this.digest.finish();
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
        `the ${this.received} bytes received hash to ${actual}, not the declared ${this.sha256}; the upload was discarded, send it again`,
      );
    }
    if (decompressError !== undefined) {
      await this.end('discarded');
      throw decompressError;
    }
    try {
      const crcs = this.crcsInDigest ? digest.partCrcs! : this.crcs.finish();
      const imageSize = this.crcsInDigest ? this.received : this.crcs.bytes;
      const partial = this.store.partialPath(this.sha256);
      let file: string;
      if (this.compressed) {
        await this.file!.close();
        this.file = undefined;
        file = this.store.decompressedTempPath(this.sha256);
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
      const image = await this.store.publish({
        sha256: this.sha256,
        file,
        imageSize,
        wireSize: this.received,
        compression: this.plan.compression,
        partSize: this.plan.partSize,
        crcs,
      });
      if (this.compressed) await fs.rm(partial, { force: true });
      this.state = 'done';
      this.store.released(this);
      return image;
    } catch (err) {
      await this.end('discarded');
      throw asNoSpace(err, this.store.storeDir, 'publishing an image');
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
    if (state === 'discarded') await fs.rm(this.store.partialPath(this.sha256), { force: true });
    this.store.released(this);
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
    await fs.rm(this.store.decompressedTempPath(this.sha256), { force: true });
  }
}

async function fileSize(file: string): Promise<number | null> {
  try {
    return (await fs.stat(file)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function syncFile(file: string): Promise<void> {
  const handle = await fs.open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes a rename in `dir` durable. */
async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
