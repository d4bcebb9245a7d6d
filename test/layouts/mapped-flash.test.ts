/**
 * Issue 13 item 1 on the simulated lab (real agent, protocol, TFTP; the sim board runs the
 * generated stage 2): only the image's mapped ranges travel and are written; the card keeps its
 * earlier content elsewhere (bmaptool's semantics), and `flash.writeZeros` writes every byte.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { promisify } from 'node:util';
import { bmapByteRanges, parseBmap } from '../../runner-agent/src/store/bmap.js';
import { deriveMappedRanges, mappedBytes } from '../../runner-agent/src/store/mapped-ranges.js';
import { sha256File, startLab, type Lab } from '../support/lab.js';

const execFileAsync = promisify(execFile);
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

async function flashOn(
  l: Lab,
  img: { path: string; size: number; sha256: string },
  extra: { bmap?: string; writeZeros?: boolean } = {},
) {
  const card = path.join(l.agent.config.stateDir, 'sim', 'pi-m.card');
  await mkdir(path.dirname(card), { recursive: true });
  await writeFile(card, Buffer.alloc(CARD_SIZE, CARD_FILL));
  const conn = await l.connect();
  await conn.lease('pi-m', { holder: 'test' });
  await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
  const result = await conn.flash({ sha256: img.sha256, ...extra });
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

/**
 * An 8 MiB disk image as a build leaves it: the sample's first 2 MiB (MBR + data), holes (never
 * written), 512 KiB of data at 5 MiB and 1 MiB of zeros written out at 6 MiB (allocated: a block map
 * counts them, zero detection would not). `bmaptool create` maps the allocated blocks.
 */
async function builtImage(l: Lab): Promise<{ path: string; size: number; sha256: string; data: Buffer; bmap: string }> {
  const sample = await readFile((await l.image('sample.img', 2 * MiB, 9)).path);
  const file = path.join(l.dir, 'built.img');
  const handle = await open(file, 'w');
  try {
    await handle.write(sample, 0, sample.length, 0);
    await handle.write(Buffer.alloc(512 * 1024, 0xa5), 0, 512 * 1024, 5 * MiB);
    await handle.write(Buffer.alloc(MiB), 0, MiB, 6 * MiB);
    await handle.truncate(8 * MiB);
  } finally {
    await handle.close();
  }
  await execFileAsync('bmaptool', ['create', '-o', `${file}.bmap`, file]).catch((err: NodeJS.ErrnoException) => {
    throw err.code === 'ENOENT' ? new Error('bmaptool is missing: apt install bmap-tools', { cause: err }) : err;
  });
  const data = await readFile(file);
  return {
    path: file,
    size: data.length,
    sha256: await sha256File(file),
    data,
    bmap: await readFile(`${file}.bmap`, 'utf8'),
  };
}

describe('a block map sent with the job', () => {
  it("writes the map's ranges (zeros it maps included) once the agent has checked them", async () => {
    lab = await startLab({ boards: [{ name: 'pi-m', mac: '02:00:00:00:0d:03' }] });
    const img = await builtImage(lab);
    const expected = bmapByteRanges(parseBmap(img.bmap));
    expect(expected).toEqual([
      { offset: 0, length: 2 * MiB },
      { offset: 5 * MiB, length: 512 * 1024 },
      { offset: 6 * MiB, length: MiB },
    ]);
    const { result, card } = await flashOn(lab, img, { bmap: img.bmap });
    expect(result).toMatchObject({ ok: true, imageSize: 8 * MiB, mappedBytes: 3.5 * MiB, bytesWritten: 3.5 * MiB });
    expect(result.wireBytes).toBeGreaterThanOrEqual(3.5 * MiB);
    for (const r of expected)
      expect(
        card.subarray(r.offset, r.offset + r.length).equals(img.data.subarray(r.offset, r.offset + r.length)),
      ).toBe(true);
    expect(card.subarray(2 * MiB, 5 * MiB).every((b) => b === CARD_FILL)).toBe(true);
    expect(card.subarray(7 * MiB).every((b) => b === CARD_FILL)).toBe(true);
  });

  it('refuses a map of another image before the reset: BMAP_MISMATCH, the card untouched, nothing staged', async () => {
    lab = await startLab({ boards: [{ name: 'pi-m', mac: '02:00:00:00:0d:04' }] });
    const img = await builtImage(lab);
    const other = Buffer.from(img.data);
    other[5 * MiB + 10] = 0;
    const otherFile = path.join(lab.dir, 'other.img');
    await writeFile(otherFile, other);
    const otherImg = { path: otherFile, size: other.length, sha256: await sha256File(otherFile) };
    const { result, card } = await flashOn(lab, otherImg, { bmap: img.bmap });
    expect(result).toMatchObject({ ok: false, code: 'BMAP_MISMATCH', card: 'untouched' });
    expect(result.message).toMatch(/range 2 \(blocks 1280-1407\)/);
    expect(card.every((b) => b === CARD_FILL)).toBe(true);
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it('refuses a malformed map with BMAP_INVALID', async () => {
    lab = await startLab({ boards: [{ name: 'pi-m', mac: '02:00:00:00:0d:05' }] });
    const img = await builtImage(lab);
    const { result } = await flashOn(lab, img, { bmap: img.bmap.replace('</BlockMap>', '') });
    expect(result).toMatchObject({ ok: false, code: 'BMAP_INVALID', card: 'untouched' });
  });
});
