/**
 * The store's index: one small JSON file per image (`<sha256>.json` beside `<sha256>.img`).
 * One file per image instead of one index file: a crash can only ever leave one image's record
 * stale, writes for different images never race, and each write is atomic (temp file + rename).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { COMPRESSIONS, SHA256_PATTERN, type Compression } from '../../../src/protocol/messages.js';

export const META_VERSION = 1;

export interface ImageMeta {
  version: typeof META_VERSION;
  sha256: string;
  imageSize: number;
  wireSize: number;
  compression: Compression;
  storedAt: number;
  lastUsed: number;
  /** CRC32 of each part (last part zero-padded to 512), keyed by part size in bytes. */
  partCrcs: Record<string, number[]>;
  /** The derived mapped ranges as [offset, length] pairs, keyed by the shortest unmapped zero run. */
  mapped?: Record<string, Array<[number, number]>>;
  /** Block maps checked against the image, as [offset, length] pairs, keyed by the sha256 of the map's text. */
  bmaps?: Record<string, Array<[number, number]>>;
}

/** Every temporary file of the store ends so; `init()` removes them (they are leftovers of a crash). */
export const TEMP_SUFFIX = '.tmp';

export function tempName(path: string): string {
  return `${path}.${randomBytes(4).toString('hex')}${TEMP_SUFFIX}`;
}

/** Writes `data` to `path` so that a reader (or a crash) sees the old file or the new one, never half. */
export async function writeFileAtomic(path: string, data: string): Promise<void> {
  const temp = tempName(path);
  const handle = await fs.open(temp, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.rename(temp, path);
  } catch (err) {
    await fs.rm(temp, { force: true });
    throw err;
  }
}

export async function writeMeta(path: string, meta: ImageMeta): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(meta) + '\n');
}

const isSize = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0;

/** Parses a metadata file; returns why it is unusable instead of throwing. */
export function parseMeta(text: string, expectedSha: string): ImageMeta | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return `not JSON: ${(err as Error).message}`;
  }
  const m = value as Partial<ImageMeta> | null;
  if (!m || typeof m !== 'object') return 'not an object';
  if (m.version !== META_VERSION) return `unknown version ${String(m.version)}`;
  if (m.sha256 !== expectedSha || !SHA256_PATTERN.test(m.sha256)) return 'sha256 does not match the file name';
  if (!isSize(m.imageSize) || !isSize(m.wireSize)) return 'bad sizes';
  if (!COMPRESSIONS.includes(m.compression as Compression)) return `bad compression ${String(m.compression)}`;
  if (!isSize(m.storedAt) || !isSize(m.lastUsed)) return 'bad times';
  const crcs: Record<string, number[]> = {};
  if (m.partCrcs && typeof m.partCrcs === 'object') {
    for (const [size, list] of Object.entries(m.partCrcs)) {
      if (Array.isArray(list) && list.every((crc) => Number.isInteger(crc) && crc >= 0 && crc <= 0xffffffff)) {
        crcs[size] = list;
      }
    }
  }
  return { ...(m as ImageMeta), partCrcs: crcs, mapped: rangeLists(m.mapped), bmaps: rangeLists(m.bmaps) };
}

/** The well-formed entries of a record of [offset, length] lists; anything else is dropped (recomputed). */
function rangeLists(value: unknown): Record<string, Array<[number, number]>> {
  const out: Record<string, Array<[number, number]>> = {};
  if (!value || typeof value !== 'object') return out;
  for (const [key, list] of Object.entries(value as Record<string, unknown>)) {
    if (Array.isArray(list) && list.every((r) => Array.isArray(r) && r.length === 2 && r.every(isSize)))
      out[key] = list as Array<[number, number]>;
  }
  return out;
}
