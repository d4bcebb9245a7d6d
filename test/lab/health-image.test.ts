/**
 * The health check's known-good image goes into the content-addressed store the way an upload does:
 * compressed images by their content, imported once, a missing file the lab's misconfiguration.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import os from 'node:os';
import path from 'node:path';
import { ImageStore } from '../../runner-agent/src/store/image-store.js';
import { importHealthImage } from '../../runner-agent/src/lab/health-image.js';
import { silentLogger } from '../../runner-agent/src/log.js';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';

let tmp: string | undefined;
let store: ImageStore | undefined;
afterEach(async () => {
  await store?.close();
  store = undefined;
  if (tmp) await rm(tmp, { recursive: true, force: true });
  tmp = undefined;
});

async function setup(): Promise<{ dir: string; store: ImageStore }> {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'health-image-'));
  store = new ImageStore({
    dir: path.join(tmp, 'store'),
    maxBytes: 256 * 1024 * 1024,
    log: silentLogger,
    minFreeBytes: 0,
  });
  await store.init();
  return { dir: tmp, store };
}

describe('importHealthImage', () => {
  it('stores a compressed image decompressed, by the sha256 of its file, once', async () => {
    const { dir, store } = await setup();
    const raw = path.join(dir, 'good.img');
    await writeSampleImage(raw, 2 * 1024 * 1024, 4);
    const gz = path.join(dir, 'good.img.gz');
    await writeFile(gz, gzipSync(await readFile(raw)));
    const first = await importHealthImage(store, gz);
    expect(first).toMatchObject({ compression: 'gz', imageSize: 2 * 1024 * 1024 });
    expect((await readFile(first.path)).equals(await readFile(raw))).toBe(true);
    const again = await importHealthImage(store, gz);
    expect(again.sha256).toBe(first.sha256);
    expect(store.list()).toHaveLength(1);
  });

  it('a missing or unreadable file is LAB_MISCONFIGURED, naming it', async () => {
    const { dir, store } = await setup();
    await expect(importHealthImage(store, path.join(dir, 'nope.img'))).rejects.toMatchObject({
      code: 'LAB_MISCONFIGURED',
      message: expect.stringContaining('health.image') as unknown as string,
    });
  });
});
