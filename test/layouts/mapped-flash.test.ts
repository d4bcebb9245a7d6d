/**
 * Issue 13 item 1 on the simulated lab (real agent, protocol, TFTP; the sim board runs the
 * generated stage 2): only the image's mapped ranges travel and are written; the card keeps its
 * earlier content elsewhere (bmaptool's semantics), and `flash.writeZeros` writes every byte.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { deriveMappedRanges, mappedBytes } from '../../runner-agent/src/store/mapped-ranges.js';
import { sha256File, startLab, type Lab } from '../support/lab.js';

const MiB = 1024 * 1024;
const CARD_FILL = 0x5a;
const CARD_SIZE = 64 * MiB;
let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

/** An 8 MiB sample image (MBR + pattern) with two long zero runs and one short one punched into it. */
async function sparseImage(l: Lab): Promise<{ path: string; size: number; sha256: string; data: Buffer }> {
  const img = await l.image('sparse.img', 8 * MiB, 5);
  const data = await readFile(img.path);
  data.fill(0, 2 * MiB, 4 * MiB);
  data.fill(0, 5 * MiB, 5 * MiB + 64 * 1024);
  data.fill(0, 6 * MiB + 512 * 1024);
  await writeFile(img.path, data);
  return { ...img, data, sha256: await sha256File(img.path) };
}

async function flashOn(l: Lab, img: { path: string; size: number; sha256: string }) {
  const card = path.join(l.agent.config.stateDir, 'sim', 'pi-m.card');
  await mkdir(path.dirname(card), { recursive: true });
  await writeFile(card, Buffer.alloc(CARD_SIZE, CARD_FILL));
  const conn = await l.connect();
  await conn.lease('pi-m', { holder: 'test' });
  await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
  const result = await conn.flash({ sha256: img.sha256 });
  return { result, card: await readFile(card) };
}

describe('mapped ranges on the simulated lab', () => {
  it("writes only the image's mapped ranges; the card keeps its earlier bytes elsewhere", async () => {
    lab = await startLab({ boards: [{ name: 'pi-m', mac: '02:00:00:00:0d:01' }] });
    const img = await sparseImage(lab);
    const ranges = await deriveMappedRanges(img.path, img.size, MiB);
    // The short run stays inside its part; the two long runs are left out.
    expect(ranges).toEqual([
      { offset: 0, length: 2 * MiB },
      { offset: 4 * MiB, length: 2 * MiB + 512 * 1024 },
    ]);
    const { result, card } = await flashOn(lab, img);

    expect(result).toMatchObject({ ok: true, code: 'OK', bytesWritten: mappedBytes(ranges) });
    // 1 MiB parts: two for the first range, three for the second.
    expect(result.parts.map((p) => [p.offset, p.size])).toEqual([
      [0, MiB],
      [MiB, MiB],
      [4 * MiB, MiB],
      [5 * MiB, MiB],
      [6 * MiB, 512 * 1024],
    ]);
    for (const r of ranges)
      expect(
        card.subarray(r.offset, r.offset + r.length).equals(img.data.subarray(r.offset, r.offset + r.length)),
      ).toBe(true);
    const kept = (from: number, to: number) => card.subarray(from, to).every((b) => b === CARD_FILL);
    expect(kept(2 * MiB, 4 * MiB), 'the unmapped run keeps the card').toBe(true);
    expect(kept(6 * MiB + 512 * 1024, CARD_SIZE), 'so does the unmapped tail').toBe(true);
    expect(lab.logs.some((l) => /mapped: 4\.5 MiB of the 8\.0 MiB image in 5 part\(s\)/.test(l.msg))).toBe(true);
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it('with flash.writeZeros writes every byte of the image', async () => {
    lab = await startLab({
      boards: [{ name: 'pi-m', mac: '02:00:00:00:0d:02' }],
      config: { flash: { partSize: '1MiB', retries: 2, writeZeros: true } },
    });
    const img = await sparseImage(lab);
    const { result, card } = await flashOn(lab, img);
    expect(result).toMatchObject({ ok: true, bytesWritten: 8 * MiB });
    expect(result.parts).toHaveLength(8);
    expect(card.subarray(0, 8 * MiB).equals(img.data)).toBe(true);
    expect(card.subarray(8 * MiB).every((b) => b === CARD_FILL)).toBe(true);
  });
});
