/**
 * FileDigest: the worker thread that hashes an upload by reading its partial file back, as far as
 * the writes have completed.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileDigest } from '../../runner-agent/src/store/upload-digest.js';

let tmp: string;
beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'rpi-flash-digest-'));
});
afterEach(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function pattern(length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + (i >> 9)) & 0xff;
  return b;
}

const openFds = async () => (await fs.readdir('/proc/self/fd')).length;

describe('FileDigest', () => {
  it('hashes what the file holds as the writes are announced: the sha256 of the whole', async () => {
    const data = pattern(3 * 1024 * 1024 + 777);
    const file = path.join(tmp, 'partial');
    const handle = await fs.open(file, 'w');
    const digest = new FileDigest({ file, maxLagBytes: 64 * 1024 });
    await digest.open();
    try {
      // Pieces that cut across the worker's 1 MiB reads.
      for (let at = 0; at < data.length;) {
        const end = Math.min(at + 300_001, data.length);
        await handle.write(data, at, end - at, at);
        digest.written(end);
        await digest.keepUp(end);
        at = end;
      }
      expect(await digest.finish(data.length)).toEqual({ sha256: createHash('sha256').update(data).digest('hex') });
    } finally {
      await handle.close();
      await digest.close();
    }
  });

  it('reads the bytes a file already holds when told at once (a resumed upload)', async () => {
    const data = pattern(2 * 1024 * 1024 + 5);
    const file = path.join(tmp, 'partial');
    await fs.writeFile(file, data);
    const digest = new FileDigest({ file });
    await digest.open();
    digest.written(data.length);
    const result = await digest.finish(data.length);
    expect(result).toEqual({ sha256: createHash('sha256').update(data).digest('hex') });
  });

  it('keepUp() does not wait for bytes not yet written, however far the appends are ahead', async () => {
    const file = path.join(tmp, 'partial');
    await fs.writeFile(file, pattern(1000));
    const digest = new FileDigest({ file, maxLagBytes: 10 });
    await digest.open();
    try {
      digest.written(1000);
      // 100 MiB appended, 1000 bytes written: once the worker has read those, keepUp has nothing to wait for.
      await digest.keepUp(100 * 1024 * 1024);
    } finally {
      await digest.close();
    }
  });

  it('fails finish() with the file too short for the bytes said to be written, and closes its descriptor', async () => {
    const file = path.join(tmp, 'partial');
    await fs.writeFile(file, pattern(4096));
    const before = await openFds();
    const digest = new FileDigest({ file });
    await digest.open();
    digest.written(4096);
    await expect(digest.finish(8192)).rejects.toThrow(/the partial file ends at 4096 bytes, 8192 were written/);
    await digest.close();
    expect(await openFds()).toBe(before);
  });
});
