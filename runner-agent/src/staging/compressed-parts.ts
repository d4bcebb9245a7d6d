/**
 * Parts as they travel to a board whose U-Boot can `unzip`: one gzip stream per part, of the
 * part's served bytes (the image view, patches included, zero-padded to whole sectors). U-Boot's
 * `unzip` inflates one gzip member only, so each part is a single stream.
 *
 * A part no patch touches is the same for every job of the image and part plan: its stream is
 * cached under `<cacheRoot>/<sha256>/<offset>-<size>.gz` (hex), written under a temporary name and
 * renamed, so a crash never leaves half a cached file under its real name. A patched part differs
 * per job and is kept in memory for the job (layouts patch few parts: inject touches the boot
 * partition). Caches of images the store no longer holds are removed on the next staging
 * (`sweepCompressedCache`). Compression runs on zlib's thread pool, chunk by chunk, so the event
 * loop keeps serving other boards.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { createGzip, type Gzip } from 'node:zlib';
import type { PartPlan } from '../board/stage2-script.js';
import type { StagedFile } from './board-files.js';
import type { ImageView } from './image-view.js';

export interface CompressedPart {
  file: StagedFile;
  size: number;
  /** Taken from the cache: no compression this job. */
  cached: boolean;
}

export interface CompressionStats {
  rawBytes: number;
  zipBytes: number;
  /** Parts compressed this job (not from the cache), their raw bytes and the process CPU it took. */
  compressedParts: number;
  compressedRawBytes: number;
  cpuMs: number;
  wallMs: number;
}

const CHUNK = 4 * 1024 * 1024;

export interface CompressOptions {
  /** `<cacheRoot>/<sha256>`, or undefined to keep every stream in memory. */
  cacheDir?: string;
  /** zlib level; 6 is gzip's default. */
  level?: number;
}

/** The gzip stream of each part (in plan order) and what making them cost. */
export async function compressParts(
  view: ImageView,
  parts: readonly PartPlan[],
  o: CompressOptions,
): Promise<{ parts: CompressedPart[]; stats: CompressionStats }> {
  const stats: CompressionStats = {
    rawBytes: 0,
    zipBytes: 0,
    compressedParts: 0,
    compressedRawBytes: 0,
    cpuMs: 0,
    wallMs: 0,
  };
  const out: CompressedPart[] = [];
  const handle = await open(view.path, 'r');
  try {
    for (const part of parts) {
      stats.rawBytes += part.servedSize;
      const cacheable = o.cacheDir !== undefined && !view.touches(part.imageOffset, part.servedSize);
      const cacheFile = cacheable
        ? path.join(o.cacheDir!, `${part.imageOffset.toString(16)}-${part.servedSize.toString(16)}.gz`)
        : undefined;
      if (cacheFile) {
        const size = await stat(cacheFile).then(
          (s) => (s.isFile() && s.size > 0 ? s.size : undefined),
          () => undefined,
        );
        if (size !== undefined) {
          out.push({ file: { kind: 'file', path: cacheFile, size }, size, cached: true });
          stats.zipBytes += size;
          continue;
        }
      }
      const cpu = process.cpuUsage();
      const started = performance.now();
      const made = cacheFile
        ? await gzipToFile(view, handle, part, cacheFile, o.level ?? 6)
        : await gzipToBuffer(view, handle, part, o.level ?? 6);
      const used = process.cpuUsage(cpu);
      stats.cpuMs += (used.user + used.system) / 1000;
      stats.wallMs += performance.now() - started;
      stats.compressedParts += 1;
      stats.compressedRawBytes += part.servedSize;
      stats.zipBytes += made.size;
      out.push({ ...made, cached: false });
    }
  } finally {
    await handle.close();
  }
  return { parts: out, stats };
}

/** Feeds the part's served bytes to a gzip stream, chunk by chunk, waiting when it is full. */
async function feed(view: ImageView, handle: Awaited<ReturnType<typeof open>>, part: PartPlan, gz: Gzip) {
  for (let done = 0; done < part.servedSize;) {
    const n = Math.min(CHUNK, part.servedSize - done);
    const chunk = await view.read(handle, part.imageOffset + done, n);
    done += n;
    if (!gz.write(chunk)) await once(gz, 'drain');
  }
  gz.end();
}

async function gzipToBuffer(
  view: ImageView,
  handle: Awaited<ReturnType<typeof open>>,
  part: PartPlan,
  level: number,
): Promise<{ file: StagedFile; size: number }> {
  const gz = createGzip({ level, chunkSize: 256 * 1024 });
  const chunks: Buffer[] = [];
  gz.on('data', (c: Buffer) => chunks.push(c));
  const ended = once(gz, 'end');
  await feed(view, handle, part, gz);
  await ended;
  const data = Buffer.concat(chunks);
  return { file: { kind: 'buffer', data }, size: data.length };
}

async function gzipToFile(
  view: ImageView,
  handle: Awaited<ReturnType<typeof open>>,
  part: PartPlan,
  file: string,
  level: number,
): Promise<{ file: StagedFile; size: number }> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(16).slice(2)}`;
  try {
    const gz = createGzip({ level, chunkSize: 256 * 1024 });
    const sink = createWriteStream(tmp, { mode: 0o600 });
    gz.pipe(sink);
    const closed = once(sink, 'close');
    const failed = new Promise<never>((_, reject) => {
      gz.once('error', reject);
      sink.once('error', reject);
    });
    await Promise.race([feed(view, handle, part, gz).then(() => closed), failed]);
    const { size } = await stat(tmp);
    await rename(tmp, file);
    return { file: { kind: 'file', path: file, size }, size };
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * Removes the cached streams of every image the store no longer holds (`<imagesDir>/<sha>.img`
 * gone: evicted). Returns the image hashes removed.
 */
export async function sweepCompressedCache(cacheRoot: string, imagesDir: string): Promise<string[]> {
  const entries = await readdir(cacheRoot).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const sha of entries) {
    if (!/^[0-9a-f]{64}$/.test(sha)) continue;
    const held = await stat(path.join(imagesDir, `${sha}.img`)).then(
      () => true,
      () => false,
    );
    if (held) continue;
    await rm(path.join(cacheRoot, sha), { recursive: true, force: true });
    removed.push(sha);
  }
  return removed;
}
