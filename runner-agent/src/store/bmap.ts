/**
 * Block maps in bmaptool's XML format (the `.bmap` Yocto writes beside a `.wic`): which blocks of
 * an image hold data, with a checksum per range. The agent takes the map the action uploads with
 * a job instead of deriving one (mapped-ranges.ts), once it has checked it against the stored
 * image: sizes, ranges inside the image, every range's checksum. Formats read: 2.x (ChecksumType
 * sha256, as bmaptool 3 writes it) and 1.2–1.4 (sha1).
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { XMLParser } from 'fast-xml-parser';
import { CodedError } from '../../../src/protocol/errors.js';
import { BMAP_MAX_BYTES } from '../../../src/protocol/messages.js';
import type { MappedRange } from './mapped-ranges.js';

const READ_CHUNK = 4 * 1024 * 1024;

type ChecksumType = 'sha1' | 'sha256';

export interface BmapRange {
  /** Block numbers, both included. */
  first: number;
  last: number;
  checksum?: string;
}

export interface Bmap {
  version: string;
  imageSize: number;
  blockSize: number;
  blocksCount: number;
  checksumType: ChecksumType;
  ranges: BmapRange[];
}

const invalid = (why: string) => new CodedError('BMAP_INVALID', `the block map is not valid: ${why}`);

function count(name: string, value: unknown): number {
  const text = typeof value === 'string' ? value.trim() : '';
  if (!/^\d{1,16}$/.test(text) || !Number.isSafeInteger(Number(text))) throw invalid(`<${name}> is not a number`);
  return Number(text);
}

/** The file's own checksum: computed over the text with the checksum's digits replaced by zeros. */
function checkFileChecksum(text: string, element: string, type: ChecksumType): void {
  const match = new RegExp(`(<${element}>\\s*)([0-9a-fA-F]+)(\\s*</${element}>)`).exec(text);
  if (!match) return;
  const stated = match[2]!.toLowerCase();
  const zeroed =
    text.slice(0, match.index) +
    match[1] +
    '0'.repeat(stated.length) +
    text.slice(match.index + match[1]!.length + stated.length);
  const actual = createHash(type).update(zeroed).digest('hex');
  if (actual !== stated)
    throw invalid(`its ${element} is ${stated} but the file hashes to ${actual} (damaged or edited)`);
}

export function parseBmap(text: string): Bmap {
  if (Buffer.byteLength(text) > BMAP_MAX_BYTES) throw invalid(`it is larger than ${BMAP_MAX_BYTES} bytes`);
  let doc: unknown;
  try {
    doc = new XMLParser({
      ignoreAttributes: false,
      attributeNamePrefix: '',
      parseTagValue: false,
      parseAttributeValue: false,
      processEntities: false,
      isArray: (name) => name === 'Range',
    }).parse(text, true);
  } catch (err) {
    throw invalid(`not XML (${(err as Error).message.split('\n')[0]})`);
  }
  const root = (doc as { bmap?: unknown } | undefined)?.bmap;
  if (!root || typeof root !== 'object') throw invalid('it has no <bmap> element');
  const b = root as Record<string, unknown>;
  const version = typeof b.version === 'string' ? b.version : '';
  const [major, minor] = version.split('.').map(Number);
  let checksumType: ChecksumType;
  if (major === 2) {
    const type = typeof b.ChecksumType === 'string' ? b.ChecksumType.trim() : '';
    if (type !== 'sha256' && type !== 'sha1')
      throw new CodedError('BMAP_UNSUPPORTED', `the block map's ChecksumType "${type}" is not sha256 or sha1`);
    checksumType = type;
    checkFileChecksum(text, 'BmapFileChecksum', checksumType);
  } else if (major === 1 && minor !== undefined && minor >= 2 && minor <= 4) {
    checksumType = 'sha1';
    checkFileChecksum(text, 'BmapFileSHA1', 'sha1');
  } else {
    throw new CodedError(
      'BMAP_UNSUPPORTED',
      `block map version "${version}" is not one the agent reads (2.x, or 1.2 to 1.4)`,
    );
  }
  const imageSize = count('ImageSize', b.ImageSize);
  const blockSize = count('BlockSize', b.BlockSize);
  const blocksCount = count('BlocksCount', b.BlocksCount);
  if (blockSize < 512 || blockSize % 512 !== 0) throw invalid(`<BlockSize> ${blockSize} is not a multiple of 512`);
  if (blocksCount !== Math.ceil(imageSize / blockSize))
    throw invalid(`<BlocksCount> ${blocksCount} does not cover <ImageSize> ${imageSize} in blocks of ${blockSize}`);
  const map = b.BlockMap as { Range?: unknown[] } | string | undefined;
  const raw = typeof map === 'object' && map ? (map.Range ?? []) : [];
  const attribute = major === 2 ? 'chksum' : 'sha1';
  const digits = checksumType === 'sha256' ? 64 : 40;
  const ranges: BmapRange[] = raw.map((r, i) => {
    const entry = typeof r === 'string' ? { '#text': r } : (r as Record<string, unknown>);
    const text = entry['#text'];
    const body = typeof text === 'string' ? text.trim() : '';
    const m = /^(\d{1,15})(?:-(\d{1,15}))?$/.exec(body);
    if (!m) throw invalid(`range ${i + 1} "${body}" is not <first>-<last>`);
    const first = Number(m[1]);
    const last = m[2] === undefined ? first : Number(m[2]);
    if (last < first) throw invalid(`range ${i + 1} "${body}" ends before it starts`);
    if (last >= blocksCount) throw invalid(`range ${i + 1} "${body}" runs past the image's ${blocksCount} blocks`);
    const checksum = entry[attribute];
    if (
      checksum !== undefined &&
      (typeof checksum !== 'string' || !new RegExp(`^[0-9a-fA-F]{${digits}}$`).test(checksum))
    )
      throw invalid(`range ${i + 1} has a malformed ${attribute}`);
    return { first, last, ...(typeof checksum === 'string' ? { checksum: checksum.toLowerCase() } : {}) };
  });
  ranges.forEach((r, i) => {
    const prev = ranges[i - 1];
    if (prev && r.first <= prev.last) throw invalid(`ranges ${i} and ${i + 1} overlap or are out of order`);
  });
  if (b.MappedBlocksCount !== undefined) {
    const mapped = count('MappedBlocksCount', b.MappedBlocksCount);
    const sum = ranges.reduce((n, r) => n + r.last - r.first + 1, 0);
    if (mapped !== sum) throw invalid(`<MappedBlocksCount> ${mapped} differs from the ${sum} blocks its ranges hold`);
  }
  return { version, imageSize, blockSize, blocksCount, checksumType, ranges };
}

/** The map's ranges in bytes, the last cut at the image's end (the board pads it to a sector). */
export function bmapByteRanges(bmap: Bmap): MappedRange[] {
  return bmap.ranges.map((r) => {
    const offset = r.first * bmap.blockSize;
    return { offset, length: Math.min((r.last + 1) * bmap.blockSize, bmap.imageSize) - offset };
  });
}

/**
 * Checks the map against the image file: the same size, and every range's checksum over the
 * image's bytes. Reads the mapped bytes once.
 */
export async function verifyBmap(bmap: Bmap, imagePath: string, imageSize: number): Promise<void> {
  if (bmap.imageSize !== imageSize)
    throw new CodedError(
      'BMAP_MISMATCH',
      `the block map is for an image of ${bmap.imageSize} bytes; the image has ${imageSize}`,
    );
  const buffer = Buffer.alloc(READ_CHUNK);
  const handle = await open(imagePath, 'r');
  try {
    for (const [i, range] of bmap.ranges.entries()) {
      if (!range.checksum) continue;
      const { offset, length } = bmapByteRanges({ ...bmap, ranges: [range] })[0]!;
      const hash = createHash(bmap.checksumType);
      for (let done = 0; done < length;) {
        const { bytesRead } = await handle.read(buffer, 0, Math.min(READ_CHUNK, length - done), offset + done);
        if (bytesRead === 0) throw new Error(`image ${imagePath} is shorter than its recorded ${imageSize} bytes`);
        hash.update(buffer.subarray(0, bytesRead));
        done += bytesRead;
      }
      const actual = hash.digest('hex');
      if (actual !== range.checksum)
        throw new CodedError(
          'BMAP_MISMATCH',
          `block map range ${i + 1} (blocks ${range.first}-${range.last}) has ${bmap.checksumType} ` +
            `${range.checksum}, the image's bytes there hash to ${actual}: the map belongs to another image`,
        );
    }
  } finally {
    await handle.close();
  }
}
