import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CodedError, type ErrorCode } from '../../src/protocol/errors.js';
import type { Compression } from '../../src/protocol/messages.js';
import { createLogger, silentLogger, type LogRecord } from '../../runner-agent/src/log.js';
import type { ImageMeta } from '../../runner-agent/src/store/image-meta.js';
import { ImageStore, type ImageStoreOptions } from '../../runner-agent/src/store/image-store.js';
import type { UploadSession } from '../../runner-agent/src/store/upload-session.js';

const PART = 64 * 1024;

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** A disk-image-like buffer: random blocks, zero runs and text, a size that is no multiple of 512. */
function makeImage(size: number, seed = 1): Buffer {
  const out = Buffer.alloc(size);
  const text = Buffer.from(`seed ${seed} /usr/lib/libfoo.so.1 lorem ipsum dolor sit amet\n`.repeat(200));
  for (let at = 0, block = 0; at < size; at += 8192, block++) {
    const len = Math.min(8192, size - at);
    const kind = (block + seed) % 3;
    if (kind === 0) randomBytes(len).copy(out, at);
    else if (kind === 2) text.copy(out, at, 0, len);
  }
  return out;
}

function compress(data: Buffer, compression: Compression): Buffer {
  if (compression === 'none') return data;
  if (compression === 'gz') return zlib.gzipSync(data);
  const [cmd, args] = compression === 'xz' ? ['xz', ['-c', '-1', '-T1']] : ['zstd', ['-c', '-q', '-3']];
  const run = spawnSync(cmd, args, { input: data, maxBuffer: 256 * 1024 * 1024 });
  if (run.status !== 0) throw new Error(`${cmd} failed: ${run.stderr.toString()}`);
  return run.stdout;
}

/** The reference the board checks: each range of the image, the last padded with zeros to 512. */
function expectedCrcs(image: Buffer, partSize: number): number[] {
  const crcs: number[] = [];
  for (let at = 0; at < image.length; at += partSize) {
    const part = image.subarray(at, Math.min(at + partSize, image.length));
    const padded = Buffer.concat([part, Buffer.alloc((512 - (part.length % 512)) % 512)]);
    crcs.push(zlib.crc32(padded));
  }
  return crcs;
}

async function send(session: UploadSession, wire: Buffer, chunk = 100_000, upTo = wire.length): Promise<void> {
  for (let at = session.offset; at < upTo; at += chunk) {
    await session.write(wire.subarray(at, Math.min(at + chunk, upTo)));
  }
}

async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<CodedError> {
  const err = await promise.then(
    () => {
      throw new Error(`expected CodedError ${code}, but it succeeded`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CodedError);
  expect((err as CodedError).code, (err as CodedError).message).toBe(code);
  return err as CodedError;
}

async function exists(file: string): Promise<boolean> {
  return fs.stat(file).then(
    () => true,
    () => false,
  );
}

async function duBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await fs.stat(path.join(entry.parentPath, entry.name))).size;
  }
  return total;
}

let tmp: string;
let stores: ImageStore[];

beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'rpi-flash-store-'));
  stores = [];
});

afterEach(async () => {
  for (const store of stores) await store.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

async function openStore(o: Partial<ImageStoreOptions> = {}): Promise<ImageStore> {
  const store = new ImageStore({
    dir: path.join(tmp, 'state', 'images'),
    maxBytes: 1024 * 1024 * 1024,
    log: silentLogger,
    minFreeBytes: 0,
    ...o,
  });
  stores.push(store);
  await store.init();
  return store;
}

async function upload(store: ImageStore, image: Buffer, compression: Compression = 'none') {
  const wire = compress(image, compression);
  const session = await store.begin({ sha256: sha(wire), size: wire.length, compression });
  await send(session, wire);
  return { stored: await session.finish(), wire };
}

describe('storing an upload', () => {
  for (const compression of ['none', 'gz', 'xz', 'zst'] as const) {
    it(`stores a ${compression} upload decompressed, named by the sha256 of the wire bytes`, async () => {
      const store = await openStore();
      const image = makeImage(300_000 + 123);
      const { stored, wire } = await upload(store, image, compression);
      if (compression !== 'none') expect(wire.length).toBeLessThan(image.length);

      expect(stored.sha256).toBe(sha(wire));
      expect(stored.wireSize).toBe(wire.length);
      expect(stored.imageSize).toBe(image.length);
      expect(stored.compression).toBe(compression);
      expect(Buffer.compare(await fs.readFile(stored.path), image)).toBe(0);
      expect((await store.get(stored.sha256))?.path).toBe(stored.path);
      expect(store.list().map((i) => i.sha256)).toEqual([stored.sha256]);
      // Nothing of the upload is left behind.
      expect(await fs.readdir(path.join(tmp, 'state', 'images', 'partial'))).toEqual([]);
    });
  }

  it('computes the part CRCs while storing, the last part padded with zeros to 512 bytes', async () => {
    const store = await openStore();
    const image = makeImage(5 * PART + 777);
    const { stored } = await upload(store, image, 'zst');
    const crcs = await store.storedPartCrcs(stored.sha256, PART);
    expect(crcs).toHaveLength(6);
    expect(crcs).toEqual(expectedCrcs(image, PART));
    // They are in the record written at publish time, not read back from the image.
    const meta = JSON.parse(await fs.readFile(stored.path.replace(/\.img$/, '.json'), 'utf8')) as ImageMeta;
    expect(meta.partCrcs[String(PART)]).toEqual(crcs);
  });

  it('computes and caches the CRCs for another part size on request', async () => {
    const store = await openStore();
    const image = makeImage(3 * 4096 + 100);
    const { stored } = await upload(store, image);
    expect(await store.storedPartCrcs(stored.sha256, 4096)).toEqual(expectedCrcs(image, 4096));
    const meta = JSON.parse(await fs.readFile(stored.path.replace(/\.img$/, '.json'), 'utf8')) as ImageMeta;
    expect(meta.partCrcs['4096']).toEqual(expectedCrcs(image, 4096));
    await expectCode(store.storedPartCrcs(stored.sha256, 1000), 'BAD_REQUEST');
    await expectCode(store.storedPartCrcs('0'.repeat(64), 4096), 'IMAGE_NOT_FOUND');
  });

  it('stores an empty image', async () => {
    const store = await openStore();
    const { stored } = await upload(store, Buffer.alloc(0));
    expect(stored.imageSize).toBe(0);
    expect(await store.storedPartCrcs(stored.sha256, PART)).toEqual([]);
  });

  it('answers begin() for an image it holds with everything already received', async () => {
    const store = await openStore();
    const { stored, wire } = await upload(store, makeImage(10_000));
    const again = await store.begin({ sha256: stored.sha256, size: wire.length, compression: 'none' });
    expect(again.offset).toBe(wire.length);
    expect((await again.finish()).path).toBe(stored.path);
  });

  it('refuses a second upload of the same sha256 while one is in progress', async () => {
    const store = await openStore();
    const wire = makeImage(10_000);
    const first = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' });
    await expectCode(store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' }), 'UPLOAD_IN_PROGRESS');
    await first.discard();
  });

  it('refuses bad requests before any byte', async () => {
    const store = await openStore();
    await expectCode(store.begin({ sha256: 'abc', size: 1, compression: 'none' }), 'BAD_REQUEST');
    await expectCode(store.begin({ sha256: 'a'.repeat(64), size: -1, compression: 'none' }), 'BAD_REQUEST');
    await expectCode(
      store.begin({ sha256: 'a'.repeat(64), size: 10, compression: 'none', imageSize: 11 }),
      'BAD_REQUEST',
    );
    await expectCode(
      store.begin({ sha256: 'a'.repeat(64), size: 10, compression: 'lz4' as Compression }),
      'UNSUPPORTED_COMPRESSION',
    );
  });
});

describe('resuming', () => {
  for (const compression of ['none', 'xz'] as const) {
    it(`resumes a suspended ${compression} upload where it stopped, also after a restart`, async () => {
      let store = await openStore();
      const image = makeImage(400_000 + 5);
      const wire = compress(image, compression);
      const begin = { sha256: sha(wire), size: wire.length, compression };
      const third = Math.floor(wire.length / 3);

      const first = await store.begin(begin);
      expect(first.offset).toBe(0);
      await send(first, wire, 10_000, third);
      await first.suspend();

      // Same process: a new connection asks again.
      const second = await store.begin(begin);
      expect(second.offset).toBe(third);
      await send(second, wire, 10_000, 2 * third);
      const held = second.offset;
      await second.suspend();

      // The agent restarts.
      await store.close();
      store = await openStore();
      const third_ = await store.begin(begin);
      expect(third_.offset).toBe(held);
      await send(third_, wire, 10_000);
      const stored = await third_.finish();
      expect(Buffer.compare(await fs.readFile(stored.path), image)).toBe(0);
      expect(await store.storedPartCrcs(stored.sha256, PART)).toEqual(expectedCrcs(image, PART));
    });
  }

  it('keeps the bytes of an upload that ended early, and says where to resume', async () => {
    const store = await openStore();
    const wire = makeImage(100_000);
    const begin = { sha256: sha(wire), size: wire.length, compression: 'none' as const };
    const session = await store.begin(begin);
    await send(session, wire, 10_000, 50_000);
    const err = await expectCode(session.finish(), 'UPLOAD_TRUNCATED');
    expect(err.message).toContain('50000 of 100000');
    const resumed = await store.begin(begin);
    expect(resumed.offset).toBe(50_000);
    await send(resumed, wire);
    expect(Buffer.compare(await fs.readFile((await resumed.finish()).path), wire)).toBe(0);
  });

  it('close() suspends uploads in progress', async () => {
    let store = await openStore();
    const wire = compress(makeImage(200_000), 'gz');
    const begin = { sha256: sha(wire), size: wire.length, compression: 'gz' as const };
    const session = await store.begin(begin);
    await send(session, wire, 5_000, 20_000);
    await store.close();
    store = await openStore();
    const resumed = await store.begin(begin);
    expect(resumed.offset).toBe(20_000);
    await resumed.discard();
    expect(await fs.readdir(path.join(tmp, 'state', 'images', 'partial'))).toEqual([]);
  });
});

describe('refusing bad uploads', () => {
  it('discards an upload whose bytes do not hash to the declared sha256, naming both', async () => {
    const store = await openStore();
    const wire = makeImage(50_000);
    const declared = sha(Buffer.from('something else'));
    const session = await store.begin({ sha256: declared, size: wire.length, compression: 'none' });
    await send(session, wire);
    const err = await expectCode(session.finish(), 'SHA256_MISMATCH');
    expect(err.message).toContain(declared);
    expect(err.message).toContain(sha(wire));
    expect(await store.get(declared)).toBeNull();
    expect(await fs.readdir(path.join(tmp, 'state', 'images', 'partial'))).toEqual([]);
    expect((await store.begin({ sha256: declared, size: wire.length, compression: 'none' })).offset).toBe(0);
  });

  it('refuses bytes past the declared size and keeps the ones before', async () => {
    const store = await openStore();
    const wire = makeImage(30_000);
    const begin = { sha256: sha(wire), size: 25_000, compression: 'none' as const };
    const session = await store.begin(begin);
    await session.write(wire.subarray(0, 20_000));
    const err = await expectCode(session.write(wire.subarray(20_000, 30_000)), 'UPLOAD_TOO_LARGE');
    expect(err.message).toContain('25000');
    await expectCode(session.write(wire.subarray(20_000, 21_000)), 'BAD_REQUEST');
    expect((await store.begin(begin)).offset).toBe(20_000);
  });

  for (const compression of ['gz', 'xz', 'zst'] as const) {
    it(`fails a corrupt ${compression} upload with the decompressor's message and discards it`, async () => {
      const store = await openStore();
      const good = compress(makeImage(300_000), compression);
      const wire = Buffer.from(good);
      // Garble the middle; declare the sha256 of the garbled bytes, as a client with a corrupt file would.
      for (let i = Math.floor(wire.length / 2); i < Math.floor(wire.length / 2) + 64; i++) wire[i] = wire[i]! ^ 0x5a;
      const session = await store.begin({ sha256: sha(wire), size: wire.length, compression });
      const err = await send(session, wire, 4096).then(
        () => expectCode(session.finish(), 'DECOMPRESS_FAILED'),
        (e: unknown) => {
          expect((e as CodedError).code).toBe('DECOMPRESS_FAILED');
          return e as CodedError;
        },
      );
      expect(err.message.length).toBeGreaterThan(10);
      expect(await store.get(sha(wire))).toBeNull();
      expect(await fs.readdir(path.join(tmp, 'state', 'images', 'partial'))).toEqual([]);
    });
  }

  it('fails a truncated .zst whose sha256 matches (a corrupt source file)', async () => {
    const store = await openStore();
    const full = compress(makeImage(300_000), 'zst');
    const wire = full.subarray(0, full.length - 1000);
    const session = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'zst' });
    await send(session, wire);
    const err = await expectCode(session.finish(), 'DECOMPRESS_FAILED');
    expect(err.message).toContain('zstd');
  });

  it('stops a decompressed image from growing past the store limit', async () => {
    const store = await openStore({ maxBytes: 1024 * 1024 });
    const wire = zlib.gzipSync(Buffer.alloc(4 * 1024 * 1024)); // 4 MiB of zeros in ~4 KiB
    const session = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'gz' });
    const outcome = await send(session, wire, 1024)
      .then(() => session.finish())
      .catch((e: unknown) => e);
    expect(outcome).toBeInstanceOf(CodedError);
    expect((outcome as CodedError).code).toBe('UPLOAD_TOO_LARGE');
    expect(store.list()).toEqual([]);
  });

  it('names the Debian package when a decompression tool is missing', async () => {
    const store = await openStore({
      tools: { xz: path.join(tmp, 'no-such-xz'), zstd: path.join(tmp, 'no-such-zstd') },
    });
    const xzErr = await expectCode(
      store.begin({ sha256: 'a'.repeat(64), size: 10, compression: 'xz' }),
      'UNSUPPORTED_COMPRESSION',
    );
    expect(xzErr.message).toContain('xz-utils');
    const zstErr = await expectCode(
      store.begin({ sha256: 'b'.repeat(64), size: 10, compression: 'zst' }),
      'UNSUPPORTED_COMPRESSION',
    );
    expect(zstErr.message).toContain('zstd');
  });
});

describe('disk space', () => {
  const MiB = 1024 * 1024;

  it('refuses an upload that does not fit before receiving it, saying what is needed and free', async () => {
    const store = await openStore({ minFreeBytes: 1 * MiB, freeBytes: async () => 10 * MiB });
    const err = await expectCode(store.begin({ sha256: 'c'.repeat(64), size: 4 * MiB, compression: 'gz' }), 'NO_SPACE');
    // 4 MiB upload + 16 MiB estimated image + 1 MiB reserve
    expect(err.message).toContain('21.0 MiB');
    expect(err.message).toContain('10.0 MiB is free');
    expect(err.message).toContain('estimated');
    expect(await fs.readdir(path.join(tmp, 'state', 'images', 'partial'))).toEqual([]);
    // With the real image size announced, the same upload fits.
    const ok = await store.begin({ sha256: 'c'.repeat(64), size: 4 * MiB, compression: 'gz', imageSize: 5 * MiB });
    await ok.discard();
  });

  it('counts the space promised to uploads in progress', async () => {
    const store = await openStore({ freeBytes: async () => 10 * MiB });
    const first = await store.begin({ sha256: 'd'.repeat(64), size: 6 * MiB, compression: 'none' });
    await expectCode(store.begin({ sha256: 'e'.repeat(64), size: 6 * MiB, compression: 'none' }), 'NO_SPACE');
    await first.discard();
    await (await store.begin({ sha256: 'e'.repeat(64), size: 6 * MiB, compression: 'none' })).discard();
  });

  it('evicts least recently used images to make room, never pinned ones', async () => {
    const capacity = 3 * MiB;
    const dir = path.join(tmp, 'state', 'images');
    // A small disk: its free space is its capacity less what the store really holds.
    const store = await openStore({ freeBytes: async () => capacity - (await duBytes(dir)) });
    const a = (await upload(store, makeImage(MiB, 1))).stored;
    const b = (await upload(store, makeImage(MiB, 2))).stored;
    await store.get(a.sha256); // b is now the least recently used
    const releaseB = store.pin(b.sha256);
    const wire = makeImage(1.5 * MiB, 3);
    const session = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' });
    expect(store.list().map((i) => i.sha256)).toEqual([b.sha256]); // a went, pinned b stayed
    expect(await exists(a.path)).toBe(false);
    await session.discard();
    releaseB();
  });
});

describe('LRU eviction past maxBytes', () => {
  it('evicts the least recently used image, skipping pinned ones, and catches up on release', async () => {
    const size = 100_000;
    const store = await openStore({ maxBytes: 2 * size });
    const a = (await upload(store, makeImage(size, 1))).stored;
    const b = (await upload(store, makeImage(size, 2))).stored;
    await store.get(a.sha256); // order of use: b, a
    const releaseB = store.pin(b.sha256);
    const c = (await upload(store, makeImage(size, 3))).stored;
    expect(store.list().map((i) => i.sha256)).toEqual([c.sha256, b.sha256]); // a evicted: b is pinned
    expect(await exists(a.path)).toBe(false);
    expect(await store.get(a.sha256)).toBeNull();

    // Everything else in use: the store goes over its limit rather than drop an image in use.
    const releaseC = store.pin(c.sha256);
    const d = (await upload(store, makeImage(size, 4))).stored;
    expect(store.list()).toHaveLength(3);
    releaseB();
    releaseB(); // idempotent: c stays pinned
    await vi.waitFor(async () => {
      expect(store.list().map((i) => i.sha256)).toEqual([d.sha256, c.sha256]);
      expect(await exists(b.path)).toBe(false);
    });
    releaseC();
  });

  it('keeps LRU order across a restart', async () => {
    const size = 50_000;
    let store = await openStore({ maxBytes: 2 * size });
    const a = (await upload(store, makeImage(size, 1))).stored;
    const b = (await upload(store, makeImage(size, 2))).stored;
    await store.get(a.sha256);
    await store.close();
    store = await openStore({ maxBytes: 2 * size });
    await upload(store, makeImage(size, 3));
    expect(store.list().map((i) => i.sha256)).not.toContain(b.sha256);
    expect(store.list().map((i) => i.sha256)).toContain(a.sha256);
  });
});

describe('init() after a crash', () => {
  it('removes temp files and half-published images, keeps valid images and resumable uploads of any age', async () => {
    let store = await openStore();
    const image = makeImage(70_000);
    const { stored } = await upload(store, image, 'gz');
    const pending = makeImage(40_000, 7);
    const session = await store.begin({ sha256: sha(pending), size: pending.length, compression: 'none' });
    await send(session, pending, 10_000, 20_000);
    await session.suspend();
    await store.close();

    const images = path.join(tmp, 'state', 'images', 'images');
    const partial = path.join(tmp, 'state', 'images', 'partial');
    const [s1, s2, s3, s4] = ['1', '2', '3', '4'].map((c) => c.repeat(64)) as [string, string, string, string];
    const leftovers = [
      path.join(images, `${s1}.json.0a1b2c3d.tmp`), // record being written
      path.join(partial, `${s2}.img.tmp`), // decompressed output of an interrupted upload
      path.join(images, `${s3}.img`), // image renamed without a record (cannot happen in order, but a disk may lie)
      path.join(images, `${s4}.json`), // record whose image never arrived
    ];
    for (const file of leftovers) await fs.writeFile(file, '{}');
    const stale = path.join(partial, `${'5'.repeat(64)}.upload`);
    await fs.writeFile(stale, 'old bytes');
    const old = new Date(Date.now() - 48 * 3600 * 1000);
    await fs.utimes(stale, old, old);
    const unrelated = path.join(images, 'README');
    await fs.writeFile(unrelated, 'not ours');

    const lines: LogRecord[] = [];
    store = await openStore({ log: createLogger({ sink: (r) => lines.push(r) }) });
    for (const file of leftovers) expect(await exists(file), file).toBe(false);
    expect(await exists(unrelated)).toBe(true);
    expect(lines.filter((l) => l.msg === 'removed leftover file')).toHaveLength(4);
    // How long a partial upload may wait is the agent's setting (expirePartials), not init's.
    expect(await exists(stale)).toBe(true);
    expect(await store.expirePartials(24 * 3600 * 1000)).toBe(1);
    expect(await exists(stale)).toBe(false);
    expect(store.list().map((i) => i.sha256)).toEqual([stored.sha256]);
    expect(Buffer.compare(await fs.readFile(stored.path), image)).toBe(0);
    const resumed = await store.begin({ sha256: sha(pending), size: pending.length, compression: 'none' });
    expect(resumed.offset).toBe(20_000);
    await send(resumed, pending);
    expect(Buffer.compare(await fs.readFile((await resumed.finish()).path), pending)).toBe(0);
  });

  it('drops an image whose size on disk disagrees with its record', async () => {
    let store = await openStore();
    const { stored } = await upload(store, makeImage(20_000));
    await store.close();
    await fs.truncate(stored.path, 10_000);
    store = await openStore();
    expect(store.list()).toEqual([]);
    expect(await exists(stored.path)).toBe(false);
  });
});

describe('partial uploads: counted, evicted, expired', () => {
  const HOUR = 3600 * 1000;
  const partialFile = (sha256: string) => path.join(tmp, 'state', 'images', 'partial', `${sha256}.upload`);

  /** A clock the test moves: the store's "now" for record times and partial-upload ages. */
  function testClock(start = Date.now()) {
    let now = start;
    return { now: () => now, advance: (ms: number) => (now += ms) };
  }

  /** Begins a raw upload of `wire`, sends its first `bytes` and leaves it for a resume. */
  async function leavePartial(store: ImageStore, wire: Buffer, bytes: number) {
    const session = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' });
    await send(session, wire, 10_000, bytes);
    await session.suspend();
    return sha(wire);
  }

  it('expires a partial upload nobody resumed within the time to live, never one a session has open', async () => {
    const clock = testClock();
    const lines: LogRecord[] = [];
    const store = await openStore({ clock: clock.now, log: createLogger({ sink: (r) => lines.push(r) }) });
    const idle = makeImage(60_000, 1);
    const busy = makeImage(60_000, 2);
    const idleSha = await leavePartial(store, idle, 30_000);
    const open = await store.begin({ sha256: sha(busy), size: busy.length, compression: 'none' });
    await send(open, busy, 10_000, 20_000);
    expect(store.partialBytes()).toBe(50_000);

    clock.advance(6 * HOUR - 1);
    expect(await store.expirePartials(6 * HOUR)).toBe(0);
    clock.advance(1);
    expect(await store.expirePartials(6 * HOUR)).toBe(1);
    expect(await exists(partialFile(idleSha))).toBe(false);
    expect(await exists(partialFile(sha(busy)))).toBe(true);
    expect(store.partialBytes()).toBe(20_000);
    expect(lines.find((l) => l.msg === 'partial upload expired: no client resumed it')?.fields).toMatchObject({
      bytes: 30_000,
      idleSeconds: 6 * 3600,
    });
    // The expired one starts over; the open one goes on.
    const again = await store.begin({ sha256: idleSha, size: idle.length, compression: 'none' });
    expect(again.offset).toBe(0);
    await again.discard();
    await send(open, busy, 10_000);
    expect(Buffer.compare(await fs.readFile((await open.finish()).path), busy)).toBe(0);
    expect(store.partialBytes()).toBe(0);
  });

  it('counts the time to live from the last byte received: a resume starts the wait again', async () => {
    const clock = testClock();
    const store = await openStore({ clock: clock.now });
    const wire = makeImage(60_000, 3);
    await leavePartial(store, wire, 20_000);
    clock.advance(5 * HOUR);
    const resumed = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' });
    await send(resumed, wire, 10_000, 40_000);
    await resumed.suspend();
    clock.advance(5 * HOUR);
    expect(await store.expirePartials(6 * HOUR)).toBe(0);
    expect((await store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' })).offset).toBe(40_000);
  });

  it('counts partial uploads against maxBytes and evicts the oldest of images and idle partials', async () => {
    const clock = testClock();
    const size = 100_000;
    const store = await openStore({ maxBytes: 3 * size, clock: clock.now });
    const partial = await leavePartial(store, makeImage(2 * size, 1), size);
    clock.advance(1000);
    const a = (await upload(store, makeImage(size, 2))).stored;
    clock.advance(1000);
    // partial (oldest) + a + b = 3 × size: at the limit, nothing goes.
    const b = (await upload(store, makeImage(size, 3))).stored;
    expect(store.totalBytes() + store.partialBytes()).toBe(3 * size);
    expect(await exists(partialFile(partial))).toBe(true);
    clock.advance(1000);
    // One more image: the partial upload is the least recently used, so it goes, not an image.
    const c = (await upload(store, makeImage(size, 4))).stored;
    expect(await exists(partialFile(partial))).toBe(false);
    expect(store.partialBytes()).toBe(0);
    expect(store.list().map((i) => i.sha256)).toEqual([c.sha256, b.sha256, a.sha256]);
    // A partial left now is the newest: past the limit, the least recently used image makes room.
    clock.advance(1000);
    const fresh = await leavePartial(store, makeImage(2 * size, 5), size / 2);
    await vi.waitFor(async () => {
      expect(store.list().map((i) => i.sha256)).toEqual([c.sha256, b.sha256]);
      expect(await exists(a.path)).toBe(false);
    });
    expect(await exists(partialFile(fresh))).toBe(true);
  });

  it('never evicts the partial upload a session has open; the store goes over its limit instead', async () => {
    const size = 100_000;
    const store = await openStore({ maxBytes: 2 * size });
    const wire = makeImage(2 * size, 6);
    const open = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' });
    await send(open, wire, 10_000, size + 10_000);
    await upload(store, makeImage(size, 7)); // the new image is never evicted for being over: it was asked for
    expect(await exists(partialFile(sha(wire)))).toBe(true);
    expect(store.list()).toHaveLength(1);
    await send(open, wire, 10_000);
    await open.finish();
  });

  it('the disk-space check evicts idle partial uploads oldest first, never the one it resumes', async () => {
    const clock = testClock();
    const dir = path.join(tmp, 'state', 'images');
    const capacity = 400_000;
    const store = await openStore({ clock: clock.now, freeBytes: async () => capacity - (await duBytes(dir)) });
    const older = await leavePartial(store, makeImage(300_000, 1), 150_000);
    clock.advance(1000);
    const newer = makeImage(300_000, 2);
    await leavePartial(store, newer, 150_000);
    clock.advance(1000);
    // 100 000 free; resuming `newer` needs its last 150 000: the older partial goes, `newer` stays.
    const resumed = await store.begin({ sha256: sha(newer), size: newer.length, compression: 'none' });
    expect(resumed.offset).toBe(150_000);
    expect(await exists(partialFile(older))).toBe(false);
    // Idle again, it goes too for an upload that needs more; one the disk cannot hold is still refused.
    await resumed.suspend();
    const big = makeImage(450_000, 3);
    await expectCode(store.begin({ sha256: sha(big), size: big.length, compression: 'none' }), 'NO_SPACE');
    expect(await exists(partialFile(sha(newer)))).toBe(false);
  });

  it('a begin() that races the expiry of its own partial file waits for it and starts over', async () => {
    const clock = testClock();
    const store = await openStore({ clock: clock.now });
    const wire = makeImage(60_000, 8);
    await leavePartial(store, wire, 30_000);
    clock.advance(7 * HOUR);
    const expiring = store.expirePartials(6 * HOUR);
    const session = await store.begin({ sha256: sha(wire), size: wire.length, compression: 'none' });
    expect(await expiring).toBe(1);
    expect(session.offset).toBe(0);
    await send(session, wire);
    expect(Buffer.compare(await fs.readFile((await session.finish()).path), wire)).toBe(0);
  });
});

describe('write-behind and hashing on a worker thread', () => {
  for (const compression of ['none', 'gz'] as const) {
    it(`stores a ${compression} upload hashed on a worker: same image, sha256 and part CRCs`, async () => {
      const store = await openStore({ hashOnWorkerFromBytes: 0, writeBatchBytes: 64 * 1024, writesInFlight: 3 });
      const image = makeImage(5 * PART + 777, 4);
      const { stored } = await upload(store, image, compression);
      expect(Buffer.compare(await fs.readFile(stored.path), image)).toBe(0);
      expect(await store.storedPartCrcs(stored.sha256, PART)).toEqual(expectedCrcs(image, PART));
    });
  }

  it('discards an upload hashed on a worker whose bytes do not match the declared sha256', async () => {
    const store = await openStore({ hashOnWorkerFromBytes: 0 });
    const wire = makeImage(80_000);
    const declared = sha(Buffer.from('another file'));
    const session = await store.begin({ sha256: declared, size: wire.length, compression: 'none' });
    await send(session, wire);
    const err = await expectCode(session.finish(), 'SHA256_MISMATCH');
    expect(err.message).toContain(sha(wire));
    expect(await fs.readdir(path.join(tmp, 'state', 'images', 'partial'))).toEqual([]);
  });

  for (const hashOnWorkerFromBytes of [0, Number.POSITIVE_INFINITY]) {
    const name =
      'a suspend in the middle of a batch keeps every accepted byte, and the resume goes on from there ' +
      `(worker: ${hashOnWorkerFromBytes === 0})`;
    it(name, async () => {
      // Batches of 30 000 bytes, chunks of 7 000: the suspend lands inside a batch not yet written.
      const o = { writeBatchBytes: 30_000, writesInFlight: 2, hashOnWorkerFromBytes };
      let store = await openStore(o);
      const image = makeImage(200_000 + 11, 5);
      const begin = { sha256: sha(image), size: image.length, compression: 'none' as const };
      const first = await store.begin(begin);
      await send(first, image, 7_000, 77_000);
      await first.suspend();
      expect((await fs.stat(path.join(tmp, 'state', 'images', 'partial', `${begin.sha256}.upload`))).size).toBe(77_000);

      await store.close();
      store = await openStore(o);
      const second = await store.begin(begin);
      expect(second.offset).toBe(77_000);
      await send(second, image, 7_000);
      const stored = await second.finish();
      expect(Buffer.compare(await fs.readFile(stored.path), image)).toBe(0);
      expect(await store.storedPartCrcs(stored.sha256, PART)).toEqual(expectedCrcs(image, PART));
    });
  }
});
