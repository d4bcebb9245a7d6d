/**
 * The simulated board's RAM: byte-addressable, allocated in pages only where something was
 * written (a 1 GiB board that loads a 64 MiB part holds 64 MiB). Unwritten bytes read as zero.
 */
import { crc32 } from 'node:zlib';

const PAGE_BITS = 16;
const PAGE_SIZE = 1 << PAGE_BITS; // 64 KiB

export class SparseMemory {
  private readonly pages = new Map<number, Buffer>();

  constructor(readonly size: number) {}

  private checkRange(addr: number, length: number): void {
    if (
      !Number.isSafeInteger(addr) ||
      !Number.isSafeInteger(length) ||
      addr < 0 ||
      length < 0 ||
      addr + length > this.size
    ) {
      throw new RangeError(
        `memory access 0x${addr.toString(16)}+0x${length.toString(16)} ` +
          `is outside the board's 0x${this.size.toString(16)} bytes of RAM`,
      );
    }
  }

  /** Visits [addr, addr+length) page by page; `page` is undefined where nothing was written yet. */
  private *chunks(
    addr: number,
    length: number,
  ): Generator<{ page: Buffer | undefined; pageIndex: number; offset: number; take: number; done: number }> {
    let done = 0;
    while (done < length) {
      const at = addr + done;
      const pageIndex = Math.floor(at / PAGE_SIZE);
      const offset = at % PAGE_SIZE;
      const take = Math.min(PAGE_SIZE - offset, length - done);
      yield { page: this.pages.get(pageIndex), pageIndex, offset, take, done };
      done += take;
    }
  }

  private page(index: number): Buffer {
    let p = this.pages.get(index);
    if (!p) {
      p = Buffer.alloc(PAGE_SIZE);
      this.pages.set(index, p);
    }
    return p;
  }

  read(addr: number, length: number): Buffer {
    this.checkRange(addr, length);
    const out = Buffer.alloc(length);
    for (const c of this.chunks(addr, length)) c.page?.copy(out, c.done, c.offset, c.offset + c.take);
    return out;
  }

  write(addr: number, data: Uint8Array): void {
    this.checkRange(addr, data.length);
    for (const c of this.chunks(addr, data.length))
      this.page(c.pageIndex).set(data.subarray(c.done, c.done + c.take), c.offset);
  }

  /** Repeats `pattern` over [addr, addr+length) — `mw` with a count. */
  fill(addr: number, length: number, pattern: Uint8Array): void {
    this.checkRange(addr, length);
    if (pattern.length === 0 || PAGE_SIZE % pattern.length !== 0)
      throw new Error(`fill pattern of ${pattern.length} bytes does not divide the page size`);
    // Byte addr+k gets pattern[k % length]; a page-sized tile starting at any phase covers a chunk.
    const tile = Buffer.alloc(PAGE_SIZE + pattern.length);
    for (let i = 0; i < tile.length; i++) tile[i] = pattern[i % pattern.length]!;
    for (const c of this.chunks(addr, length))
      tile.copy(this.page(c.pageIndex), c.offset, c.done % pattern.length, (c.done % pattern.length) + c.take);
  }

  crc32(addr: number, length: number): number {
    this.checkRange(addr, length);
    let crc = 0;
    let zeros: Buffer | undefined;
    for (const c of this.chunks(addr, length)) {
      if (c.page) crc = crc32(c.page.subarray(c.offset, c.offset + c.take), crc);
      else crc = crc32((zeros ??= Buffer.alloc(PAGE_SIZE)).subarray(0, c.take), crc);
    }
    return crc;
  }

  /** Bytes of host memory in use, for tests that want to see the model stays sparse. */
  get allocatedBytes(): number {
    return this.pages.size * PAGE_SIZE;
  }
}
