import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { planParts } from '../../runner-agent/src/board/stage2-script.js';
import { getPiModel } from '../../runner-agent/src/image/models.js';
import { BoardCapsStore, modelHasUnzip } from '../../runner-agent/src/staging/board-caps.js';
import { compressParts, sweepCompressedCache } from '../../runner-agent/src/staging/compressed-parts.js';
import { ImageView } from '../../runner-agent/src/staging/image-view.js';

let dir: string;
afterEach(async () => rm(dir, { recursive: true, force: true }));

const SHA = 'a'.repeat(64);

async function setup() {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-zparts-'));
  const image = Buffer.from('rpi-flash compressible image bytes '.repeat(4000)).subarray(0, 3 * 32768 + 700);
  await mkdir(path.join(dir, 'images'));
  const file = path.join(dir, 'images', `${SHA}.img`);
  await writeFile(file, image);
  return { image, file, cacheDir: path.join(dir, 'zparts', SHA) };
}

const bytesOf = async (f: { kind: string; data?: Buffer; path?: string }) =>
  f.kind === 'buffer' ? f.data! : readFile(f.path!);

describe('compressParts', () => {
  it("gzips each part's served bytes: unpatched ones into the image's cache, patched ones in memory", async () => {
    const { image, file, cacheDir } = await setup();
    const patch = { offset: 40000, data: Buffer.from('PATCHED') };
    const view = new ImageView(file, image.length, [patch]);
    const plan = planParts(image.length, 32768);
    const served = plan.map((p) => {
      const b = Buffer.alloc(p.servedSize);
      image.copy(b, 0, p.imageOffset, p.imageOffset + p.size);
      if (p.imageOffset <= patch.offset && patch.offset < p.imageOffset + p.servedSize)
        patch.data.copy(b, patch.offset - p.imageOffset);
      return b;
    });
    const first = await compressParts(view, plan, { cacheDir });
    expect(first.parts.map((p) => [p.file.kind, p.cached])).toEqual([
      ['file', false],
      ['buffer', false],
      ['file', false],
      ['file', false],
    ]);
    for (const [i, p] of first.parts.entries()) {
      const gz = await bytesOf(p.file);
      expect(gz.length).toBe(p.size);
      expect(gunzipSync(gz).equals(served[i]!)).toBe(true);
    }
    expect(first.stats).toMatchObject({ compressedParts: 4, rawBytes: 3 * 32768 + 1024 });
    expect(first.stats.zipBytes).toBeLessThan(first.stats.rawBytes / 10);
    // No temporary file is left; the next job takes the unpatched parts from the cache.
    expect((await readdir(cacheDir)).sort()).toEqual(['0-8000.gz', '10000-8000.gz', '18000-400.gz']);
    const again = await compressParts(view, plan, { cacheDir });
    expect(again.parts.map((p) => p.cached)).toEqual([true, false, true, true]);
    expect(again.stats.compressedParts).toBe(1);
  });

  it("removes the caches of images the store no longer holds, and keeps the others'", async () => {
    const { image, file, cacheDir } = await setup();
    await compressParts(new ImageView(file, image.length), planParts(image.length, 32768), { cacheDir });
    const gone = 'b'.repeat(64);
    await mkdir(path.join(dir, 'zparts', gone));
    await writeFile(path.join(dir, 'zparts', gone, '0-8000.gz'), 'x');
    expect(await sweepCompressedCache(path.join(dir, 'zparts'), path.join(dir, 'images'))).toEqual([gone]);
    expect(await readdir(path.join(dir, 'zparts'))).toEqual([SHA]);
    await rm(file);
    expect(await sweepCompressedCache(path.join(dir, 'zparts'), path.join(dir, 'images'))).toEqual([SHA]);
    expect(await readdir(path.join(dir, 'zparts'))).toEqual([]);
  });
});

describe('board capabilities', () => {
  it('knows which Debian builds have unzip: the 64-bit ones', () => {
    expect(['pi3', 'pi4', 'arm64', 'pi02'].map((m) => modelHasUnzip(getPiModel(m)))).toEqual([true, true, true, true]);
    expect(['pi2', 'pi3-32', 'pi0w'].map((m) => modelHasUnzip(getPiModel(m)))).toEqual([false, false, false]);
  });

  it('keeps a record per target, written whole; an unreadable one counts as none', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-caps-'));
    const store = new BoardCapsStore(path.join(dir, 'boards'));
    expect(await store.read('pi-a')).toBeUndefined();
    await store.record('pi-a', { unzip: true, seen: '2026-12-07T00:00:00.000Z', job: 'j1' });
    expect(await store.read('pi-a')).toEqual({ unzip: true, seen: '2026-12-07T00:00:00.000Z', job: 'j1' });
    expect(await readdir(path.join(dir, 'boards'))).toEqual(['pi-a.caps.json']);
    await writeFile(path.join(dir, 'boards', 'pi-a.caps.json'), '{"unzip": tr');
    expect(await store.read('pi-a')).toBeUndefined();
  });
});
