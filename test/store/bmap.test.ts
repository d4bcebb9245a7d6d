/**
 * Issue 13 item 1: block maps as Debian's bmap-tools writes them (`bmaptool create` on a real
 * ext4 image made with `mkfs.ext4 -d`), read by the agent's parser and checked against the image;
 * and every kind of bad map refused with its code.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bmapByteRanges, parseBmap, verifyBmap } from '../../runner-agent/src/store/bmap.js';
import { mappedBytes } from '../../runner-agent/src/store/mapped-ranges.js';
import { BMAP_MAX_BYTES } from '../../src/protocol/messages.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;

/** Runs a tool; a missing one fails the test naming the Debian package. */
async function run(tool: string, args: string[], pkg: string): Promise<void> {
  try {
    await execFileAsync(tool, args);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new Error(`${tool} is missing: apt install ${pkg}`, { cause: err });
    throw err;
  }
}

let dir: string;
let image: string;
let imageData: Buffer;
let bmapText: string;
let fileA: Buffer;

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

/** The map with its BmapFileChecksum made right again after an edit (a well-formed but wrong map). */
function resealed(text: string): string {
  const zeroed = text.replace(/(<BmapFileChecksum>\s*)[0-9a-f]+/, (_, head: string) => head + '0'.repeat(64));
  const sum = createHash('sha256').update(zeroed).digest('hex');
  return zeroed.replace(/(<BmapFileChecksum>\s*)0{64}/, (_, head: string) => head + sum);
}

describe('block maps written by bmap-tools', () => {
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-bmap-'));
    const root = path.join(dir, 'root');
    await mkdir(path.join(root, 'etc'), { recursive: true });
    fileA = randomBytes(3 * MiB + 1234);
    await writeFile(path.join(root, 'a.bin'), fileA);
    await writeFile(path.join(root, 'etc', 'marker'), 'image A\n');
    image = path.join(dir, 'fs.img');
    await writeFile(image, '');
    await truncate(image, 32 * MiB);
    await run('mkfs.ext4', ['-q', '-F', '-d', root, image], 'e2fsprogs');
    await run('bmaptool', ['create', '-o', `${image}.bmap`, image], 'bmap-tools');
    bmapText = await readFile(`${image}.bmap`, 'utf8');
    imageData = await readFile(image);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("reads bmaptool's map: the ranges hold the files, all outside them is zero, and it checks out", async () => {
    const bmap = parseBmap(bmapText);
    expect(bmap).toMatchObject({ version: '2.0', imageSize: 32 * MiB, blockSize: 4096, checksumType: 'sha256' });
    const ranges = bmapByteRanges(bmap);
    const stated = Number(/<MappedBlocksCount>\s*(\d+)/.exec(bmapText)![1]);
    expect(mappedBytes(ranges)).toBe(stated * 4096);
    expect(mappedBytes(ranges)).toBeGreaterThan(fileA.length);
    expect(mappedBytes(ranges)).toBeLessThan(16 * MiB);
    let at = 0;
    for (const r of [...ranges, { offset: imageData.length, length: 0 }]) {
      expect(imageData.subarray(at, r.offset).every((b) => b === 0)).toBe(true);
      at = r.offset + r.length;
    }
    // The file's first block lies inside a mapped range.
    const where = imageData.indexOf(fileA.subarray(0, 4096));
    expect(where).toBeGreaterThan(0);
    expect(ranges.some((r) => r.offset <= where && where + 4096 <= r.offset + r.length)).toBe(true);
    await verifyBmap(bmap, image, imageData.length);
  });

  it("refuses a map of another image (a range's checksum) and of another size", async () => {
    const other = path.join(dir, 'other.img');
    const changed = Buffer.from(imageData);
    const first = bmapByteRanges(parseBmap(bmapText))[0]!;
    changed[first.offset + 100]! ^= 0xff;
    await writeFile(other, changed);
    expect(await codeOf(verifyBmap(parseBmap(bmapText), other, changed.length))).toBe('BMAP_MISMATCH');
    expect(await codeOf(verifyBmap(parseBmap(bmapText), image, imageData.length - 4096))).toBe('BMAP_MISMATCH');
  });

  it('refuses an edited map, ranges past the image, overlaps, other versions and non-XML', async () => {
    const edited = bmapText.replace(
      /(<Range[^>]*>\s*)(\d+)/,
      (_, head: string, n: string) => `${head}${Number(n) + 1}`,
    );
    expect(await codeOf(() => parseBmap(edited))).toBe('BMAP_INVALID'); // the file checksum no longer matches
    const pastEnd = resealed(bmapText.replace(/<\/BlockMap>/, '<Range> 8190-8192 </Range></BlockMap>'));
    expect(await codeOf(() => parseBmap(pastEnd))).toBe('BMAP_INVALID');
    const overlap = resealed(bmapText.replace(/<\/BlockMap>/, '<Range> 0-1 </Range></BlockMap>'));
    expect(await codeOf(() => parseBmap(overlap))).toBe('BMAP_INVALID');
    const v3 = resealed(bmapText.replace('<bmap version="2.0">', '<bmap version="3.0">'));
    expect(await codeOf(() => parseBmap(v3))).toBe('BMAP_UNSUPPORTED');
    expect(await codeOf(() => parseBmap('not xml <<'))).toBe('BMAP_INVALID');
    expect(await codeOf(() => parseBmap('<bmap version="2.0"><ImageSize>x</ImageSize></bmap>'))).toBe(
      'BMAP_UNSUPPORTED',
    );
    expect(await codeOf(() => parseBmap(' '.repeat(BMAP_MAX_BYTES + 1)))).toBe('BMAP_INVALID');
  });

  it('reads the 1.4 format (sha1 per range) that older bmaptool versions wrote', async () => {
    const bmap = parseBmap(bmapText);
    const ranges = bmap.ranges.map((r) => {
      const { offset, length } = bmapByteRanges({ ...bmap, ranges: [r] })[0]!;
      const sha1 = createHash('sha1')
        .update(imageData.subarray(offset, offset + length))
        .digest('hex');
      return `<Range sha1="${sha1}"> ${r.first}-${r.last} </Range>`;
    });
    const mapped = bmap.ranges.reduce((n, r) => n + r.last - r.first + 1, 0);
    const v14 =
      `<?xml version="1.0" ?>\n<bmap version="1.4">\n<ImageSize> ${bmap.imageSize} </ImageSize>\n` +
      `<BlockSize> 4096 </BlockSize>\n<BlocksCount> ${bmap.blocksCount} </BlocksCount>\n` +
      `<MappedBlocksCount> ${mapped} </MappedBlocksCount>\n<BlockMap>\n${ranges.join('\n')}\n</BlockMap>\n</bmap>\n`;
    const parsed = parseBmap(v14);
    expect(parsed).toMatchObject({ version: '1.4', checksumType: 'sha1' });
    expect(bmapByteRanges(parsed)).toEqual(bmapByteRanges(bmap));
    await verifyBmap(parsed, image, imageData.length);
  });
});
