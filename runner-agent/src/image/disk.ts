/**
 * Random access to a stored disk image without loading it, and a copy-on-write overlay that turns
 * every change into a patch (a byte range of the image to replace). The image file itself is never
 * written: the agent serves "image + patches" as a virtual view, make-card writes it out.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';
import { InjectError } from './errors.js';

export interface Patch {
  /** Byte offset in the image. */
  offset: number;
  /** Bytes that replace the image's bytes at [offset, offset + data.length). */
  data: Buffer;
}

/** Positioned reads of an image of known size. */
export interface ImageReader {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
}

/** Reads an image file with positioned reads; counts what it read (the bench and tests look). */
export class FileImageReader implements ImageReader {
  bytesRead = 0;
  private constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    private readonly path: string,
  ) {}

  static async open(path: string, size: number): Promise<FileImageReader> {
    return new FileImageReader(await open(path, 'r'), size, path);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new InjectError(
        'IMAGE_TRUNCATED',
        `the image is ${this.size} bytes but bytes ${offset}..${offset + length} are needed: it is cut short`,
      );
    }
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        throw new InjectError(
          'IMAGE_TRUNCATED',
          `${this.path} ends at byte ${offset + done}, before byte ${offset + length} that the image needs ` +
            `(declared size ${this.size})`,
        );
      }
      done += bytesRead;
    }
    this.bytesRead += length;
    return buf;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/** An image reader over a buffer: for tests and small images. */
export class BufferImageReader implements ImageReader {
  constructor(private readonly buf: Buffer) {}
  get size(): number {
    return this.buf.length;
  }
  read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.buf.length) {
      return Promise.reject(
        new InjectError(
          'IMAGE_TRUNCATED',
          `the image is ${this.buf.length} bytes but bytes ${offset}..${offset + length} are needed: it is cut short`,
        ),
      );
    }
    return Promise.resolve(Buffer.from(this.buf.subarray(offset, offset + length)));
  }
}

/**
 * Sector-granular copy-on-write over an image. Writes must cover whole sectors (every FAT
 * structure does); reads see the writes. `patches()` coalesces adjacent changed sectors.
 */
export class SectorOverlay implements ImageReader {
  private readonly changed = new Map<number, Buffer>();

  constructor(
    private readonly base: ImageReader,
    readonly sectorSize = 512,
  ) {}

  get size(): number {
    return this.base.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = await this.base.read(offset, length);
    if (this.changed.size === 0 || length === 0) return buf;
    const first = Math.floor(offset / this.sectorSize);
    const last = Math.floor((offset + length - 1) / this.sectorSize);
    for (let s = first; s <= last; s++) {
      const sector = this.changed.get(s);
      if (!sector) continue;
      const sectorStart = s * this.sectorSize;
      const from = Math.max(offset, sectorStart);
      const to = Math.min(offset + length, sectorStart + this.sectorSize);
      sector.copy(buf, from - offset, from - sectorStart, to - sectorStart);
    }
    return buf;
  }

  write(offset: number, data: Buffer): void {
    if (offset % this.sectorSize !== 0 || data.length % this.sectorSize !== 0) {
      throw new Error(`overlay writes whole ${this.sectorSize}-byte sectors; got ${data.length} bytes at ${offset}`);
    }
    if (offset + data.length > this.size)
      throw new InjectError(
        'IMAGE_TRUNCATED',
        `a write at ${offset}..${offset + data.length} runs past the end of the ${this.size}-byte image`,
      );
    for (let i = 0; i < data.length; i += this.sectorSize) {
      this.changed.set((offset + i) / this.sectorSize, Buffer.from(data.subarray(i, i + this.sectorSize)));
    }
  }

  /** The changes as sorted, non-overlapping patches; adjacent sectors merge into one patch. */
  patches(): Patch[] {
    const sectors = [...this.changed.keys()].sort((a, b) => a - b);
    const out: Patch[] = [];
    let runStart = -1;
    let run: Buffer[] = [];
    const flush = () => {
      if (run.length) out.push({ offset: runStart * this.sectorSize, data: Buffer.concat(run) });
      run = [];
    };
    for (const s of sectors) {
      if (run.length && s !== runStart + run.length) flush();
      if (!run.length) runStart = s;
      run.push(this.changed.get(s)!);
    }
    flush();
    return out;
  }
}

/** Applies patches to an image file in place (make-card's output, tests' copies). */
export async function applyPatchesToFile(path: string, patches: readonly Patch[]): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    for (const p of patches) await fh.write(p.data, 0, p.data.length, p.offset);
  } finally {
    await fh.close();
  }
}

/** Applies patches to an in-memory image copy. */
export function applyPatchesToBuffer(image: Buffer, patches: readonly Patch[]): Buffer {
  const out = Buffer.from(image);
  for (const p of patches) p.data.copy(out, p.offset);
  return out;
}

/**
 * A stream transform that replaces the patched byte ranges of an image flowing through it, so an
 * image can be written out (to a file or a card) patched in one pass, whatever its size.
 */
export function createPatchTransform(patches: readonly Patch[]): Transform {
  const sorted = [...patches].sort((a, b) => a.offset - b.offset);
  let position = 0;
  return new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback) {
      const start = position;
      const end = start + chunk.length;
      position = end;
      let copy: Buffer | undefined;
      for (const p of sorted) {
        const pEnd = p.offset + p.data.length;
        if (pEnd <= start) continue;
        if (p.offset >= end) break;
        copy ??= Buffer.from(chunk);
        const from = Math.max(start, p.offset);
        const to = Math.min(end, pEnd);
        p.data.copy(copy, from - start, from - p.offset, to - p.offset);
      }
      done(null, copy ?? chunk);
    },
  });
}
