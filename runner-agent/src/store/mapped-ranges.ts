/**
 * The mapped ranges of a stored image (issue 13): the byte ranges a board must write. What lies
 * outside them is left as it is on the card, as bmaptool does. Without a block map from the
 * image's build, the agent derives one: a run of all-zero bytes at least `minZeroRun` long is
 * unmapped; everything else, shorter zero runs included, is mapped (a new part costs the board a
 * TFTP request and a report, more than a short run of zeros on the wire).
 *
 * Ranges are sorted, disjoint, never adjacent, aligned to 512-byte sectors (the board writes
 * whole blocks) and end at most at the image's size rounded up to a sector.
 */
import { open } from 'node:fs/promises';

export const SECTOR = 512;
/** Zero detection works on blocks of this size (bmaptool's default block size). */
export const ZERO_BLOCK = 4096;
/** Bytes read at a time while scanning. */
const SCAN_CHUNK = 4 * 1024 * 1024;

export interface MappedRange {
  offset: number;
  length: number;
}

/** Bytes the ranges cover. */
export function mappedBytes(ranges: readonly MappedRange[]): number {
  return ranges.reduce((sum, r) => sum + r.length, 0);
}

/** Checks a `minZeroRun` setting: a positive multiple of ZERO_BLOCK. */
export function checkMinZeroRun(minZeroRun: number): void {
  if (!Number.isSafeInteger(minZeroRun) || minZeroRun < ZERO_BLOCK || minZeroRun % ZERO_BLOCK !== 0)
    throw new RangeError(`the shortest unmapped zero run must be a multiple of ${ZERO_BLOCK} bytes, got ${minZeroRun}`);
}

/**
 * Builds ranges from the image's blocks of ZERO_BLOCK bytes, told one at a time whether each is all
 * zeros (the last one may be short). Kept apart from the file reading so the rule is tested alone.
 */
export class MappedRangeBuilder {
  private readonly ranges: MappedRange[] = [];
  private position = 0;
  /** Start of the zero run in progress, or of the mapped range in progress; -1: none. */
  private zeroFrom = -1;
  private mappedFrom = -1;

  constructor(private readonly minZeroRun: number) {
    checkMinZeroRun(minZeroRun);
  }

  block(length: number, zero: boolean): void {
    if (zero) {
      if (this.zeroFrom < 0) this.zeroFrom = this.position;
    } else {
      this.endZeroRun();
      if (this.mappedFrom < 0) this.mappedFrom = this.position;
    }
    this.position += length;
  }

  finish(): MappedRange[] {
    this.endZeroRun();
    this.closeMapped(this.position);
    return this.ranges;
  }

  /** A zero run long enough ends the mapped range before it; a shorter one belongs to the data around it. */
  private endZeroRun(): void {
    if (this.zeroFrom < 0) return;
    if (this.position - this.zeroFrom >= this.minZeroRun) this.closeMapped(this.zeroFrom);
    else if (this.mappedFrom < 0) this.mappedFrom = this.zeroFrom;
    this.zeroFrom = -1;
  }

  private closeMapped(end: number): void {
    if (this.mappedFrom < 0) return;
    this.ranges.push({ offset: this.mappedFrom, length: alignUp(end) - this.mappedFrom });
    this.mappedFrom = -1;
  }
}

function alignUp(n: number): number {
  return Math.ceil(n / SECTOR) * SECTOR;
}

/** Reads the image once and derives its mapped ranges (see the file's comment). */
export async function deriveMappedRanges(path: string, size: number, minZeroRun: number): Promise<MappedRange[]> {
  const builder = new MappedRangeBuilder(minZeroRun);
  const zeros = Buffer.alloc(ZERO_BLOCK);
  const buffer = Buffer.alloc(SCAN_CHUNK);
  const handle = await open(path, 'r');
  try {
    for (let position = 0; position < size;) {
      const want = Math.min(SCAN_CHUNK, size - position);
      const { bytesRead } = await handle.read(buffer, 0, want, position);
      if (bytesRead === 0) throw new Error(`image ${path} is shorter than its recorded ${size} bytes`);
      for (let at = 0; at < bytesRead; at += ZERO_BLOCK) {
        const block = buffer.subarray(at, Math.min(at + ZERO_BLOCK, bytesRead));
        builder.block(block.length, block.equals(zeros.subarray(0, block.length)));
      }
      position += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return builder.finish();
}
