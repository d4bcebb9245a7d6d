/**
 * The image side of `make-card`: which compression the OS image uses, planning the injection from
 * it before anything is written, and streaming it (decompressed, patched on the way) into a file or
 * onto a device.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { detectCompression, MAGIC_LENGTH } from '../../../src/protocol/compression.js';
import type { Compression } from '../../../src/protocol/messages.js';
import { applyPatchesToFile, createPatchTransform, type Patch } from '../image/disk.js';
import { planInjection, type InjectResult } from '../image/inject.js';
import { findBootPartition, parseMbr } from '../image/mbr.js';
import { createDecompressor } from '../store/decompress.js';
import { MakeCardError } from './error.js';

const MiB = 1024 * 1024;
const CHUNK = MiB;

export type InjectInputs = Parameters<typeof planInjection>[2];

/**
 * By content, so that a renamed file still decompresses, cross-checked with the name as the action
 * does (protocol/compression.ts): a name and content that disagree are refused before any writing.
 */
export async function imageCompression(file: string): Promise<Compression> {
  const fh = await open(file, 'r').catch((err: Error) => {
    throw new MakeCardError(`cannot read image ${file}: ${err.message}`);
  });
  try {
    const head = Buffer.alloc(MAGIC_LENGTH);
    await fh.read(head, 0, MAGIC_LENGTH, 0);
    return detectCompression(head, file).compression;
  } finally {
    await fh.close();
  }
}

/**
 * The card as a file, in one pass: the image lands in a temporary file beside `out`, is patched in
 * place and renamed, so `out` is never a half-written card.
 */
export async function writeCardFile(
  image: string,
  format: Compression,
  out: string,
  inject: InjectInputs,
): Promise<{ imageSize: number; injection: InjectResult }> {
  const partial = `${out}.partial`;
  try {
    const imageSize = await writeImage(image, format, partial, { sparse: true, patches: [] });
    const injection = await planInjection(partial, imageSize, inject);
    await applyPatchesToFile(partial, injection.patches);
    await rename(partial, out);
    return { imageSize, injection };
  } finally {
    await rm(partial, { force: true });
  }
}

/** The image's bytes, decompressed when needed, into `sinks`. */
async function streamImage(
  image: string,
  format: Compression,
  sinks: [...NodeJS.ReadWriteStream[], NodeJS.WritableStream],
): Promise<void> {
  if (format === 'none') {
    await pipeline(createReadStream(image, { highWaterMark: CHUNK }), ...(sinks as [NodeJS.WritableStream]));
    return;
  }
  const dec = createDecompressor(format, sinks);
  try {
    for await (const chunk of createReadStream(image, { highWaterMark: CHUNK }) as Readable)
      await dec.write(chunk as Buffer);
    await dec.end();
  } catch (err) {
    await dec.abort();
    throw err;
  }
}

/**
 * Writes the image (patched on the way) to a file or device; resolves to the image size. A sparse
 * file skips zero blocks; a device is opened for writing in place, never created or truncated.
 */
export async function writeImage(
  image: string,
  format: Compression,
  out: string,
  o: { sparse: boolean; patches: Patch[] },
): Promise<number> {
  const fh = await open(out, o.sparse ? 'w' : 'r+');
  const writer = new PositionedWriter(fh, o.sparse);
  try {
    await streamImage(image, format, [createPatchTransform(o.patches), writer]);
    if (o.sparse) await fh.truncate(writer.position);
    await fh.sync();
    return writer.position;
  } finally {
    await fh.close();
  }
}

class PositionedWriter extends Writable {
  position = 0;
  private static readonly zeros = Buffer.alloc(CHUNK);
  constructor(
    private readonly fh: FileHandle,
    private readonly sparse: boolean,
  ) {
    super({ highWaterMark: 4 * CHUNK });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    const at = this.position;
    this.position += chunk.length;
    if (this.sparse && chunk.length <= CHUNK && chunk.equals(PositionedWriter.zeros.subarray(0, chunk.length))) {
      done();
      return;
    }
    writeAll(this.fh, chunk, at).then(() => done(), done);
  }
}

async function writeAll(fh: FileHandle, buf: Buffer, at: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, at + done);
    if (bytesWritten === 0)
      throw new MakeCardError(`the output accepted no bytes at offset ${at + done}: is the card full or read-only?`);
    done += bytesWritten;
  }
}

/**
 * Plans the injection from the source image before anything is written. A compressed image is
 * decompressed once to learn its size, keeping only its head (up to the end of the boot
 * partition) in a temporary file — all that planning reads.
 */
export async function planFromSource(
  image: string,
  format: Compression,
  inject: InjectInputs,
): Promise<{ imageSize: number; injection: InjectResult }> {
  if (format === 'none') {
    const imageSize = (await stat(image)).size;
    return { imageSize, injection: await planInjection(image, imageSize, inject) };
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'rpi-flash-card-'));
  const head = path.join(dir, 'head.img');
  const fh = await open(head, 'w');
  try {
    let size = 0;
    /** Bytes to keep: known once sector 0 has arrived (the end of the boot partition). */
    let keep: number | undefined;
    let sector0 = Buffer.alloc(0);
    const take = async (chunk: Buffer, at: number) => {
      if (keep === undefined) {
        sector0 = Buffer.concat([sector0, chunk.subarray(0, 512 - sector0.length)]);
        if (sector0.length === 512) {
          try {
            const boot = findBootPartition(parseMbr(sector0, Number.MAX_SAFE_INTEGER));
            keep = boot.offset + boot.size;
          } catch {
            keep = 512; // planning reports what is wrong with the table
          }
        }
      }
      const limit = keep ?? 512;
      if (at < limit) await writeAll(fh, chunk.subarray(0, Math.min(chunk.length, limit - at)), at);
    };
    const sink = new Writable({
      highWaterMark: 4 * CHUNK,
      write(chunk: Buffer, _enc, done) {
        const at = size;
        size += chunk.length;
        take(chunk, at).then(() => done(), done);
      },
    });
    await streamImage(image, format, [sink]);
    await fh.sync();
    return { imageSize: size, injection: await planInjection(head, size, inject) };
  } finally {
    await fh.close();
    await rm(dir, { recursive: true, force: true });
  }
}
