import { readFileSync } from 'node:fs';
import { crc32, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { boardCrcText, type Beacon } from '../../runner-agent/src/board/beacons.js';
import {
  BEACON_ECHO,
  generateStage2Script,
  planMappedParts,
  planParts,
  SECTOR,
  type Stage2Options,
} from '../../runner-agent/src/board/stage2-script.js';
import { parseHush, simpleCommands, VAR_MARK } from '../../runner-agent/src/sim/hush-parser.js';
import { CARD_FILL, JOB, MAC, runStage2, SECRET, stageParts, testImage, ZIP_ADDR } from './flash-harness.js';

const RPI_COMMANDS = new Set(
  readFileSync(new URL('../fixtures/uboot-commands-rpi.txt', import.meta.url), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#')),
);

describe('planParts', () => {
  it('splits exact multiples into equal parts', () => {
    const plan = planParts(4 * 4096, 4096);
    expect(plan).toHaveLength(4);
    expect(plan[3]).toEqual({
      index: 4,
      imageOffset: 12288,
      size: 4096,
      servedSize: 4096,
      startBlock: 24,
      blockCount: 8,
    });
  });

  it('pads the last part to whole sectors', () => {
    const plan = planParts(2 * 4096 + 1000, 4096);
    expect(plan.map((p) => [p.size, p.servedSize, p.startBlock, p.blockCount])).toEqual([
      [4096, 4096, 0, 8],
      [4096, 4096, 8, 8],
      [1000, 1024, 16, 2],
    ]);
  });

  it('makes one part of a tiny image', () => {
    expect(planParts(1, 64 * 1024 ** 2)).toEqual([
      { index: 1, imageOffset: 0, size: 1, servedSize: SECTOR, startBlock: 0, blockCount: 1 },
    ]);
  });

  it('handles a 4 GiB image in 64 MiB parts', () => {
    const plan = planParts(4 * 1024 ** 3, 64 * 1024 ** 2);
    expect(plan).toHaveLength(64);
    expect(plan[63]!.startBlock).toBe(63 * 131072);
  });

  it('rejects sizes it cannot plan', () => {
    expect(() => planParts(0, 4096)).toThrow(/positive/);
    expect(() => planParts(100, 1000)).toThrow(/multiple of 512/);
  });
});

/** First words of every command the script runs, following `run X` into every value X is given. */
/**
 * The TFTP and the preloaded script of the same options, as lines, and the index of the one line
 * where they differ (asserting there is exactly one).
 */
function transferVariants(o: Stage2Options): { tftp: string[]; preloaded: string[]; i: number } {
  const tftp = generateStage2Script(o).split('\n');
  const preloaded = generateStage2Script({ ...o, transfer: { kind: 'preloaded', imageAddr: 0x1410_0000 } }).split('\n');
  expect(preloaded).toHaveLength(tftp.length);
  const differ = tftp.flatMap((line, i) => (line === preloaded[i] ? [] : [i]));
  expect(differ).toHaveLength(1);
  return { tftp, preloaded, i: differ[0]! };
}

function commandsOf(script: string): Set<string> {
  const found = new Set<string>();
  const values = new Map<string, string[]>();
  const lists = [];
  for (let pos = 0; pos < script.length;) {
    const r = parseHush(script, 'line', pos);
    if (!r.list) throw new Error(`stage 2 does not parse: ${r.error}`);
    lists.push(r.list);
    pos = r.next;
  }
  const pending: string[] = [];
  const visit = (list: ReturnType<typeof parseHush>['list']) => {
    for (const cmd of simpleCommands(list!)) {
      const [first, ...rest] = cmd.argv;
      if (first === undefined) continue;
      if (first.includes(VAR_MARK)) throw new Error(`a command name is computed at run time: ${cmd.argv.join(' ')}`);
      found.add(first.split('.')[0]!);
      if (first === 'setenv' && rest.length >= 2)
        values.set(rest[0]!, [...(values.get(rest[0]!) ?? []), rest.slice(1).join(' ')]);
      if (first === 'run') pending.push(...rest);
    }
  };
  lists.forEach(visit);
  const seen = new Set<string>();
  while (pending.length) {
    const name = pending.pop()!;
    if (seen.has(name)) continue;
    seen.add(name);
    const defs = values.get(name);
    if (!defs) throw new Error(`run ${name}: the script never sets ${name}`);
    for (const def of defs) {
      const r = parseHush(def + '\n', 'whole'); // run_command appends the newline
      if (!r.list) throw new Error(`${name} does not parse: ${r.error}`);
      visit(r.list);
    }
  }
  return found;
}

describe('generateStage2Script', () => {
  const image = testImage(3 * 4096 + 1000);
  const { parts } = stageParts(image, 4096);
  const base = {
    jobId: JOB,
    mac: MAC,
    reportSecret: SECRET,
    parts,
    retries: 2,
    loadAddr: 0x1000_0000,
    crcAddr: 0x0f00_0000,
    beaconAddr: 0x0f10_0000,
    mmcDev: 0,
  };

  it("uses only commands that Debian's Pi U-Boot has", () => {
    expect(RPI_COMMANDS.size).toBeGreaterThan(50);
    expect(RPI_COMMANDS.has('tftpput')).toBe(false);
    expect(RPI_COMMANDS.has('hash')).toBe(false);
    const used = commandsOf(generateStage2Script({ ...base, tftpBlockSize: 1468, tftpWindowSize: 8 }));
    expect([...used].sort()).toEqual(
      expect.arrayContaining(['crc32', 'itest', 'mmc', 'reset', 'run', 'setenv', 'setexpr', 'tftpboot']),
    );
    expect([...used].filter((c) => !RPI_COMMANDS.has(c))).toEqual([]);
  });

  it('writes every number for U-Boot commands as 0x hex, TFTP tuning as decimal', () => {
    const script = generateStage2Script({ ...base, tftpBlockSize: 1468, tftpWindowSize: 8 });
    expect(script).toContain('setenv tftpblocksize 1468\n');
    expect(script).toContain('setenv tftpwindowsize 8\n');
    expect(script).toContain(
      `setenv rpf_len 0x400; setenv rpf_words 0x100; setenv rpf_want 0x${parts[3]!.crc32.toString(16)}; ` +
        'setenv rpf_blk 0x18; setenv rpf_cnt 0x2; run rpf_one',
    );
    expect(script).toContain('tftpboot 0x10000000 ${rpf_file}');
    expect(script).not.toMatch(/setenv tftp\w+ 0x/);
  });

  it('leaves TFTP tuning alone when not asked', () => {
    expect(generateStage2Script(base)).not.toMatch(/tftpblocksize|tftpwindowsize/);
  });

  it('grows by one short line per part (64 parts of a 4 GiB image)', () => {
    const plan = planParts(4 * 1024 ** 3, 64 * 1024 ** 2).map((p) => ({
      ...p,
      file: `b8-27-eb-28-f6-6d/${JOB}/part-${String(p.index).padStart(3, '0')}`,
      crc32: 0xdeadbeef,
    }));
    const script = generateStage2Script({ ...base, parts: plan });
    const perPart = script.split('\n').filter((l) => l.endsWith('run rpf_one'));
    expect(perPart).toHaveLength(64);
    expect(Math.max(...perPart.map((l) => l.length))).toBeLessThan(220);
    expect(script.length).toBeLessThan(20_000);
  });

  it('has a preloaded variant that differs from the TFTP script in the transfer line only', () => {
    const { tftp, preloaded, i } = transferVariants(base);
    expect(tftp[i]).toMatch(/^setenv rpf_get '.*tftpboot 0x10000000 \$\{rpf_file\} && run rpf_dlcheck'$/);
    // The part's bytes lie at imageAddr + its offset in the image (startBlock × 512).
    expect(preloaded[i]).toContain(
      'setexpr rpf_src ${rpf_blk} * 0x200; setexpr rpf_src ${rpf_src} + 0x14100000; ' +
        "cp.b ${rpf_src} 0x10000000 ${rpf_len} && run rpf_dlcheck'",
    );
    expect(preloaded[i]).toMatch(/^setenv rpf_get '/);
    expect(tftp.filter((l) => l.includes('tftpboot'))).toEqual(
      preloaded.filter((l) => l.includes('tftpboot')).concat(tftp[i]!),
    );
  });

  it('runs the preloaded variant with commands the Pi builds have, and keeps the image clear of its buffers', () => {
    const preloaded = { kind: 'preloaded', imageAddr: 0x1410_0000 } as const;
    expect(
      [...commandsOf(generateStage2Script({ ...base, transfer: preloaded }))].filter((c) => !RPI_COMMANDS.has(c)),
    ).toEqual([]);
    expect(() => generateStage2Script({ ...base, transfer: { kind: 'preloaded', imageAddr: 0x1000_0000 } })).toThrow(
      /overlaps the preloaded image/,
    );
    expect(() => generateStage2Script({ ...base, transfer: { kind: 'preloaded', imageAddr: 0x1410_0001 } })).toThrow(
      /imageAddr must be a 32-bit address aligned to 512/,
    );
  });

  it('refuses options U-Boot could not run', () => {
    expect(() => generateStage2Script({ ...base, crcAddr: 0x1000_0100 })).toThrow(
      /CRC slot .* overlaps|overlaps the CRC slot/,
    );
    expect(() => generateStage2Script({ ...base, jobId: 'Bad Id' })).toThrow(/job id/);
    expect(() => generateStage2Script({ ...base, parts: [{ ...parts[0]!, file: 'a:b' }] })).toThrow(/without ':'/);
    expect(() => generateStage2Script({ ...base, parts: [parts[1]!] })).toThrow(/numbered 1..n/);
    expect(() => generateStage2Script({ ...base, tftpWindowSize: 0 })).toThrow(/tftpWindowSize/);
    expect(() => generateStage2Script({ ...base, retries: 21 })).toThrow(/retries/);
  });
});

const ok = (part: number, data: Buffer): Beacon => ({ kind: 'part-ok', part, crc: boardCrcText(crc32(data)) });

describe('stage 2 in the U-Boot model', () => {
  for (const crcStore of ['native64', 'be32'] as const) {
    it(`writes the image byte for byte and reports every part (crc32 stores ${crcStore})`, async () => {
      const image = testImage(3 * 4096 + 1000, 7);
      const r = await runStage2({
        image,
        partSize: 4096,
        crcStore,
        options: { tftpBlockSize: 1200, tftpWindowSize: 4 },
      });
      expect(r.reset).toBe(true);
      expect(r.card.subarray(0, image.length).equals(image)).toBe(true);
      const end = r.parts.at(-1)!.imageOffset + r.parts.at(-1)!.servedSize;
      expect(end).toBe(13 * 1024);
      expect(r.card.subarray(image.length, end).every((b) => b === 0)).toBe(true); // padding of the last part
      expect(r.card.subarray(end).every((b) => b === CARD_FILL)).toBe(true);
      expect(r.beacons).toEqual([
        { kind: 'start' },
        ...r.parts.map((p) => ok(p.index, r.served.get(p.file)!)),
        { kind: 'done', ok: true },
      ]);
      expect(r.messages.every((m) => !m.includes(':'))).toBe(true);
      expect(
        r.tftpRequests.filter((q) => q.path.includes('/part-')).every((q) => q.blksize === 1200 && q.windowsize === 4),
      ).toBe(true);
    });
  }

  it('names each report on the console, without the secret', async () => {
    const r = await runStage2({ image: testImage(2 * 4096, 5), partSize: 4096 });
    const echoed = r.console.filter((l) => l.startsWith(BEACON_ECHO)).map((l) => l.slice(BEACON_ECHO.length));
    // The message alone: the name the board reads (with the secret) is tftpboot's to print.
    expect(echoed).toEqual(r.messages);
    expect(echoed).toHaveLength(4);
    expect(echoed.filter((l) => l.includes(SECRET))).toEqual([]);
  });

  it('retries a part whose download arrives corrupted once, then succeeds', async () => {
    const image = testImage(3 * 4096, 3);
    let badCrc = 0;
    const r = await runStage2({
      image,
      partSize: 4096,
      crcStore: 'be32',
      tamper: (file, attempt, data) => {
        if (file.endsWith('part-002') && attempt === 1) {
          data[100]! ^= 0x40;
          badCrc = crc32(data);
        }
        return data;
      },
    });
    expect(r.card.subarray(0, image.length).equals(image)).toBe(true);
    const served = (i: number) => r.served.get(r.parts[i - 1]!.file)!;
    expect(r.beacons).toEqual([
      { kind: 'start' },
      ok(1, served(1)),
      { kind: 'part-retry', part: 2, attempt: 1, reason: 'crc', crc: boardCrcText(badCrc) },
      ok(2, served(2)),
      ok(3, served(3)),
      { kind: 'done', ok: true },
    ]);
  });

  it('retries after a failed download', async () => {
    const r = await runStage2({
      image: testImage(4096),
      partSize: 4096,
      retries: 1,
      tamper: (_f, attempt, data) => (attempt === 1 ? null : data),
    });
    expect(r.beacons.map((b) => b?.kind)).toEqual(['start', 'part-retry', 'part-ok', 'done']);
    expect(r.beacons[1]).toEqual({ kind: 'part-retry', part: 1, attempt: 1, reason: 'download' });
  });

  it('gives up on a part that is always corrupted and leaves the card after it untouched', async () => {
    const image = testImage(3 * 4096, 5);
    let badCrc = 0;
    const r = await runStage2({
      image,
      partSize: 4096,
      retries: 2,
      tamper: (file, _attempt, data) => {
        if (file.endsWith('part-002')) {
          data[5]! ^= 1;
          badCrc = crc32(data);
        }
        return data;
      },
    });
    const crc = boardCrcText(badCrc);
    expect(r.reset).toBe(true);
    expect(r.beacons).toEqual([
      { kind: 'start' },
      ok(1, r.served.get(r.parts[0]!.file)!),
      { kind: 'part-retry', part: 2, attempt: 1, reason: 'crc', crc },
      { kind: 'part-retry', part: 2, attempt: 2, reason: 'crc', crc },
      { kind: 'part-failed', part: 2, stage: 'download', crc },
      { kind: 'done', ok: false },
    ]);
    expect(r.card.subarray(0, 4096).equals(image.subarray(0, 4096))).toBe(true);
    expect(r.card.subarray(4096).every((b) => b === CARD_FILL)).toBe(true);
  });

  it('reports a failed write', async () => {
    const r = await runStage2({ image: testImage(2 * 4096), partSize: 4096, failWrite: () => true });
    expect(r.beacons).toEqual([
      { kind: 'start' },
      { kind: 'part-failed', part: 1, stage: 'write' },
      { kind: 'done', ok: false },
    ]);
    expect(r.card.every((b) => b === CARD_FILL)).toBe(true);
  });

  it('reports a failed read-back', async () => {
    const r = await runStage2({ image: testImage(4096), partSize: 4096, failRead: true });
    expect(r.beacons).toEqual([
      { kind: 'start' },
      { kind: 'part-failed', part: 1, stage: 'readback' },
      { kind: 'done', ok: false },
    ]);
  });

  it('fails verification when the card stores something else', async () => {
    const image = testImage(2 * 4096, 9);
    let stored = 0;
    const r = await runStage2({
      image,
      partSize: 4096,
      mangleWrite: (nth, data) => {
        if (nth !== 2) return data;
        data[4000]! ^= 0x10;
        stored = crc32(data);
        return data;
      },
    });
    expect(r.beacons).toEqual([
      { kind: 'start' },
      ok(1, r.served.get(r.parts[0]!.file)!),
      { kind: 'part-failed', part: 2, stage: 'verify', crc: boardCrcText(stored) },
      { kind: 'done', ok: false },
    ]);
  });

  it('fails verification when a write reports success but stores nothing', async () => {
    const r = await runStage2({ image: testImage(4096, 13), partSize: 4096, mangleWrite: () => null });
    expect(r.beacons.at(-2)).toEqual({
      kind: 'part-failed',
      part: 1,
      stage: 'verify',
      crc: boardCrcText(crc32(Buffer.alloc(4096, CARD_FILL))),
    });
  });
});

describe('planMappedParts', () => {
  const KiB = 1024;
  it('cuts each mapped range into parts of at most partSize, at their own offsets', () => {
    const parts = planMappedParts(
      [
        { offset: 0, length: 5 * KiB },
        { offset: 64 * KiB, length: 9 * KiB },
      ],
      100 * KiB,
      4 * KiB,
    );
    expect(parts.map((p) => [p.index, p.imageOffset, p.size, p.startBlock, p.blockCount])).toEqual([
      [1, 0, 4 * KiB, 0, 8],
      [2, 4 * KiB, KiB, 8, 2],
      [3, 64 * KiB, 4 * KiB, 128, 8],
      [4, 68 * KiB, 4 * KiB, 136, 8],
      [5, 72 * KiB, KiB, 144, 2],
    ]);
  });

  it('joins touching or overlapping ranges (a patch inside or beside a range) and widens them to sectors', () => {
    const parts = planMappedParts(
      [
        { offset: 8192, length: 1000 },
        { offset: 100, length: 10 },
        { offset: 9000, length: 4000 },
      ],
      1 << 20,
      1 << 20,
    );
    expect(parts.map((p) => [p.imageOffset, p.size])).toEqual([
      [0, 512],
      [8192, 13312 - 8192],
    ]);
  });

  it("cuts a range at the image's end and pads the last part to a sector", () => {
    const [part] = planMappedParts([{ offset: 1024, length: 4096 }], 3000, 4096);
    expect(part).toMatchObject({ imageOffset: 1024, size: 3000 - 1024, servedSize: 2048, blockCount: 4 });
  });

  it('refuses an image with nothing mapped', () => {
    expect(() => planMappedParts([], 4096, 4096)).toThrow(/no mapped bytes/);
  });

  it("makes the card-size probe read the image's last block, not the last mapped one", () => {
    const parts = planMappedParts([{ offset: 0, length: 4096 }], 1 << 20, 4096).map((p) => ({
      ...p,
      file: `02-00-00-00-00-01/job1/part-${p.index}`,
      crc32: 1,
    }));
    const script = generateStage2Script({
      jobId: JOB,
      mac: MAC,
      reportSecret: SECRET,
      parts,
      imageSize: 1 << 20,
      retries: 2,
      loadAddr: 0x1000_0000,
      crcAddr: 0x0f00_0000,
      beaconAddr: 0x0f10_0000,
      mmcDev: 0,
    });
    expect(script).toContain(`mmc read 0x${(0x0f10_0000).toString(16)} 0x7ff 0x1 || run rpf_size`);
  });
});

describe('compressed parts (issue 13 item 2)', () => {
  // Compressible, as disk images are (each part's gzip stream is smaller than the part).
  const image = Buffer.concat([testImage(600, 9), Buffer.from('rpi-flash '.repeat(1300))]).subarray(0, 3 * 4096 + 1000);
  const zipped = stageParts(image, 4096, { gzip: true });
  const base = {
    jobId: JOB,
    mac: MAC,
    reportSecret: SECRET,
    parts: zipped.parts,
    retries: 2,
    loadAddr: 0x1000_0000,
    crcAddr: 0x0f00_0000,
    beaconAddr: 0x0f10_0000,
    mmcDev: 0,
    unzip: { zipAddr: ZIP_ADDR },
  };
  const okBeacon = (n: number, data: Buffer): Beacon => ({ kind: 'part-ok', part: n, crc: boardCrcText(crc32(data)) });

  it("uses only commands Debian's Pi U-Boot has, unzip among them, in both variants", () => {
    for (const transfer of [{ kind: 'tftp' }, { kind: 'preloaded', imageAddr: 0x1410_0000 }] as const) {
      const used = commandsOf(generateStage2Script({ ...base, transfer }));
      expect(used.has('unzip')).toBe(true);
      expect([...used].filter((c) => !RPI_COMMANDS.has(c))).toEqual([]);
    }
  });

  it('has a preloaded variant that differs in the transfer line only, copying the gzip stream', () => {
    const { tftp, preloaded, i } = transferVariants(base);
    expect(tftp[i]).toMatch(/^setenv rpf_get '.*tftpboot 0x3000000 \$\{rpf_zfile\} && run rpf_unzip'$/);
    expect(preloaded[i]).toContain("cp.b ${rpf_src} 0x3000000 ${rpf_zlen} && run rpf_unzip'");
    // unzip is bounded by the part's size and followed by the part's own CRC check.
    expect(tftp).toContain(
      "setenv rpf_unzip 'setenv rpf_why unzip; setenv rpf_fail unzip; " +
        "unzip 0x3000000 0x10000000 ${rpf_len} && run rpf_dlcheck'",
    );
    expect(tftp.filter((l) => l.endsWith('run rpf_one'))[0]).toContain(
      `setenv rpf_zfile ${zipped.parts[0]!.zip!.file}; setenv rpf_zlen 0x${zipped.parts[0]!.zip!.size.toString(16)}`,
    );
  });

  it('refuses a compressed buffer overlapping another, or a part without its gzip file', () => {
    expect(() => generateStage2Script({ ...base, unzip: { zipAddr: 0x0f00_0000 } })).toThrow(/compressed buffer/);
    expect(() => generateStage2Script({ ...base, parts: zipped.parts.map((p) => ({ ...p, zip: undefined })) })).toThrow(
      /needs the part's gzip file/,
    );
  });

  it('downloads only the gzip streams, inflates them and writes the card byte for byte', async () => {
    const r = await runStage2({ image, partSize: 4096, gzip: true });
    expect(r.reset).toBe(true);
    expect(r.beacons).toEqual([
      { kind: 'start' },
      ...r.parts.map((p) => okBeacon(p.index, r.served.get(p.file)!)),
      { kind: 'done', ok: true },
    ]);
    const parts = r.tftpRequests.filter((q) => !q.path.includes(SECRET)).map((q) => q.path);
    expect(parts).toEqual(r.parts.map((p) => p.zip!.file));
    expect(r.card.subarray(0, image.length).equals(image)).toBe(true);
  });

  it('retries a part whose gzip stream does not inflate, fails it, writes nothing past the verified ones', async () => {
    const r = await runStage2({
      image,
      partSize: 4096,
      gzip: true,
      tamper: (file, _n, data) => {
        // A broken deflate stream: the block type bits of the first block set to the reserved 3.
        if (file.endsWith('part-002.gz')) data[10]! |= 0x06;
        return data;
      },
    });
    expect(r.beacons).toEqual([
      { kind: 'start' },
      okBeacon(1, r.served.get(r.parts[0]!.file)!),
      { kind: 'part-retry', part: 2, attempt: 1, reason: 'unzip' },
      { kind: 'part-retry', part: 2, attempt: 2, reason: 'unzip' },
      { kind: 'part-failed', part: 2, stage: 'unzip' },
      { kind: 'done', ok: false },
    ]);
    expect(r.card.subarray(0, 4096).equals(image.subarray(0, 4096))).toBe(true);
    expect(r.card.subarray(4096).every((b) => b === CARD_FILL)).toBe(true);
  });

  it('checks the inflated data by the part CRC: a stream of other data is a CRC mismatch', async () => {
    const other = gzipSync(Buffer.alloc(4096, 7));
    const r = await runStage2({
      image,
      partSize: 4096,
      gzip: true,
      retries: 0,
      tamper: (file, _n, data) => (file.endsWith('part-001.gz') ? Buffer.from(other) : data),
    });
    const crc = boardCrcText(crc32(Buffer.alloc(4096, 7)));
    expect(r.beacons).toEqual([
      { kind: 'start' },
      { kind: 'part-failed', part: 1, stage: 'download', crc },
      { kind: 'done', ok: false },
    ]);
    expect(r.card.every((b) => b === CARD_FILL)).toBe(true);
  });

  it('refuses a stream that inflates past the part: unzip is bounded by the part size', async () => {
    const r = await runStage2({
      image,
      partSize: 4096,
      gzip: true,
      retries: 0,
      tamper: (file, _n, data) => (file.endsWith('part-001.gz') ? gzipSync(Buffer.alloc(8192, 1)) : data),
    });
    expect(r.beacons.slice(1, 2)).toEqual([{ kind: 'part-failed', part: 1, stage: 'unzip' }]);
    expect(r.card.every((b) => b === CARD_FILL)).toBe(true);
  });

  it('on a U-Boot without unzip reports no-unzip before writing anything', async () => {
    const r = await runStage2({ image, partSize: 4096, gzip: true, unzip: false });
    expect(r.beacons).toEqual([{ kind: 'start' }, { kind: 'no-unzip' }, { kind: 'done', ok: false }]);
    expect(r.tftpRequests.filter((q) => !q.path.includes(SECRET))).toEqual([]);
    expect(r.card.every((b) => b === CARD_FILL)).toBe(true);
  });

  for (const unzip of [true, false])
    it(`probes a raw job's U-Boot for unzip when asked (${unzip ? 'caps-unzip' : 'lacks it: no report'})`, async () => {
      const r = await runStage2({ image, partSize: 4096, unzip, options: { probeUnzip: true } });
      expect(r.beacons.slice(0, 2)).toEqual([
        { kind: 'start' },
        unzip ? { kind: 'caps-unzip' } : okBeacon(1, r.served.get(r.parts[0]!.file)!),
      ]);
      expect(r.beacons.at(-1)).toEqual({ kind: 'done', ok: true });
      expect(r.card.subarray(0, image.length).equals(image)).toBe(true);
    });

  it('leaves the probe out of a raw script not asked to probe', () => {
    const raw = { ...base, unzip: undefined, parts: stageParts(image, 4096).parts };
    expect(generateStage2Script(raw)).not.toContain('unzip');
    expect(generateStage2Script({ ...raw, probeUnzip: true })).toContain('if run rpf_zprobe; then');
  });
});

describe('read-compare (issue 13 item 4)', () => {
  const image = testImage(3 * 4096 + 1000, 13);
  const partBytes = (r: Awaited<ReturnType<typeof runStage2>>, n: number) => r.served.get(r.parts[n - 1]!.file)!;
  const downloads = (r: Awaited<ReturnType<typeof runStage2>>) =>
    r.tftpRequests.filter((q) => !q.path.includes(SECRET)).map((q) => q.path.replace(/.*\//, ''));

  it('skips the parts the card already holds: no download, no write, part-N-same with the CRC it read', async () => {
    // The card holds parts 1 and 3 already; part 2 differs in one byte.
    const held = Buffer.from(image);
    held[4096 + 7]! ^= 1;
    const r = await runStage2({ image, partSize: 4096, cardHolds: held, options: { readCompare: true } });
    const same = (n: number): Beacon => ({ kind: 'part-same', part: n, crc: boardCrcText(crc32(partBytes(r, n))) });
    expect(r.beacons).toEqual([
      { kind: 'start' },
      same(1),
      ok(2, partBytes(r, 2)),
      same(3),
      // The last part's sector is zero-padded on the card only once it was written.
      ok(4, partBytes(r, 4)),
      { kind: 'done', ok: true },
    ]);
    expect(downloads(r)).toEqual(['part-002', 'part-004']);
    expect(r.card.subarray(0, image.length).equals(image)).toBe(true);
  });

  it('a read that fails or moves nothing never counts as the same: the part is downloaded and written', async () => {
    const r = await runStage2({
      image,
      partSize: 4096,
      cardHolds: image,
      failRead: true,
      options: { readCompare: true },
    });
    // Every read fails: the compare falls through to the download, then the read-back fails the part.
    expect(r.beacons).toEqual([
      { kind: 'start' },
      { kind: 'part-failed', part: 1, stage: 'readback' },
      { kind: 'done', ok: false },
    ]);
    expect(downloads(r)).toEqual(['part-001']);
  });

  it('is off by default: the script reads nothing before it downloads', () => {
    const { parts } = stageParts(image, 4096);
    const o = { ...{ jobId: JOB, mac: MAC, reportSecret: SECRET, parts, retries: 2, mmcDev: 0 } };
    const addr = { loadAddr: 0x1000_0000, crcAddr: 0x0f00_0000, beaconAddr: 0x0f10_0000 };
    expect(generateStage2Script({ ...o, ...addr })).not.toContain('rpf_same');
    const on = generateStage2Script({ ...o, ...addr, readCompare: true });
    expect(on).toContain("setenv rpf_one 'if run rpf_same; then");
    expect([...commandsOf(on)].filter((c) => !RPI_COMMANDS.has(c))).toEqual([]);
  });
});
