/**
 * CRC32 of each part of an image, as the board checks them (DESIGN §3.5): the image is cut into
 * parts of `partSize` bytes; the last part is padded with zeros to a multiple of 512 because the
 * board writes whole 512-byte blocks with `mmc write` and checks the CRC of what it wrote.
 *
 * The accumulator is fed an image's bytes in order, in one pass over the file (partCrcsOfFile): the
 * store reads an image for a part size the first time it is asked for (a flash with
 * flash.writeZeros), not while the upload arrives, since a flash of the mapped ranges needs CRCs
 * of parts cut at each range's own offset and computes those itself.
 */
import fs from 'node:fs';
import zlib from 'node:zlib';

export const SECTOR_SIZE = 512;

/** A part size must be a positive whole number of sectors: the board writes whole blocks. */
export function checkPartSize(partSize: number): void {
  if (!Number.isSafeInteger(partSize) || partSize <= 0 || partSize % SECTOR_SIZE !== 0) {
    throw new RangeError(`part size must be a positive multiple of ${SECTOR_SIZE} bytes, got ${partSize}`);
  }
}

export class PartCrcAccumulator {
  private readonly crcs: number[] = [];
  private crc = 0;
  private inPart = 0;
  private total = 0;

  constructor(readonly partSize: number) {
    checkPartSize(partSize);
  }

  /** Bytes fed so far. */
  get bytes(): number {
    return this.total;
  }

  update(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      const take = Math.min(chunk.length - at, this.partSize - this.inPart);
      this.crc = zlib.crc32(chunk.subarray(at, at + take), this.crc);
      this.inPart += take;
      at += take;
      if (this.inPart === this.partSize) {
        this.crcs.push(this.crc >>> 0);
        this.crc = 0;
        this.inPart = 0;
      }
    }
    this.total += chunk.length;
  }

  /** The CRC of every part; the accumulator must not be fed after this. */
  finish(): number[] {
    if (this.inPart > 0) {
      const pad = (SECTOR_SIZE - (this.inPart % SECTOR_SIZE)) % SECTOR_SIZE;
      if (pad > 0) this.crc = zlib.crc32(Buffer.alloc(pad), this.crc);
      this.crcs.push(this.crc >>> 0);
      this.crc = 0;
      this.inPart = 0;
    }
    return [...this.crcs];
  }
}

/** CRCs of the parts of a file on disk, read as a stream (bounded memory). */
export async function partCrcsOfFile(path: string, partSize: number): Promise<number[]> {
  const acc = new PartCrcAccumulator(partSize);
  for await (const chunk of fs.createReadStream(path, { highWaterMark: 1024 * 1024 })) {
    acc.update(chunk as Buffer);
  }
  return acc.finish();
}
