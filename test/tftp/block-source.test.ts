import { describe, expect, it } from 'vitest';
import { ReadAheadBlockSource, blockCount } from '../../runner-agent/src/tftp/block-source.js';
import { decodePacket } from '../../runner-agent/src/tftp/packets.js';
import { patternedData } from './helpers.js';

function fileOf(data: Buffer, reads: Array<[number, number]> = []) {
  return {
    size: data.length,
    read: async (position: number, length: number) => (
      reads.push([position, length]),
      Buffer.from(data.subarray(position, position + length))
    ),
  };
}

async function packetOf(source: ReadAheadBlockSource, n: number, to = n): Promise<Buffer> {
  await source.load(n, to);
  return source.packet(n)!;
}

describe('ReadAheadBlockSource', () => {
  it('frames every block of a multi-chunk file as the right DATA packet, wrapping numbers', async () => {
    const data = patternedData(8 * 70_000 + 5);
    const source = new ReadAheadBlockSource(fileOf(data), 8, 1000); // 125 blocks per chunk
    expect(source.blocks).toBe(blockCount(data.length, 8));
    const wrong: number[] = [];
    for (let n = 1; n <= source.blocks; n += 7) {
      const to = Math.min(n + 6, source.blocks);
      await source.load(n, to);
      for (let k = n; k <= to; k++) {
        const packet = source.packet(k)!;
        const ok =
          packet.readUInt16BE(0) === 3 &&
          packet.readUInt16BE(2) === (k & 0xffff) &&
          packet.subarray(4).equals(data.subarray((k - 1) * 8, Math.min(k * 8, data.length)));
        if (!ok) wrong.push(k);
      }
    }
    expect(wrong).toEqual([]);
    expect(decodePacket(source.packet(source.blocks)!)).toEqual({
      op: 3,
      block: source.blocks & 0xffff,
      data: data.subarray(-5),
    });
  });

  it('reads only the first window until a block is acknowledged, then reads the next chunk ahead', async () => {
    const reads: Array<[number, number]> = [];
    const data = patternedData(1000);
    const source = new ReadAheadBlockSource(fileOf(data, reads), 10, 100);
    // Nothing acknowledged yet (and a timeout's resend of the same window): just the window.
    await source.load(1, 4);
    expect(source.load(1, 4)).toBeUndefined();
    expect(reads).toEqual([[0, 40]]);
    // Block 4 acknowledged: a chunk from block 5, and the next one read while it is sent.
    await source.load(5, 8);
    expect(reads).toEqual([
      [0, 40],
      [40, 100],
      [140, 100],
    ]);
    expect(source.load(9, 12)).toBeUndefined(); // in memory: no await needed
  });

  it('reads no further than two chunks past what the client acknowledged', async () => {
    const reads: Array<[number, number]> = [];
    const source = new ReadAheadBlockSource(fileOf(patternedData(100_000), reads), 10, 100);
    await source.load(1, 4);
    let furthest = 0;
    for (let from = 5; from + 3 <= source.blocks; from += 4) {
      await source.load(from, from + 3);
      furthest = Math.max(furthest, ...reads.map(([position, length]) => position + length));
      expect(furthest - (from - 1) * 10).toBeLessThanOrEqual(2 * 100);
    }
    expect(furthest).toBe(100_000);
  });

  it('serves a window that straddles two chunks, and a restart inside the held chunks', async () => {
    const data = patternedData(1000);
    const source = new ReadAheadBlockSource(fileOf(data), 10, 100);
    await source.load(8, 13);
    expect(decodePacket(source.packet(13)!)).toMatchObject({ block: 13, data: data.subarray(120, 130) });
    expect(decodePacket(await packetOf(source, 9, 14))).toMatchObject({ block: 9, data: data.subarray(80, 90) });
  });

  it('ends a size that is a multiple of blksize with an empty block, and an empty file with one', async () => {
    const source = new ReadAheadBlockSource(fileOf(patternedData(40)), 8, 100);
    expect(source.blocks).toBe(6);
    expect(decodePacket(await packetOf(source, 6))).toMatchObject({ block: 6, data: Buffer.alloc(0) });
    const empty = new ReadAheadBlockSource(fileOf(Buffer.alloc(0)), 512);
    expect(empty.blocks).toBe(1);
    expect(decodePacket(await packetOf(empty, 1))).toMatchObject({ block: 1, data: Buffer.alloc(0) });
  });

  it('fails a load when the file returns fewer bytes than its size promised', async () => {
    const source = new ReadAheadBlockSource({ size: 100, read: async () => Buffer.alloc(10) }, 8, 64);
    await expect(source.load(2, 2)).rejects.toThrow(/returned 10 bytes, expected 64/);
  });

  it('fails a load when the file read throws at once instead of rejecting', async () => {
    const source = new ReadAheadBlockSource(
      {
        size: 100,
        read: () => {
          throw new Error('resolver bug');
        },
      },
      8,
    );
    await expect(source.load(1, 1)).rejects.toThrow('resolver bug');
  });
});
