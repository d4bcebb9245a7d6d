/**
 * Issue 13 item 1: the mapped ranges the agent derives for an image without a block map. The
 * rule (all-zero runs of at least minZeroRun are unmapped, in 4 KiB blocks) is checked against a
 * byte-by-byte reference on images with zero runs of every kind, read from real files.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  deriveMappedRanges,
  mappedBytes,
  MappedRangeBuilder,
  ZERO_BLOCK,
  type MappedRange,
} from '../../runner-agent/src/store/mapped-ranges.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** The rule, written the slow way: per block, then runs, then ranges. */
function reference(image: Buffer, minZeroRun: number): MappedRange[] {
  const blocks: boolean[] = [];
  for (let at = 0; at < image.length; at += ZERO_BLOCK)
    blocks.push(image.subarray(at, at + ZERO_BLOCK).every((b) => b === 0));
  const unmapped = new Array<boolean>(blocks.length).fill(false);
  for (let i = 0; i < blocks.length;) {
    if (!blocks[i]) {
      i++;
      continue;
    }
    let j = i;
    while (j < blocks.length && blocks[j]) j++;
    const runBytes = Math.min(j * ZERO_BLOCK, image.length) - i * ZERO_BLOCK;
    if (runBytes >= minZeroRun) for (let k = i; k < j; k++) unmapped[k] = true;
    i = j;
  }
  const ranges: MappedRange[] = [];
  for (let i = 0; i < blocks.length; i++) {
    if (unmapped[i]) continue;
    const start = i * ZERO_BLOCK;
    while (i + 1 < blocks.length && !unmapped[i + 1]) i++;
    const end = Math.ceil(Math.min((i + 1) * ZERO_BLOCK, image.length) / 512) * 512;
    ranges.push({ offset: start, length: end - start });
  }
  return ranges;
}

/** An image from [kind, bytes] pieces: random data or zeros. */
function image(pieces: Array<['data' | 'zero', number]>): Buffer {
  return Buffer.concat(pieces.map(([kind, n]) => (kind === 'data' ? randomBytes(n) : Buffer.alloc(n))));
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-mapped-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function derive(data: Buffer, minZeroRun: number): Promise<MappedRange[]> {
  const file = path.join(dir, `image-${randomBytes(4).toString('hex')}.img`);
  await writeFile(file, data);
  return deriveMappedRanges(file, data.length, minZeroRun);
}

describe('deriveMappedRanges', () => {
  const cases: Array<[string, Array<['data' | 'zero', number]>]> = [
    [
      'data, a long zero run, data, a zero tail',
      [
        ['data', MiB],
        ['zero', 2 * MiB],
        ['data', 100 * KiB],
        ['zero', 3 * MiB],
      ],
    ],
    [
      'a leading long zero run',
      [
        ['zero', 5 * MiB],
        ['data', 8 * KiB],
      ],
    ],
    [
      'a leading short zero run stays mapped',
      [
        ['zero', 12 * KiB],
        ['data', 8 * KiB],
        ['zero', 2 * MiB],
      ],
    ],
    [
      'short zero runs inside data stay mapped',
      [
        ['data', 10 * KiB],
        ['zero', 512 * KiB],
        ['data', 3000],
        ['zero', 4 * KiB],
      ],
    ],
    [
      'a run of exactly minZeroRun is unmapped',
      [
        ['data', 4 * KiB],
        ['zero', MiB],
        ['data', 4 * KiB],
      ],
    ],
    [
      'a run one block short of it is not',
      [
        ['data', 4 * KiB],
        ['zero', MiB - 4 * KiB],
        ['data', 4 * KiB],
      ],
    ],
    [
      'zeros that straddle blocks unaligned',
      [
        ['data', 1000],
        ['zero', MiB + 5000],
        ['data', 1],
        ['zero', 777],
      ],
    ],
    ['an image that is not a whole number of sectors', [['data', 5 * MiB + 123]]],
  ];
  for (const [name, pieces] of cases)
    it(name, async () => {
      const data = image(pieces);
      const got = await derive(data, MiB);
      expect(got).toEqual(reference(data, MiB));
      for (const r of got) {
        expect(r.offset % 512).toBe(0);
        expect(r.length % 512).toBe(0);
      }
      // What is left out is all zeros.
      let at = 0;
      for (const r of [...got, { offset: Math.ceil(data.length / 512) * 512, length: 0 }]) {
        expect(data.subarray(at, r.offset).every((b) => b === 0)).toBe(true);
        at = r.offset + r.length;
      }
    });

  it('an all-zero image has no mapped bytes; one shorter than minZeroRun is all mapped', async () => {
    expect(await derive(Buffer.alloc(3 * MiB), MiB)).toEqual([]);
    expect(await derive(Buffer.alloc(64 * KiB), MiB)).toEqual([{ offset: 0, length: 64 * KiB }]);
  });

  it('a larger minZeroRun keeps a run shorter than it mapped', async () => {
    const data = image([
      ['data', 4 * KiB],
      ['zero', 2 * MiB],
      ['data', 4 * KiB],
    ]);
    expect(mappedBytes(await derive(data, MiB))).toBe(8 * KiB);
    expect(await derive(data, 4 * MiB)).toEqual([{ offset: 0, length: data.length }]);
  });

  it('refuses a minZeroRun that is not a whole number of blocks', () => {
    expect(() => new MappedRangeBuilder(1000)).toThrow(/multiple of 4096/);
  });
});
