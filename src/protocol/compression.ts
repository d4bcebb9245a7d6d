/**
 * What compression an image file uses, from its first bytes, cross-checked with its name: the one
 * rule for the action (which tells the agent the format of an upload) and the agent's `make-card`
 * (which decompresses a local image), so that both accept and refuse the same files in the same words.
 */
import type { Compression } from './messages.js';

/** The magic numbers of the formats the agent decompresses (a zstd frame's is 0xfd2fb528, little-endian). */
export const MAGIC = {
  gz: [0x1f, 0x8b],
  xz: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
  zst: [0x28, 0xb5, 0x2f, 0xfd],
} as const satisfies Record<Exclude<Compression, 'none'>, readonly number[]>;

export interface CompressionFormat {
  name: string;
  bytes: readonly number[];
  /** Unset for formats we recognise only to name them in an error: the agent cannot decompress them. */
  compression?: Exclude<Compression, 'none'>;
}

const FORMATS: readonly CompressionFormat[] = [
  { name: 'gzip', bytes: MAGIC.gz, compression: 'gz' },
  { name: 'xz', bytes: MAGIC.xz, compression: 'xz' },
  { name: 'zstd', bytes: MAGIC.zst, compression: 'zst' },
  { name: 'bzip2', bytes: [0x42, 0x5a, 0x68] },
  { name: 'zip', bytes: [0x50, 0x4b, 0x03, 0x04] },
  { name: 'lz4', bytes: [0x04, 0x22, 0x4d, 0x18] },
  { name: '7z', bytes: [0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c] },
];

const EXTENSIONS: Record<string, string> = {
  '.gz': 'gzip',
  '.gzip': 'gzip',
  '.xz': 'xz',
  '.zst': 'zstd',
  '.zstd': 'zstd',
  '.bz2': 'bzip2',
  '.zip': 'zip',
  '.lz4': 'lz4',
  '.7z': '7z',
  '.lzma': 'lzma',
  '.lz': 'lzip',
};

/** How many leading bytes `detectCompression` looks at: the longest magic number. */
export const MAGIC_LENGTH = Math.max(...FORMATS.map((f) => f.bytes.length));
const SUPPORTED = 'raw, .gz, .xz or .zst';

/** Thrown when a file's compression is one the agent cannot decompress, or its name and content disagree. */
export class CompressionError extends Error {
  override name = 'CompressionError';
}

/** The format named by the file's content; undefined when no known compression magic is found. */
export function formatFromMagic(head: Uint8Array): CompressionFormat | undefined {
  return FORMATS.find((f) => f.bytes.every((b, i) => head[i] === b));
}

/** The format the name promises, if its last extension names a compression format. */
export function formatFromName(name: string): string | undefined {
  const ext = /\.[a-z0-9]+$/i.exec(name)?.[0]?.toLowerCase();
  return ext === undefined ? undefined : EXTENSIONS[ext];
}

export interface DetectedCompression {
  compression: Compression;
  /** Set when the content is compressed but the name does not say so (worth a log line, not an error). */
  note?: string;
}

/**
 * The compression of a file from its first `MAGIC_LENGTH` bytes (fewer for a shorter file), by
 * content so that a renamed file still decompresses, cross-checked with its name. Throws
 * CompressionError (naming the file) when the format is one the agent cannot decompress, or when the
 * name and content disagree: that usually means a truncated download or an HTML error page saved
 * under the image's name.
 */
export function detectCompression(head: Uint8Array, name: string): DetectedCompression {
  const magic = formatFromMagic(head);
  const named = formatFromName(name);
  if (magic && magic.compression === undefined) {
    throw new CompressionError(`${name} is ${magic.name}-compressed; supported images are ${SUPPORTED}`);
  }
  if (named !== undefined && !FORMATS.some((f) => f.name === named && f.compression)) {
    throw new CompressionError(`${name}: ${named} compression is not supported; supported images are ${SUPPORTED}`);
  }
  if (named !== undefined && named !== magic?.name) {
    const seen = Array.from(head.subarray(0, MAGIC_LENGTH), (b) => b.toString(16).padStart(2, '0')).join(' ');
    const what = magic ? `${magic.name} data` : 'not compressed';
    throw new CompressionError(
      `${name}: the name says ${named} but the content is ${what} (first bytes: ${seen}); ` +
        'is the file truncated or not the image?',
    );
  }
  if (magic?.compression === undefined) return { compression: 'none' };
  return {
    compression: magic.compression,
    ...(named === undefined && { note: `${name} is ${magic.name}-compressed although its name does not say so` }),
  };
}
