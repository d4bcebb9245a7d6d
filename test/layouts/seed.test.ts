import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BoardFiles, type StagedJob } from '../../runner-agent/src/staging/board-files.js';
import {
  interpretSeedResult,
  planSeedParts,
  SEED_PART_BYTES,
  SEED_SKIP_BYTES,
  seedFolder,
  seedPartName,
  SeedReports,
  type SeedReport,
} from '../../runner-agent/src/board/seed-card.js';
import { CodedError } from '../../src/protocol/errors.js';
import { silentLogger } from '../../runner-agent/src/log.js';
import { tftpGet, tftpPut } from '../../runner-agent/src/tftp/client.js';
import { TftpServer } from '../../runner-agent/src/tftp/server.js';

const MiB = 1024 * 1024;

describe('seed names', () => {
  it('names the folder by the MAC with ":" and the parts rpi_image_part_0…9', () => {
    expect(seedFolder('B8-27-EB-28-F6-6D')).toBe('b8:27:eb:28:f6:6d');
    expect(seedPartName(0)).toBe('rpi_image_part_0');
    expect(seedPartName(9)).toBe('rpi_image_part_9');
    expect(() => seedPartName(10)).toThrow(/outside 0–9/);
  });
});

describe('planSeedParts', () => {
  it("uses the seed system's split size, 786 432 000 bytes", () => {
    expect(SEED_PART_BYTES).toBe(786_432_000);
  });

  it('cuts the whole image from byte 0 into 750 MiB parts; the board writes part 0 less 4 MiB', () => {
    const size = 2 * SEED_PART_BYTES + 12345;
    const plan = planSeedParts(size);
    expect(plan.parts).toEqual([
      {
        index: 0,
        name: 'rpi_image_part_0',
        offset: 0,
        size: SEED_PART_BYTES,
        written: SEED_PART_BYTES - SEED_SKIP_BYTES,
      },
      { index: 1, name: 'rpi_image_part_1', offset: SEED_PART_BYTES, size: SEED_PART_BYTES, written: SEED_PART_BYTES },
      { index: 2, name: 'rpi_image_part_2', offset: 2 * SEED_PART_BYTES, size: 12345, written: 12345 },
    ]);
    expect(plan.writtenBytes).toBe(size - 4 * MiB);
    expect(plan.parts.reduce((n, p) => n + p.written, 0)).toBe(plan.writtenBytes);
    expect(plan.expectedCount).toBe(size - 4 * MiB);
  });

  it('has one part for an image of at most 750 MiB', () => {
    expect(planSeedParts(SEED_PART_BYTES).parts).toHaveLength(1);
    expect(planSeedParts(SEED_PART_BYTES + 1).parts).toHaveLength(2);
  });

  it('expects the count modulo 2^32 for images whose written bytes do not fit 32 bits', () => {
    const size = 5 * 1024 * MiB; // 5 GiB: 7 parts
    const plan = planSeedParts(size);
    expect(plan.parts).toHaveLength(7);
    expect(plan.writtenBytes).toBe(size - 4 * MiB);
    expect(plan.expectedCount).toBe(size - 4 * MiB - 2 ** 32);
  });

  it('refuses an image of at most 4 MiB (nothing to write) and one needing more than 10 parts', () => {
    const tiny = (() => {
      try {
        planSeedParts(4 * MiB);
      } catch (e) {
        return e;
      }
    })();
    expect(tiny).toBeInstanceOf(CodedError);
    expect(tiny).toMatchObject({
      code: 'BAD_REQUEST',
      message: expect.stringMatching(/skips the image's first 4194304 bytes/) as string,
    });
    expect(planSeedParts(10 * SEED_PART_BYTES).parts).toHaveLength(10);
    expect(() => planSeedParts(10 * SEED_PART_BYTES + 1)).toThrow(expect.objectContaining({ code: 'IMAGE_TOO_LARGE' }));
  });

  it('takes a smaller part size for tests, never one that is not above 4 MiB or not whole blocks', () => {
    expect(planSeedParts(10 * MiB, { partBytes: 5 * MiB }).parts.map((p) => [p.offset, p.size, p.written])).toEqual([
      [0, 5 * MiB, 1 * MiB],
      [5 * MiB, 5 * MiB, 5 * MiB],
    ]);
    expect(() => planSeedParts(10 * MiB, { partBytes: 4 * MiB })).toThrow(/larger than 4194304/);
    expect(() => planSeedParts(10 * MiB, { partBytes: 5 * MiB + 1 })).toThrow(/multiple of 512/);
  });
});

describe('interpretSeedResult', () => {
  const plan = planSeedParts(10 * MiB);
  const report = (name: 'OK' | 'FAILED', data: Buffer): SeedReport => ({
    name,
    data,
    peer: '127.0.0.1',
    time: 0,
    ...(data.length === 4 ? { count: data.readUInt32LE(0) } : {}),
  });
  const le = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return b;
  };

  it('OK with the expected count passes', () => {
    expect(interpretSeedResult(plan, report('OK', le(6 * MiB)), { part0Fetched: true })).toEqual({
      code: 'OK',
      message: 'the seed card wrote 6291456 bytes and reported OK',
      reportedCount: 6 * MiB,
    });
  });

  it('OK with another count is a VERIFY_MISMATCH (also a big-endian count)', () => {
    expect(interpretSeedResult(plan, report('OK', le(6 * MiB - 512)), { part0Fetched: true })).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message:
        'the seed card reported OK with 6290944 bytes written, ' +
        'expected 6291456 (image of 10485760 bytes less the skipped 4194304)',
    });
    const bigEndian = Buffer.alloc(4);
    bigEndian.writeUInt32BE(6 * MiB);
    expect(interpretSeedResult(plan, report('OK', bigEndian), { part0Fetched: true }).code).toBe('VERIFY_MISMATCH');
  });

  it('a report that is not 4 bytes is a VERIFY_MISMATCH', () => {
    expect(interpretSeedResult(plan, report('OK', Buffer.from('OK')), { part0Fetched: true })).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: 'the seed card uploaded OK with 2 bytes, not the 4-byte count it should hold',
    });
  });

  it('FAILED is the board reporting failure, with how far it got', () => {
    expect(interpretSeedResult(plan, report('FAILED', le(MiB)), { part0Fetched: true })).toEqual({
      code: 'BOARD_REPORTED_FAILURE',
      message: 'the seed card reported FAILED after writing 1048576 of 6291456 bytes',
      reportedCount: MiB,
    });
  });

  it('no report is a timeout, told apart from a board that never fetched part 0', () => {
    expect(interpretSeedResult(plan, undefined, { part0Fetched: true, waitedMs: 600_000 })).toEqual({
      code: 'BOARD_TIMEOUT',
      message: 'the seed card fetched its image but uploaded no OK or FAILED report within 600 s',
    });
    expect(interpretSeedResult(plan, undefined, { part0Fetched: false })).toMatchObject({ code: 'BOARD_NO_SHOW' });
  });
});

describe('SeedReports over real TFTP (BoardFiles + TftpServer on loopback)', () => {
  let cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups = [];
  });

  async function lab() {
    const root = await mkdtemp(path.join(os.tmpdir(), 'seed-tftp-'));
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    const files = new BoardFiles({ root, log: silentLogger, checkClientIp: false });
    const server = new TftpServer({
      address: '127.0.0.1',
      port: 0,
      resolver: files,
      log: silentLogger,
      timeoutMs: 200,
      retries: 3,
    });
    const { port } = await server.listen();
    cleanups.push(() => server.close());
    const reports = new SeedReports();
    const folder = seedFolder('b8:27:eb:28:f6:6d');
    const job: StagedJob = {
      jobId: 'seedjob1',
      targetIp: '127.0.0.1',
      files: new Map([[seedPartName(0), { kind: 'buffer', data: Buffer.from('part zero') }]]),
      beaconPrefix: 'no-beacons/',
      onRead: () => {},
      onProgress: () => {},
      onBeacon: () => {},
      onWrite: reports.onWrite,
    };
    await files.stage(folder, job, {});
    const put = (name: string, data: Buffer) =>
      tftpPut({ host: '127.0.0.1', port, path: `${folder}/${name}`, data, timeoutMs: 500, retries: 3 });
    return { port, folder, reports, put };
  }

  it('serves the parts from the ":" folder and takes the 4-byte OK upload, little-endian', async () => {
    const { port, folder, reports, put } = await lab();
    expect(
      (await tftpGet({ host: '127.0.0.1', port, path: `${folder}/rpi_image_part_0`, timeoutMs: 500 }))?.toString(),
    ).toBe('part zero');
    const waiting = reports.wait({ timeoutMs: 10_000 });
    await put('OK', Buffer.from([0x00, 0x00, 0x60, 0x00])); // 0x600000 = 6 MiB
    const first = await waiting;
    expect(first).toMatchObject({ name: 'OK', count: 6 * MiB, peer: '127.0.0.1' });
    expect(interpretSeedResult(planSeedParts(10 * MiB), first ?? undefined, { part0Fetched: true }).code).toBe('OK');
  });

  it(
    'refuses an upload larger than 4 bytes and any other name; ' + 'keeps the first report, records later ones',
    async () => {
      const { reports, put } = await lab();
      await expect(put('OK', Buffer.alloc(5))).rejects.toThrow();
      await expect(put('RESULT', Buffer.alloc(4))).rejects.toThrow();
      await expect(put('sub/OK', Buffer.alloc(4))).rejects.toThrow();
      expect(reports.all).toEqual([]);
      await put('FAILED', Buffer.from([1, 0, 0, 0]));
      await put('OK', Buffer.from([2, 0, 0, 0]));
      expect(reports.first).toMatchObject({ name: 'FAILED', count: 1 });
      expect(reports.all.map((r) => r.name)).toEqual(['FAILED', 'OK']);
      expect(await reports.wait({ timeoutMs: 1 })).toBe(reports.first);
    },
  );

  it('wait() resolves null at its deadline and rejects on abort', async () => {
    const reports = new SeedReports();
    expect(await reports.wait({ timeoutMs: 20 })).toBeNull();
    const controller = new AbortController();
    const waiting = reports.wait({ timeoutMs: 60_000, signal: controller.signal });
    controller.abort(new Error('job cancelled'));
    await expect(waiting).rejects.toThrow('job cancelled');
  });
});
