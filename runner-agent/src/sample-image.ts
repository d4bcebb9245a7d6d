/**
 * A small disk image for the simulated lab and the tests: an MBR with one FAT32-LBA partition
 * entry and deterministic pseudo-random content, so every byte on the card can be compared.
 */
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';

/** Deterministic bytes (xorshift32): the same seed gives the same image on every machine. */
export function patternBytes(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 0x9e3779b9;
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeUInt32LE(x >>> 0, i);
  }
  for (; i < length; i++) out[i] = (x = (x * 1103515245 + 12345) >>> 0) & 0xff;
  return out;
}

export function mbr(sectors: number): Buffer {
  const sector = Buffer.alloc(512);
  const entry = 446;
  sector[entry + 4] = 0x0c; // FAT32 with LBA
  sector.writeUInt32LE(2048, entry + 8);
  sector.writeUInt32LE(Math.max(0, sectors - 2048), entry + 12);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

/** Write `size` bytes (a multiple of 512 or not): MBR first, then pattern data. */
export async function writeSampleImage(file: string, size: number, seed = 1): Promise<void> {
  const out = createWriteStream(file);
  const chunk = 1024 * 1024;
  let written = 0;
  while (written < size) {
    const n = Math.min(chunk, size - written);
    const data = patternBytes(n, seed + written / chunk);
    if (written === 0) mbr(Math.floor(size / 512)).copy(data, 0, 0, Math.min(512, n));
    if (!out.write(data)) await once(out, 'drain');
    written += n;
  }
  out.end();
  await once(out, 'finish');
}
