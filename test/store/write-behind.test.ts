import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WriteBehindFile } from '../../runner-agent/src/store/write-behind.js';

let tmp: string;
let handles: FileHandle[];

beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'rpi-flash-write-behind-'));
  handles = [];
});

afterEach(async () => {
  for (const handle of handles) await handle.close().catch(() => {});
  await fs.rm(tmp, { recursive: true, force: true });
});

async function openFile(file: string, flags = 'w'): Promise<FileHandle> {
  const handle = await fs.open(file, flags);
  handles.push(handle);
  return handle;
}

describe('WriteBehindFile', () => {
  for (const [label, batchBytes, maxInFlight] of [
    ['batches smaller than a chunk', 1000, 1],
    ['batches of many chunks, 3 writes in flight', 50_000, 3],
  ] as const) {
    it(`writes every byte in place with ${label}`, async () => {
      const file = path.join(tmp, 'out.bin');
      const data = randomBytes(300_007);
      const writer = new WriteBehindFile(await openFile(file), 0, { batchBytes, maxInFlight });
      for (let at = 0; at < data.length; at += 7_001)
        await writer.append(data.subarray(at, Math.min(at + 7_001, data.length)));
      expect(writer.appended).toBe(data.length);
      await writer.flush();
      expect(writer.written).toBe(data.length);
      expect(Buffer.compare(await fs.readFile(file), data)).toBe(0);
    });
  }

  it('keeps the bytes of the gathering batch off the disk until the batch fills or is flushed', async () => {
    const file = path.join(tmp, 'out.bin');
    const writer = new WriteBehindFile(await openFile(file), 0, { batchBytes: 10_000, maxInFlight: 2 });
    await writer.append(Buffer.alloc(4_000, 1));
    expect(writer.written).toBe(0);
    expect((await fs.stat(file)).size).toBe(0);
    await writer.append(Buffer.alloc(6_000, 2)); // fills the batch: its write is issued
    await writer.flush();
    expect(writer.written).toBe(10_000);
  });

  it('tells onWritten each time the unbroken run on disk grows, and the file holds that run when told', async () => {
    const file = path.join(tmp, 'out.bin');
    const data = randomBytes(100_003);
    const told: Array<{ written: number; matches: boolean }> = [];
    const writer = new WriteBehindFile(await openFile(file), 0, { batchBytes: 10_000, maxInFlight: 3 }, (written) => {
      // What a reader that follows onWritten (the hashing thread) finds at that moment.
      const onDisk = readFileSync(file).subarray(0, written);
      told.push({ written, matches: onDisk.length === written && onDisk.equals(data.subarray(0, written)) });
    });
    for (let at = 0; at < data.length; at += 3_001) await writer.append(data.subarray(at, at + 3_001));
    await writer.flush();
    const runs = told.map((t) => t.written);
    expect(runs.length).toBeGreaterThan(1);
    expect(runs).toEqual([...runs].sort((a, b) => a - b));
    expect(new Set(runs).size).toBe(runs.length);
    expect(runs.at(-1)).toBe(data.length);
    expect(told.every((t) => t.matches)).toBe(true);
  });

  it('appends after the bytes a resumed file already holds', async () => {
    const file = path.join(tmp, 'out.bin');
    await fs.writeFile(file, Buffer.from('held:'));
    const writer = new WriteBehindFile(await openFile(file, 'r+'), 5, { batchBytes: 4, maxInFlight: 2 });
    await writer.append(Buffer.from('new bytes'));
    await writer.flush();
    expect(writer.written).toBe(14);
    expect(await fs.readFile(file, 'utf8')).toBe('held:new bytes');
  });

  it('reports a failed write at the next append and at flush, and counts nothing past it as written', async () => {
    // /dev/full fails every write with ENOSPC: a real disk-full error, no mock.
    const writer = new WriteBehindFile(await openFile('/dev/full', 'r+'), 0, { batchBytes: 1000, maxInFlight: 2 });
    const errors: unknown[] = [];
    for (let i = 0; i < 10 && errors.length === 0; i++)
      await writer.append(Buffer.alloc(1000)).catch((e: unknown) => errors.push(e));
    expect((errors[0] as NodeJS.ErrnoException).code).toBe('ENOSPC');
    await expect(writer.append(Buffer.alloc(10))).rejects.toMatchObject({ code: 'ENOSPC' });
    await expect(writer.flush()).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(writer.written).toBe(0);
  });

  it('abandon() drops the gathering batch and waits for the writes in flight', async () => {
    const file = path.join(tmp, 'out.bin');
    const writer = new WriteBehindFile(await openFile(file), 0, { batchBytes: 1000, maxInFlight: 2 });
    await writer.append(Buffer.alloc(1000, 7)); // issued
    await writer.append(Buffer.alloc(500, 8)); // gathering
    await writer.abandon();
    expect(writer.written).toBe(1000);
    expect(await fs.readFile(file)).toEqual(Buffer.alloc(1000, 7));
  });

  it('refuses a batch size or write count that cannot work', async () => {
    const handle = await openFile(path.join(tmp, 'out.bin'));
    expect(() => new WriteBehindFile(handle, 0, { batchBytes: 0, maxInFlight: 1 })).toThrow(/batchBytes/);
    expect(() => new WriteBehindFile(handle, 0, { batchBytes: 10, maxInFlight: 0 })).toThrow(/maxInFlight/);
  });
});
