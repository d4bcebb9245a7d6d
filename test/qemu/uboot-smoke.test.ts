/**
 * Rung 3 of the testing ladder (DESIGN §5), first tests: a real U-Boot 2023.01 under QEMU runs the
 * shipped stage 1 (uboot/boot.cmd), fetches `<macdir>/flash.scr` from the project's TFTP server and
 * writes an emulated SD card, which the test compares byte for byte.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { FLASH_SCRIPT, macDir } from '../../src/protocol/tftp-names.js';
import {
  STAGE1_SOURCE,
  runFlashScenario,
  type FlashScenarioOptions,
  type FlashScenarioResult,
} from './flash-scenario.js';
import { consoleTail, startQemuBoard, withConsoleOnFailure } from './qemu-board.js';
import { inCi, qemuTestGate, useQemuWorkspace } from './test-uboot.js';

const execFileAsync = promisify(execFile);
const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

const gate = await qemuTestGate('real U-Boot under QEMU');

const MAC = '52:54:00:12:34:56';
const SD_SIZE = 8 * 1024 * 1024;
const SD_FILL = 0x5a; // not zero, so an untouched sector is told apart from a zeroed one
const BOOT_TIMEOUT_MS = 60_000;

describe.skipIf(!gate.run)(gate.title, () => {
  const qemu = useQemuWorkspace(gate, {
    prefix: 'rpi-flash-qemu-',
    prepare: (dir) => writeFile(join(dir, 'sd.img'), Buffer.alloc(SD_SIZE, SD_FILL)),
  });

  async function writePayload(size: number): Promise<Buffer> {
    const payload = randomBytes(size);
    await writeFile(join(qemu.workDir, 'payload.img'), payload);
    return payload;
  }

  function scenario(over: Partial<FlashScenarioOptions>): FlashScenarioOptions {
    return {
      ubootBin: qemu.ubootBin,
      workDir: qemu.workDir,
      mac: MAC,
      payloadFile: 'payload.img',
      payloadSize: 0,
      startSector: 2048,
      windowsize: 16,
      timeoutMs: BOOT_TIMEOUT_MS,
      ...over,
    };
  }

  async function expectOutcome(result: FlashScenarioResult, outcome: FlashScenarioResult['outcome']): Promise<void> {
    if (result.outcome === outcome) return;
    const text = await readFile(result.consoleLog, 'latin1');
    throw new Error(
      `expected the run to end as ${outcome}, it ended as ${result.outcome}` +
        `\n--- board console ---\n${consoleTail(text)}`,
    );
  }

  /** The SD card holds `payload` at `startSector` and the fill pattern everywhere else. */
  async function expectCard(payload: Buffer, startSector: number): Promise<void> {
    const card = await readFile(join(qemu.workDir, 'sd.img'));
    const start = startSector * 512;
    expect(card.length).toBe(SD_SIZE);
    expect(card.subarray(start, start + payload.length).equals(payload), 'payload on the card').toBe(true);
    const outside = Buffer.concat([card.subarray(0, start), card.subarray(start + payload.length)]);
    expect(
      outside.every((b) => b === SD_FILL),
      'card untouched outside the payload',
    ).toBe(true);
  }

  it('stage 1 fetches <macdir>/flash.scr, the job writes 4 MiB to the SD card and powers off', async () => {
    const payload = await writePayload(4 * 1024 * 1024);
    const result = await runFlashScenario(scenario({ payloadSize: payload.length }));
    await expectOutcome(result, 'powered-off');
    expect(result.exitCode).toBe(0);
    await expectCard(payload, 2048);

    const dir = macDir(MAC);
    const job = result.transfers.find((t) => t.path === `${dir}/${FLASH_SCRIPT}`);
    expect(job?.ok, 'flash.scr served').toBe(true);
    const part = result.transfers.find((t) => t.path === `${dir}/payload.bin`);
    expect(part).toMatchObject({ ok: true, bytes: payload.length, options: { blksize: '1468', windowsize: '16' } });
    // The images came from the agent's buildScriptImage: mkimage must read them as U-Boot does.
    const { stdout: listing } = await execFileAsync('mkimage', ['-l', join(qemu.workDir, 'stage1.scr')]);
    expect(listing).toMatch(/Image Name:\s+rpi-flash stage 1/);
    expect(listing).toMatch(/Image Type:\s+ARM Linux Script \(uncompressed\)/);
    const stage1Length = Buffer.byteLength(await readFile(STAGE1_SOURCE, 'utf8'));
    expect(listing).toMatch(new RegExp(`Image 0: ${stage1Length} Bytes`));
    console.info(
      `boot + stage 1: ${Math.round(result.msToJob ?? NaN)} ms; boot + flash of 4 MiB: ${Math.round(result.ms)} ms`,
    );
  });

  it('without a flash.scr for its MAC, stage 1 reports no job and leaves the card alone', async () => {
    const result = await runFlashScenario(scenario({ withJob: false }));
    await expectOutcome(result, 'no-job');
    await expectCard(Buffer.alloc(0), 0);
    const asked = result.transfers.find((t) => t.path === `${macDir(MAC)}/${FLASH_SCRIPT}`);
    expect(asked).toMatchObject({ ok: false, error: 'File not found' });
  });

  it('the test board lacks tftpput and hash, as a Pi with Debian U-Boot does', async () => {
    const board = await startQemuBoard({
      ubootBin: qemu.ubootBin,
      mac: MAC,
      tftpPort: 9, // never used: no TFTP command runs
      sdImage: join(qemu.workDir, 'sd.img'),
      bootcmd: 'tftpput ${loadaddr} 4 x; hash sha256 ${loadaddr} 4; poweroff',
      timeoutMs: BOOT_TIMEOUT_MS,
      workDir: qemu.workDir,
    });
    await withConsoleOnFailure(board, async () => {
      expect(await board.waitForExit(BOOT_TIMEOUT_MS)).toBe(0);
      expect(board.console()).toMatch(/Unknown command 'tftpput'/);
      expect(board.console()).toMatch(/Unknown command 'hash'/);
    });
  });

  it('runs inside unshare -rn (a private loopback, no root needed)', async (ctx) => {
    try {
      await execFileAsync('unshare', ['-rn', 'true']);
    } catch (err) {
      if (inCi) throw new Error(`CI must allow unshare -rn: ${(err as Error).message}`, { cause: err });
      ctx.skip(`user namespaces are not available here: ${(err as Error).message}`);
    }
    const payload = await writePayload(256 * 1024);
    const options = scenario({ payloadSize: payload.length, startSector: 100 });
    // `ip link set lo up`: a new network namespace starts with its loopback down, and both the
    // TFTP server and slirp's forward to 127.0.0.1 need it.
    const { stdout } = await execFileAsync(
      'unshare',
      [
        '-rn',
        'sh',
        '-c',
        'ip link set lo up && exec "$0" --import tsx test/qemu/flash-scenario.ts "$1"',
        process.execPath,
        JSON.stringify(options),
      ],
      { cwd: REPO_ROOT, timeout: BOOT_TIMEOUT_MS + 10_000 },
    );
    const result = JSON.parse(stdout) as FlashScenarioResult;
    await expectOutcome(result, 'powered-off');
    await expectCard(payload, 100);
  });
});
