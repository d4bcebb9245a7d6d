/**
 * Runs a generated stage-2 script in the U-Boot shell model against an in-memory card and an
 * in-memory TFTP map, recording the beacons — the script's behaviour without sockets or files.
 */
import { crc32, gzipSync } from 'node:zlib';
import { partFile, reportPrefix } from '../../src/protocol/tftp-names.js';
import { parseBeacon, type Beacon } from '../../runner-agent/src/board/beacons.js';
import {
  generateStage2Script,
  planParts,
  type Stage2Options,
  type Stage2Part,
} from '../../runner-agent/src/board/stage2-script.js';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';
import { SparseMemory } from '../../runner-agent/src/sim/memory.js';
import { BoardResetRequest, UBootShell } from '../../runner-agent/src/sim/uboot-shell.js';

export const MAC = 'b8:27:eb:28:f6:6d';
export const JOB = 'job0001';
/** The job's report secret in these scripts. */
export const SECRET = '0123456789abcdef';
export const CARD_FILL = 0xee;

export function testImage(size: number, seed = 1): Buffer {
  const b = Buffer.alloc(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

/** The parts of an image as the agent serves them; with `gzip`, each also as `<part>.gz` (its `zip`). */
export function stageParts(
  image: Buffer,
  partSize: number,
  o: { gzip?: boolean } = {},
): { parts: Stage2Part[]; served: Map<string, Buffer> } {
  const served = new Map<string, Buffer>();
  const parts = planParts(image.length, partSize).map((p) => {
    const data = Buffer.alloc(p.servedSize);
    image.copy(data, 0, p.imageOffset, p.imageOffset + p.size);
    const file = partFile(MAC, JOB, p.index);
    served.set(file, data);
    if (!o.gzip) return { ...p, file, crc32: crc32(data) };
    const gz = gzipSync(data);
    served.set(`${file}.gz`, gz);
    return { ...p, file, crc32: crc32(data), zip: { file: `${file}.gz`, size: gz.length } };
  });
  return { parts, served };
}

/** Where the harness's compressed transfer loads each gzip stream (the agent's default flash.zipAddr). */
export const ZIP_ADDR = 0x0300_0000;

export interface HarnessOptions {
  image: Buffer;
  partSize: number;
  retries?: number;
  crcStore?: 'be32' | 'native64';
  /** Changes what a download returns: (file, attempt number for that file, data) => data or null. */
  tamper?: (file: string, attempt: number, data: Buffer) => Buffer | null;
  failWrite?: (nth: number) => boolean;
  /** What the card stores for the nth write (null: nothing, while reporting success). */
  mangleWrite?: (nth: number, data: Buffer) => Buffer | null;
  failRead?: boolean;
  cardBlocks?: number;
  /** What the card holds from block 0 before the job (else CARD_FILL throughout). */
  cardHolds?: Buffer;
  /** Parts travel gzip'd (the compressed transfer at ZIP_ADDR). */
  gzip?: boolean;
  /** The shell model has `unzip` (default true, as Debian's 64-bit Pi builds). */
  unzip?: boolean;
  options?: Partial<Stage2Options>;
}

export async function runStage2(h: HarnessOptions) {
  const { parts, served } = stageParts(h.image, h.partSize, { gzip: h.gzip ?? false });
  const script = generateStage2Script({
    jobId: JOB,
    mac: MAC,
    reportSecret: SECRET,
    parts,
    retries: h.retries ?? 2,
    loadAddr: 0x1000_0000,
    crcAddr: 0x0f00_0000,
    beaconAddr: 0x0f10_0000,
    mmcDev: 0,
    ...(h.gzip ? { unzip: { zipAddr: ZIP_ADDR } } : {}),
    ...h.options,
  });
  const card = Buffer.alloc((h.cardBlocks ?? 256) * 512, CARD_FILL);
  h.cardHolds?.copy(card, 0);
  const messages: string[] = [];
  const attempts = new Map<string, number>();
  const tftpRequests: Array<{ path: string; blksize: number; windowsize: number }> = [];
  const prefix = reportPrefix(MAC, JOB, SECRET);
  let writes = 0;
  const console: string[] = [];
  const shell = new UBootShell({
    memory: new SparseMemory(0x4000_0000),
    env: { ipaddr: '10.0.0.2', serverip: '10.0.0.1', ethaddr: MAC },
    crcStore: h.crcStore ?? 'native64',
    unzip: h.unzip ?? true,
    print: (l) => console.push(l),
    tftp: async (path, opts) => {
      tftpRequests.push({ path, ...opts });
      if (path.startsWith(prefix)) {
        messages.push(path.slice(prefix.length));
        return Buffer.from('ok\n');
      }
      const data = served.get(path);
      if (!data) return null;
      const n = (attempts.get(path) ?? 0) + 1;
      attempts.set(path, n);
      return h.tamper ? h.tamper(path, n, Buffer.from(data)) : Buffer.from(data);
    },
    mmc: new Map([
      [
        0,
        {
          blockCount: card.length / 512,
          read: async (block: number, count: number) =>
            h.failRead ? Buffer.alloc(0) : Buffer.from(card.subarray(block * 512, (block + count) * 512)),
          write: async (block: number, data: Buffer) => {
            const nth = ++writes;
            if (h.failWrite?.(nth)) return 0;
            const stored = h.mangleWrite ? h.mangleWrite(nth, Buffer.from(data)) : data;
            stored?.copy(card, block * 512);
            return data.length / 512;
          },
        },
      ],
    ]),
  });
  shell.memory.write(0x0240_0000, buildScriptImage(script, { name: `rpi-flash ${JOB}` }));
  let reset = false;
  try {
    await shell.runCommand('source 0x02400000');
  } catch (err) {
    if (!(err instanceof BoardResetRequest)) throw err;
    reset = true;
  }
  const beacons: Array<Beacon | null> = messages.map(parseBeacon);
  return { script, parts, served, card, messages, beacons, reset, console, tftpRequests };
}
