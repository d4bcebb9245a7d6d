/**
 * The action's side of image compression: which format a file uses is the shared rule of
 * protocol/compression.ts (re-exported here for image.ts); what only the action needs is the
 * decompressed size, when the container records it exactly, for the agent's disk-space check.
 */
import type { FileHandle } from 'node:fs/promises';
import { MAGIC } from '../protocol/compression.js';
import type { Compression } from '../protocol/messages.js';

/**
 * The decompressed size when the file records it exactly, else undefined:
 * - xz: the stream index lists every block's uncompressed size (exact, read from the end of the file);
 * - zstd: every frame's header carries its content size when the compressor knew it (zstd on a file does);
 * - gzip: the trailer holds the size modulo 2^32 and only for the last member, so it is used only when
 *   the file is too small to have wrapped (deflate expands at most ~1032×).
 */
export async function decompressedSize(
  file: FileHandle,
  size: number,
  compression: Compression,
): Promise<number | undefined> {
  try {
    switch (compression) {
      case 'none':
        return size;
      case 'gz':
        return await gzipSize(file, size);
      case 'xz':
        return await xzSize(file, size);
      case 'zst':
        return await zstdSize(file, size);
    }
  } catch {
    return undefined; // An unparseable container is for the agent to report; the size is only a hint.
  }
}

async function readAt(file: FileHandle, position: number, length: number): Promise<Buffer> {
  if (position < 0) throw new RangeError('read before the start of the file');
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await file.read(buffer, 0, length, position);
  if (bytesRead !== length) throw new RangeError('read past the end of the file');
  return buffer;
}

const DEFLATE_MAX_RATIO = 1032;

async function gzipSize(file: FileHandle, size: number): Promise<number | undefined> {
  if (size < 18 || size * DEFLATE_MAX_RATIO >= 2 ** 32) return undefined;
  return (await readAt(file, size - 4, 4)).readUInt32LE(0);
}

/** xz multibyte integer: 7 bits per byte, little-endian, high bit = more. */
function readVarint(buffer: Buffer, at: { pos: number }): number {
  let value = 0;
  for (let shift = 0; shift < 63; shift += 7) {
    const byte = buffer[at.pos++];
    if (byte === undefined) throw new RangeError('truncated xz integer');
    value += (byte & 0x7f) * 2 ** shift;
    if ((byte & 0x80) === 0) return value;
  }
  throw new RangeError('xz integer too long');
}

/** Every xz stream starts with the format's magic; walking backwards must land on one. */
const XZ_HEADER = Buffer.from(MAGIC.xz);

async function xzSize(file: FileHandle, size: number): Promise<number | undefined> {
  let end = size;
  let total = 0;
  // Walk the streams backwards: [stream][padding][stream][padding]… each ends in a 12-byte footer.
  while (end > 0) {
    while (end >= 4 && (await readAt(file, end - 4, 4)).readUInt32LE(0) === 0) end -= 4; // stream padding
    if (end === 0) break;
    const footer = await readAt(file, end - 12, 12);
    if (footer[10] !== 0x59 || footer[11] !== 0x5a) return undefined;
    const indexSize = (footer.readUInt32LE(4) + 1) * 4;
    const indexStart = end - 12 - indexSize;
    const index = await readAt(file, indexStart, indexSize);
    if (index[0] !== 0x00) return undefined;
    const at = { pos: 1 };
    const records = readVarint(index, at);
    let blocks = 0;
    for (let i = 0; i < records; i++) {
      const unpadded = readVarint(index, at);
      total += readVarint(index, at);
      blocks += Math.ceil(unpadded / 4) * 4;
    }
    end = indexStart - blocks - 12;
    if (!(await readAt(file, end, XZ_HEADER.length)).equals(XZ_HEADER)) return undefined;
  }
  return total;
}

/** A zstd frame's magic as the little-endian word the walk reads. */
const ZSTD_FRAME_MAGIC = Buffer.from(MAGIC.zst).readUInt32LE(0);

async function zstdSize(file: FileHandle, size: number): Promise<number | undefined> {
  let pos = 0;
  let total = 0;
  while (pos < size) {
    const magic = (await readAt(file, pos, 4)).readUInt32LE(0);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      pos += 8 + (await readAt(file, pos + 4, 4)).readUInt32LE(0); // skippable frame
      continue;
    }
    if (magic !== ZSTD_FRAME_MAGIC) return undefined;
    const descriptor = (await readAt(file, pos + 4, 1))[0]!;
    const fcsFlag = descriptor >> 6;
    const singleSegment = (descriptor & 0x20) !== 0;
    const hasChecksum = (descriptor & 0x04) !== 0;
    const dictIdBytes = [0, 1, 2, 4][descriptor & 0x03]!;
    const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
    if (fcsBytes === 0) return undefined; // this frame does not record its size
    const fcsAt = pos + 5 + (singleSegment ? 0 : 1) + dictIdBytes;
    const fcs = await readAt(file, fcsAt, fcsBytes);
    total +=
      fcsBytes === 1
        ? fcs[0]!
        : fcsBytes === 2
          ? fcs.readUInt16LE(0) + 256
          : fcsBytes === 4
            ? fcs.readUInt32LE(0)
            : Number(fcs.readBigUInt64LE(0));
    // Skip the frame's blocks (3-byte headers) to find the next frame; a second frame is common with pzstd.
    pos = fcsAt + fcsBytes;
    for (;;) {
      const header = await readAt(file, pos, 3);
      const value = header[0]! | (header[1]! << 8) | (header[2]! << 16);
      const type = (value >> 1) & 0x03;
      if (type === 3) return undefined;
      pos += 3 + (type === 1 ? 1 : value >>> 3);
      if (value & 1) break;
    }
    if (hasChecksum) pos += 4;
  }
  return pos === size ? total : undefined;
}
