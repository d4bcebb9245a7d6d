/**
 * The agent's flash path on a real U-Boot (issue 3, DESIGN §5 step 3): the real agent resets a
 * QEMU board through QMP, the board's stage 1 fetches the generated flash.scr, stage 2 downloads
 * the parts from the agent's TFTP server, writes the emulated SD card and beacons; the job is
 * driven over the real WebSocket protocol. The card is compared with the image byte for byte.
 *
 * The card-size probe (`too-large`) is also run on the simulated board here, so both boards are
 * held to the same behaviour.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { planParts } from '../../runner-agent/src/board/stage2-script.js';
import type { JobResult } from '../../src/protocol/messages.js';
import { startLab, type Lab } from '../support/lab.js';
import { runAgentScenario, type AgentScenarioOptions, type AgentScenarioResult } from './agent-scenario.js';
import { consoleTail } from './qemu-board.js';
import { inCi, qemuTestGate, useQemuWorkspace } from './test-uboot.js';

const execFileAsync = promisify(execFile);
const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

const gate = await qemuTestGate('the agent flashes a real U-Boot under QEMU');

const KiB = 1024;
const MiB = 1024 * KiB;
const MAC = '52:54:00:ab:cd:01';
const SD_SIZE = 8 * MiB;
const SD_FILL = 0x5a; // not zero: an untouched sector is told apart from a zeroed one
const PART_SIZE = MiB;
const RUN_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = RUN_TIMEOUT_MS + 15_000;

/** The CRC32 of each part as served: the image's bytes, the last part zero-padded to a sector. */
function expectedPartCrcs(image: Buffer, partSize: number): string[] {
  return planParts(image.length, partSize).map((p) => {
    const served = Buffer.alloc(p.servedSize);
    image.copy(served, 0, p.imageOffset, p.imageOffset + p.size);
    return crc32(served).toString(16).padStart(8, '0');
  });
}

describe.skipIf(!gate.run)(gate.title, () => {
  const qemu = useQemuWorkspace(gate, { prefix: 'rpi-flash-qemu-agent-' });

  async function writeImage(size: number): Promise<{ file: string; data: Buffer }> {
    const data = randomBytes(size);
    const file = join(qemu.workDir, 'image.raw');
    await writeFile(file, data);
    return { file, data };
  }

  function options(imageFile: string, over: Partial<AgentScenarioOptions> = {}): AgentScenarioOptions {
    return {
      ubootBin: qemu.ubootBin,
      workDir: join(qemu.workDir, 'run'),
      mac: MAC,
      imageFile,
      sdSize: SD_SIZE,
      sdFill: SD_FILL,
      waitForNoJobMs: 20_000,
      timeoutMs: RUN_TIMEOUT_MS,
      ...over,
      flash: { partSize: PART_SIZE, ...over.flash },
    };
  }

  /** Runs the scenario; on a failed assertion the error carries the tails of the console and agent log. */
  async function scenario(
    o: AgentScenarioOptions,
    check: (r: AgentScenarioResult) => Promise<void>,
  ): Promise<AgentScenarioResult> {
    const r = await runAgentScenario(o);
    try {
      await check(r);
    } catch (err) {
      const e = err as Error;
      const board = await readFile(r.consoleLog, 'latin1').catch(() => '');
      const agent = await readFile(r.agentLog, 'utf8').catch(() => '');
      e.message +=
        `\n--- result ---\n${JSON.stringify(r.result)}` +
        `\n--- job log ---\n${r.jobLog.join('\n')}` +
        `\n--- board console ---\n${consoleTail(board)}` +
        `\n--- agent log ---\n${consoleTail(agent)}`;
      throw e;
    }
    return r;
  }

  async function card(r: AgentScenarioResult): Promise<Buffer> {
    const c = await readFile(r.sdImage);
    expect(c.length).toBe(SD_SIZE);
    return c;
  }

  function isFill(b: Buffer): boolean {
    return b.every((x) => x === SD_FILL);
  }

  async function expectFlashed(r: AgentScenarioResult, image: Buffer): Promise<void> {
    const result: JobResult = r.result;
    expect(result).toMatchObject({ ok: true, code: 'OK', bytesWritten: image.length });
    const crcs = expectedPartCrcs(image, PART_SIZE);
    expect(result.parts.map((p) => p.crc32)).toEqual(crcs);
    expect(result.parts.every((p) => p.status === 'ok')).toBe(true);
    // What the board reported reading back is what the agent expected (the job checks it too).
    for (const [i, crc] of crcs.entries())
      expect(
        r.jobLog.some((l) =>
          l.includes(`part ${i + 1}/${crcs.length}: written and read back, CRC ${crc.replace(/^0+(?=.)/, '')}`),
        ),
      ).toBe(true);
    const c = await card(r);
    expect(c.subarray(0, image.length).equals(image), 'the card holds the image byte for byte').toBe(true);
    const servedEnd = Math.ceil(image.length / 512) * 512;
    expect(
      c.subarray(image.length, servedEnd).every((x) => x === 0),
      'the last sector is zero-padded',
    ).toBe(true);
    expect(isFill(c.subarray(servedEnd)), 'the card beyond the image is untouched').toBe(true);
    expect(r.tftpLeftovers, 'the staged folder is gone').toEqual([]);
    expect(r.noJobAfterReset, 'after the reset stage 1 finds no flash.scr').toBe(true);
  }

  it(
    'flashes a 3 MiB image in 4 parts with the default TFTP window: ' +
      'OK, part CRCs, byte-exact card, nothing left staged',
    async () => {
      const { file, data } = await writeImage(3 * MiB + 1000);
      const r = await scenario(options(file), (r) => expectFlashed(r, data));
      // U-Boot's own request, as negotiated: blksize 1468 and no window (lock-step).
      const negotiated = r.jobLog.filter((l) => /negotiated .*blksize/.test(l));
      expect(negotiated).toHaveLength(4);
      expect(negotiated.every((l) => /blksize=1468/.test(l) && !/windowsize/.test(l))).toBe(true);
      expect(r.result.tftpOptions).toMatchObject({ blksize: '1468' });
      expect(r.result.tftpOptions?.windowsize).toBeUndefined();
      expect(r.ubootTransfers.filter((t) => /\/part-\d+$/.test(t.file)).map((t) => t.bytes)).toEqual([
        MiB,
        MiB,
        MiB,
        1024,
      ]);
      console.info(`default window: boot ${Math.round(r.bootMs)} ms, job ${Math.round(r.jobMs)} ms`);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'flashes with flash.tftpWindowSize 8 and reports the negotiated windowsize in the job log',
    async () => {
      const { file, data } = await writeImage(3 * MiB + 1000);
      const r = await scenario(options(file, { flash: { tftpWindowSize: 8 } }), (r) => expectFlashed(r, data));
      const negotiated = r.jobLog.filter((l) => /negotiated .*blksize/.test(l));
      expect(negotiated).toHaveLength(4);
      expect(negotiated.every((l) => /blksize=1468/.test(l) && /windowsize=8\b/.test(l))).toBe(true);
      expect(r.result.tftpOptions).toMatchObject({ blksize: '1468', windowsize: '8' });
      console.info(`windowsize 8: boot ${Math.round(r.bootMs)} ms, job ${Math.round(r.jobMs)} ms`);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'a part corrupted once in transit: the board sees the CRC mismatch, fetches it again, and the job passes',
    async () => {
      const { file, data } = await writeImage(3 * MiB + 1000);
      const r = await scenario(
        options(file, { faults: { corrupt: { part: 2, block: 100, times: 'once' } } }),
        async (r) => {
          await expectFlashed(r, data);
          expect(r.result.parts.map((p) => p.retries)).toEqual([0, 1, 0, 0]);
          expect(r.jobLog.some((l) => /part 2: CRC mismatch \(board computed [0-9a-f]+\), retry 1/.test(l))).toBe(true);
        },
      );
      expect(r.ubootTransfers.filter((t) => t.file.endsWith('/part-002'))).toHaveLength(2);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "a part corrupted every time: the job fails with the board's report " +
      'and the card beyond part 1 keeps its old content',
    async () => {
      const { file, data } = await writeImage(3 * MiB + 1000);
      await scenario(options(file, { faults: { corrupt: { part: 2, block: 100, times: 'always' } } }), async (r) => {
        expect(r.result.ok).toBe(false);
        expect(['BOARD_REPORTED_FAILURE', 'VERIFY_MISMATCH']).toContain(r.result.code);
        expect(r.result.message).toMatch(/part 2 failed at download/);
        expect(r.result.parts.map((p) => p.status)).toEqual(['ok', 'failed', 'missing', 'missing']);
        expect(r.result.parts[1]!.retries).toBe(2);
        expect(r.ubootTransfers.filter((t) => t.file.endsWith('/part-002'))).toHaveLength(3);
        const c = await card(r);
        expect(c.subarray(0, PART_SIZE).equals(data.subarray(0, PART_SIZE)), 'part 1 was written').toBe(true);
        expect(isFill(c.subarray(PART_SIZE)), 'nothing written from part 2 on').toBe(true);
        expect(r.tftpLeftovers).toEqual([]);
        expect(r.noJobAfterReset).toBe(true);
      });
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'an image larger than the card: IMAGE_TOO_LARGE naming the image size, before anything is written',
    async () => {
      const size = SD_SIZE + 512;
      const { file } = await writeImage(size);
      await scenario(options(file), async (r) => {
        expect(r.result).toMatchObject({ ok: false, code: 'IMAGE_TOO_LARGE' });
        expect(r.result.message).toContain(`${size} bytes`);
        expect(r.result.parts.every((p) => p.status === 'missing')).toBe(true);
        // The probe's `mmc read` past the end failed on the real U-Boot, and no part was fetched.
        const console = await readFile(r.consoleLog, 'latin1');
        expect(console).toMatch(/MMC: block number 0x4001 exceeds max\(0x4000\)/);
        expect(r.ubootTransfers.filter((t) => /\/part-\d+$/.test(t.file))).toEqual([]);
        expect(console).not.toMatch(/MMC write:/);
        expect(isFill(await card(r)), 'the card is untouched').toBe(true);
        expect(r.tftpLeftovers).toEqual([]);
        expect(r.noJobAfterReset).toBe(true);
      });
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'a sparse image: the real U-Boot fetches and writes only the mapped ranges, the card keeps the rest',
    async () => {
      const { file, data } = await writeImage(6 * MiB);
      data.fill(0, MiB + 4096, 3 * MiB + 4096); // a 2 MiB zero run, not part-aligned: unmapped
      data.fill(0, 4 * MiB); // the zero tail: unmapped
      await writeFile(file, data);
      await scenario(options(file), async (r) => {
        const mapped: Array<[number, number]> = [
          [0, MiB + 4096],
          [3 * MiB + 4096, MiB - 4096],
        ];
        expect(r.result).toMatchObject({ ok: true, code: 'OK', bytesWritten: 2 * MiB, card: 'written' });
        expect(r.result.parts.map((p) => [p.offset, p.size])).toEqual([
          [0, MiB],
          [MiB, 4096],
          [3 * MiB + 4096, MiB - 4096],
        ]);
        expect(r.ubootTransfers.filter((t) => /\/part-\d+$/.test(t.file))).toHaveLength(3);
        const c = await card(r);
        for (const [offset, length] of mapped)
          expect(c.subarray(offset, offset + length).equals(data.subarray(offset, offset + length))).toBe(true);
        expect(isFill(c.subarray(MiB + 4096, 3 * MiB + 4096)), 'the unmapped run keeps the card').toBe(true);
        expect(isFill(c.subarray(4 * MiB)), 'so does the unmapped tail').toBe(true);
        expect(r.tftpLeftovers).toEqual([]);
      });
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "a load buffer inside U-Boot's reserve under the board's RAM top: BOARD_RAM_TOO_SMALL before anything is written",
    async () => {
      const { file } = await writeImage(2 * PART_SIZE);
      // virt's 1 GiB ends at 0x80000000: a buffer ending 20 MiB under it leaves no room for the reserve and margin.
      const loadAddr = `0x${(0x8000_0000 - 20 * MiB - PART_SIZE).toString(16)}`;
      await scenario(options(file, { flash: { loadAddr } }), async (r) => {
        expect(r.result).toMatchObject({ ok: false, code: 'BOARD_RAM_TOO_SMALL', card: 'untouched' });
        expect(r.result.message).toContain('ends at 0x80000000');
        expect(r.result.parts.every((p) => p.status === 'missing')).toBe(true);
        expect(r.ubootTransfers.filter((t) => /\/part-\d+$/.test(t.file))).toEqual([]);
        expect(isFill(await card(r)), 'the card is untouched').toBe(true);
        expect(r.tftpLeftovers).toEqual([]);
        expect(r.noJobAfterReset).toBe(true);
      });
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "the agent's TFTP server goes silent mid-transfer: BOARD_TIMEOUT from the stall timeout, no hang",
    async () => {
      const { file } = await writeImage(3 * MiB + 1000);
      const stall = 3;
      await scenario(
        options(file, { faults: { silenceFrom: { part: 2, block: 200 } }, timeouts: { stall }, waitForNoJobMs: 0 }),
        async (r) => {
          expect(r.result).toMatchObject({ ok: false, code: 'BOARD_TIMEOUT' });
          expect(r.result.message).toMatch(new RegExp(`quiet for ${stall} s during part 2/4`));
          expect(r.result.parts.map((p) => p.status)).toEqual(['ok', 'missing', 'missing', 'missing']);
          // Bounded by the stall timeout, not by U-Boot's own retries (minutes): a generous ceiling.
          expect(r.jobMs).toBeLessThan(30_000);
          expect(r.tftpLeftovers).toEqual([]);
        },
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'runs inside unshare -rn (a private loopback, ephemeral ports, no root needed)',
    async (ctx) => {
      try {
        await execFileAsync('unshare', ['-rn', 'true']);
      } catch (err) {
        if (inCi) throw new Error(`CI must allow unshare -rn: ${(err as Error).message}`, { cause: err });
        ctx.skip(`user namespaces are not available here: ${(err as Error).message}`);
      }
      const { file, data } = await writeImage(MiB + 4096);
      const o = options(file, { flash: { tftpWindowSize: 8 } });
      // `ip link set lo up`: a new network namespace starts with its loopback down.
      const { stdout } = await execFileAsync(
        'unshare',
        [
          '-rn',
          'sh',
          '-c',
          'ip link set lo up && exec "$0" --import tsx test/qemu/agent-scenario.ts "$1"',
          process.execPath,
          JSON.stringify(o),
        ],
        { cwd: REPO_ROOT, timeout: RUN_TIMEOUT_MS },
      );
      const r = JSON.parse(stdout) as AgentScenarioResult;
      try {
        await expectFlashed(r, data);
      } catch (err) {
        (err as Error).message +=
          `\n--- result ---\n${JSON.stringify(r.result)}` +
          `\n--- board console ---\n${consoleTail(await readFile(r.consoleLog, 'latin1'))}`;
        throw err;
      }
    },
    TEST_TIMEOUT_MS,
  );

  /** Compressible like a disk image: random runs between runs of text (no all-zero run to unmap). */
  async function writeCompressibleImage(size: number): Promise<{ file: string; data: Buffer }> {
    const data = Buffer.from('rpi-flash compressible image '.repeat(Math.ceil(size / 29))).subarray(0, size);
    for (let at = 0; at < size; at += 64 * KiB) randomBytes(Math.min(16 * KiB, size - at)).copy(data, at);
    const file = join(qemu.workDir, 'image.raw');
    await writeFile(file, data);
    return { file, data };
  }

  it(
    "a board not probed yet: stage 2's unzip probe inflates on the test build, the agent records it, parts go raw",
    async () => {
      const { file, data } = await writeCompressibleImage(2 * MiB);
      const r = await scenario(options(file), async (r) => {
        await expectFlashed(r, data);
        expect(r.jobLog).toContainEqual(expect.stringContaining("can unzip: parts travel gzip'd from its next job on"));
      });
      const caps = JSON.parse(
        await readFile(join(qemu.workDir, 'run', 'state', 'boards', 'qemu-pi.caps.json'), 'utf8'),
      ) as { unzip: boolean };
      expect(caps.unzip).toBe(true);
      expect(r.ubootTransfers.filter((t) => /\/part-\d+$/.test(t.file))).toHaveLength(2);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'compressed parts over real TFTP: the board downloads gzip streams, unzips each, checks its CRC; byte-exact card',
    async () => {
      const { file, data } = await writeCompressibleImage(3 * MiB + 1000);
      const r = await scenario(options(file, { caps: { unzip: true } }), async (r) => {
        await expectFlashed(r, data);
        expect(r.jobLog).toContainEqual(expect.stringMatching(/gzip'd parts: .* travel as .*compressed 4 part/));
      });
      const zipped = r.ubootTransfers.filter((t) => /\/part-\d+\.gz$/.test(t.file));
      expect(zipped).toHaveLength(4);
      expect(r.ubootTransfers.filter((t) => /\/part-\d+$/.test(t.file))).toEqual([]);
      expect(zipped.every((t) => t.bytes < 0.5 * MiB)).toBe(true);
      // U-Boot's unzip reports the inflated size of each part (and sets filesize to it).
      const consoleText = await readFile(r.consoleLog, 'latin1');
      expect(consoleText.match(/Uncompressed size: 1048576 = 0x100000/g)).toHaveLength(3);
      expect(consoleText).toMatch(/Uncompressed size: 1024 = 0x400/);
      const rates = r.jobLog.filter((l) => /part \d\/4: served \d+ bytes .* MB\/s gzip'd/.test(l));
      expect(rates).toHaveLength(4);
      console.info(
        `gzip'd parts: job ${Math.round(r.jobMs)} ms; ` +
          `U-Boot rates ${zipped.map((t) => t.mibPerSecond).join(', ')} MiB/s`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "a compressed part corrupted every time: the board's unzip or CRC check fails, retried, failed; " +
      'the card beyond part 1 keeps its old content',
    async () => {
      const { file, data } = await writeCompressibleImage(3 * MiB + 1000);
      await scenario(
        options(file, { caps: { unzip: true }, faults: { corrupt: { part: 2, block: 20, times: 'always' } } }),
        async (r) => {
          expect(r.result).toMatchObject({ ok: false, code: 'BOARD_REPORTED_FAILURE' });
          expect(r.result.message).toMatch(/part 2 failed at (unzip|download)/);
          expect(r.result.parts.map((p) => p.status)).toEqual(['ok', 'failed', 'missing', 'missing']);
          expect(r.result.parts[1]!.retries).toBe(2);
          expect(r.ubootTransfers.filter((t) => t.file.endsWith('/part-002.gz'))).toHaveLength(3);
          const c = await card(r);
          expect(c.subarray(0, PART_SIZE).equals(data.subarray(0, PART_SIZE)), 'part 1 was written').toBe(true);
          expect(isFill(c.subarray(PART_SIZE)), 'nothing written from part 2 on').toBe(true);
          expect(r.tftpLeftovers).toEqual([]);
          expect(r.noJobAfterReset).toBe(true);
        },
      );
    },
    TEST_TIMEOUT_MS,
  );
});

describe('the card-size probe on the simulated board (same behaviour as the real U-Boot above)', () => {
  let lab: Lab | undefined;
  afterEach(async () => {
    await lab?.stop();
    lab = undefined;
  });

  it('an image larger than the sim card: IMAGE_TOO_LARGE, and the card is untouched', async () => {
    lab = await startLab({
      boards: [{ name: 'small', mac: '02:00:00:00:01:0a' }],
      config: { sim: { bootPort: 2222, cardSize: '2MiB' } },
    });
    const conn = await lab.connect();
    const img = await lab.image('big.img', 2 * MiB + 512, 3);
    await conn.lease('small');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256, bootCheck: 'none' });
    expect(result).toMatchObject({ ok: false, code: 'IMAGE_TOO_LARGE' });
    expect(result.message).toContain(`${img.size} bytes`);
    const simCard = await readFile(join(lab.agent.config.stateDir, 'sim', 'small.card'));
    expect(simCard.length).toBe(2 * MiB);
    expect(simCard.every((b) => b === 0)).toBe(true);
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it('an image that fills the sim card exactly passes the probe', async () => {
    lab = await startLab({
      boards: [{ name: 'exact', mac: '02:00:00:00:01:0b' }],
      config: { sim: { bootPort: 2222, cardSize: '2MiB' } },
    });
    const conn = await lab.connect();
    const img = await lab.image('fit.img', 2 * MiB, 4);
    await conn.lease('exact');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256, bootCheck: 'none' });
    expect(result.code).toBe('OK');
    const simCard = await readFile(join(lab.agent.config.stateDir, 'sim', 'exact.card'));
    expect(simCard.equals(await readFile(img.path))).toBe(true);
  });
});
