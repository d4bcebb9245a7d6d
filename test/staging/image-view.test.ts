import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import os from 'node:os';
import path from 'node:path';
import { ImageView } from '../../runner-agent/src/staging/image-view.js';
import { planParts } from '../../runner-agent/src/board/stage2-script.js';
import { patternBytes } from '../../runner-agent/src/sample-image.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function image(size: number): Promise<{ file: string; bytes: Buffer }> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'view-'));
  const file = path.join(dir, 'img');
  const bytes = patternBytes(size, 42);
  await writeFile(file, bytes);
  return { file, bytes };
}

function applied(bytes: Buffer, patches: Array<{ offset: number; data: Buffer }>): Buffer {
  const out = Buffer.from(bytes);
  for (const p of patches) p.data.copy(out, p.offset);
  return out;
}

describe('ImageView', () => {
  it('reads the stored bytes with patches laid over them, zeros past the end', async () => {
    const { file, bytes } = await image(10_000);
    const patches = [
      { offset: 100, data: Buffer.alloc(50, 0xaa) },
      { offset: 9_990, data: Buffer.alloc(10, 0xbb) },
    ];
    const view = new ImageView(file, bytes.length, patches);
    const expected = applied(bytes, patches);
    const h = await open(file, 'r');
    try {
      expect((await view.read(h, 0, 10_000)).equals(expected)).toBe(true);
      // A read that starts inside a patch and one that straddles its end.
      expect((await view.read(h, 120, 100)).equals(expected.subarray(120, 220))).toBe(true);
      expect((await view.read(h, 9_980, 40)).equals(Buffer.concat([expected.subarray(9_980), Buffer.alloc(20)]))).toBe(
        true,
      );
    } finally {
      await h.close();
    }
  });

  it('recomputes the CRC only of parts a patch touches', async () => {
    const { file, bytes } = await image(5 * 4096 + 100);
    const plan = planParts(bytes.length, 4096);
    const padded = Buffer.concat([bytes, Buffer.alloc(plan.at(-1)!.servedSize - plan.at(-1)!.size)]);
    const stored = plan.map((p) => crc32(padded.subarray(p.imageOffset, p.imageOffset + p.servedSize)));
    // A deliberately wrong stored CRC for part 1 proves untouched parts are taken as stored.
    stored[0] = 0xdeadbeef;
    const patches = [{ offset: 4096 * 2 + 10, data: Buffer.from('patched') }];
    const view = new ImageView(file, bytes.length, patches);
    const crcs = await view.servedPartCrcs(plan, stored);
    const expected = applied(padded, patches);
    expect(crcs[0]).toBe(0xdeadbeef);
    expect(crcs[2]).toBe(crc32(expected.subarray(4096 * 2, 4096 * 3)));
    expect(crcs[2]).not.toBe(stored[2]);
    expect(crcs.slice(3)).toEqual(stored.slice(3));
  });

  it('refuses overlapping patches and patches outside the image', async () => {
    const { file } = await image(1000);
    expect(
      () =>
        new ImageView(file, 1000, [
          { offset: 10, data: Buffer.alloc(10) },
          { offset: 15, data: Buffer.alloc(10) },
        ]),
    ).toThrow(/overlap/);
    expect(() => new ImageView(file, 1000, [{ offset: 995, data: Buffer.alloc(10) }])).toThrow(/outside/);
  });
});
