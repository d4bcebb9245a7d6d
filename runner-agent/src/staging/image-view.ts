/**
 * A stored image as a board sees it: the image file with a few byte ranges replaced ("patches",
 * e.g. the boot partition's sectors that the inject layout rewrites). Nothing is copied: reads go
 * to the stored file and the patches are laid over them, so staging cost depends on the patches,
 * never on the image's size.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import type { PartPlan } from '../board/stage2-script.js';
import type { Patch } from '../image/disk.js';

export class ImageView {
  readonly patches: readonly Patch[];

  constructor(
    readonly path: string,
    readonly size: number,
    patches: readonly Patch[] = [],
  ) {
    const sorted = [...patches].filter((p) => p.data.length > 0).sort((a, b) => a.offset - b.offset);
    sorted.forEach((p, i) => {
      if (p.offset < 0 || p.offset + p.data.length > size)
        throw new Error(`patch at ${p.offset} (+${p.data.length}) lies outside the ${size}-byte image`);
      const prev = sorted[i - 1];
      if (prev && prev.offset + prev.data.length > p.offset)
        throw new Error(`patches at ${prev.offset} and ${p.offset} overlap`);
    });
    this.patches = sorted;
  }

  /** Bytes [position, position+length) of the view; past the image's end reads as zeros. */
  async read(handle: FileHandle, position: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    const end = Math.min(this.size, position + length);
    let got = 0;
    while (position + got < end) {
      const { bytesRead } = await handle.read(out, got, end - position - got, position + got);
      if (bytesRead === 0) throw new Error(`image ${this.path} is shorter than its recorded ${this.size} bytes`);
      got += bytesRead;
    }
    for (const p of this.patches) {
      const from = Math.max(p.offset, position);
      const to = Math.min(p.offset + p.data.length, position + length);
      if (from < to) p.data.copy(out, from - position, from - p.offset, to - p.offset);
    }
    return out;
  }

  /** True when a patch changes bytes in [offset, offset+length). */
  touches(offset: number, length: number): boolean {
    return this.patches.some((p) => p.offset < offset + length && offset < p.offset + p.data.length);
  }

  /**
   * CRC32 of every part as served (zero-padded to `servedSize`): the stored image's CRCs where no
   * patch touches the part, recomputed through the view where one does.
   */
  async servedPartCrcs(plan: readonly PartPlan[], storedCrcs: readonly number[]): Promise<number[]> {
    const crcs = [...storedCrcs];
    const touched = plan.filter((p) => this.touches(p.imageOffset, p.servedSize));
    const fresh = await this.partCrcs(touched);
    touched.forEach((part, i) => (crcs[part.index - 1] = fresh[i]!));
    return crcs;
  }

  /** CRC32 of each part as served, read through the view (parts the stored CRCs do not cover). */
  async partCrcs(parts: readonly PartPlan[]): Promise<number[]> {
    if (!parts.length) return [];
    const handle = await open(this.path, 'r');
    try {
      const crcs: number[] = [];
      for (const part of parts) {
        let crc = 0;
        for (let done = 0; done < part.servedSize;) {
          const n = Math.min(4 * 1024 * 1024, part.servedSize - done);
          crc = crc32(await this.read(handle, part.imageOffset + done, n), crc);
          done += n;
        }
        crcs.push(crc);
      }
      return crcs;
    } finally {
      await handle.close();
    }
  }
}
