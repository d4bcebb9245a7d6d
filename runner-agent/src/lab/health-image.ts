/**
 * The health check's known-good image, put into the content-addressed store the way an upload is,
 * so the health job runs through the same path as a client's job (a stored image, pinned while it
 * runs). Imported again only when the file's sha256 is not in the store (it changed, or was evicted).
 */
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { CodedError } from '../../../src/protocol/errors.js';
import { detectCompression, MAGIC_LENGTH } from '../../../src/protocol/compression.js';
import type { ImageStore, StoredImage } from '../store/image-store.js';

/**
 * The last digest of each health image, by path, with the size and mtime it was taken at: a
 * multi-GiB image is hashed again only when it changed, not before every check.
 */
const digests = new Map<string, { size: number; mtimeMs: number; sha256: string }>();

async function sha256Of(file: string, size: number, mtimeMs: number): Promise<string> {
  const known = digests.get(file);
  if (known && known.size === size && known.mtimeMs === mtimeMs) return known.sha256;
  const sha256 = await hashFile(file);
  digests.set(file, { size, mtimeMs, sha256 });
  return sha256;
}

async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function head(file: string): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buf = Buffer.alloc(MAGIC_LENGTH);
    const { bytesRead } = await handle.read(buf, 0, MAGIC_LENGTH, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/**
 * The stored copy of `file`. Throws LAB_MISCONFIGURED when the file cannot be read (the health
 * check's failure is then the server's, and says so), or the store's own code when it cannot hold it.
 */
export async function importHealthImage(store: ImageStore, file: string): Promise<StoredImage> {
  let size: number;
  let sha256: string;
  let compression;
  try {
    const info = await stat(file);
    size = info.size;
    sha256 = await sha256Of(file, info.size, info.mtimeMs);
    compression = detectCompression(await head(file), path.basename(file)).compression;
  } catch (err) {
    throw new CodedError('LAB_MISCONFIGURED', `health.image ${file}: ${(err as Error).message}`, { cause: err });
  }
  const held = await store.get(sha256);
  if (held) return held;
  const session = await store.begin({ sha256, size, compression });
  try {
    for await (const chunk of createReadStream(file, { start: session.offset, highWaterMark: 1024 * 1024 }))
      await session.write(chunk as Buffer);
    return await session.finish();
  } catch (err) {
    await session.discard().catch(() => {});
    throw err;
  }
}
