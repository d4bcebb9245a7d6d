import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../runner-agent/src/log.js';
import type { StoredImage } from '../../runner-agent/src/store/image-store.js';
import {
  Upload,
  type ReceivedImage,
  type UploadHost,
  type UploadPlan,
} from '../../runner-agent/src/store/upload-session.js';

// An upload on its own, with a stand-in for the store: what it hands over through UploadHost.

let tmp: string;

beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'rpi-flash-upload-'));
});

afterEach(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function plan(wire: Buffer, compression: 'none' | 'gz'): UploadPlan {
  return {
    sha256: createHash('sha256').update(wire).digest('hex'),
    size: wire.length,
    compression,
    files: { partial: path.join(tmp, 'x.upload'), decompressedTemp: path.join(tmp, 'x.img.tmp') },
    storeDir: tmp,
    maxImageBytes: 1024 * 1024,
    plannedImageBytes: compression === 'none' ? 0 : 4 * wire.length,
    writeBehind: { batchBytes: 16 * 1024, maxInFlight: 2 },
    hashOnWorker: false,
    tools: {},
    log: silentLogger,
  };
}

function fakeHost() {
  const calls = { published: [] as ReceivedImage[], ended: 0 };
  const host: UploadHost = {
    publish: async (image) => {
      calls.published.push(image);
      return { sha256: image.sha256, path: image.file } as StoredImage;
    },
    ended: () => {
      calls.ended++;
    },
  };
  return { host, calls };
}

describe('Upload against its host', () => {
  it('hands a verified gz upload to publish() as its decompressed temp', async () => {
    const image = Buffer.concat([randomBytes(10_000), Buffer.alloc(5_000)]);
    const wire = zlib.gzipSync(image);
    const { host, calls } = fakeHost();
    const upload = new Upload(plan(wire, 'gz'), host);
    await upload.open(await upload.heldBytes());
    await upload.write(wire);
    await upload.finish();

    const [received] = calls.published;
    expect(received?.file).toBe(path.join(tmp, 'x.img.tmp'));
    expect(received?.imageSize).toBe(image.length);
    expect(received?.wireSize).toBe(wire.length);
    expect(Buffer.compare(await fs.readFile(received!.file), image)).toBe(0);
    expect(calls.ended).toBe(1);
    expect(upload.outstandingBytes()).toBe(0);
  });

  it('tells the host it ended on a suspend, and a new upload resumes from the bytes kept', async () => {
    const wire = randomBytes(50_000);
    const first = fakeHost();
    const upload = new Upload(plan(wire, 'none'), first.host);
    await upload.open(await upload.heldBytes());
    await upload.write(wire.subarray(0, 20_000));
    expect(upload.outstandingBytes()).toBe(30_000);
    await upload.suspend();
    await upload.suspend();
    expect(first.calls).toEqual({ published: [], ended: 1 });

    const second = fakeHost();
    const resumed = new Upload(plan(wire, 'none'), second.host);
    const held = await resumed.heldBytes();
    expect(held).toBe(20_000);
    await resumed.open(held);
    expect(resumed.offset).toBe(20_000);
    await resumed.write(wire.subarray(20_000));
    await resumed.finish();
    expect(second.calls.published[0]?.file).toBe(path.join(tmp, 'x.upload'));
    expect(second.calls.ended).toBe(1);
  });
});
