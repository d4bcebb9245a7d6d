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

  it('reads ahead: the next chunk is requested while the current one is sent', async () => {
    const reads: Array<[number, number]> = [];
    const data = patternedData(1000);
    const source = new ReadAheadBlockSource(fileOf(data, reads), 10, 100);
    await source.load(1, 4);
    expect(reads).toEqual([
      [0, 100],
      [100, 100],
    ]);
    expect(source.load(5, 8)).toBeUndefined(); // in memory: no await needed
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
    await expect(source.load(1, 1)).rejects.toThrow(/returned 10 bytes, expected 64/);
  });
});
