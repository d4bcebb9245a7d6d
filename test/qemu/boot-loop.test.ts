/**
 * Issue 5, item 7: the whole loop under QEMU, driven by the real agent.
 *
 * The board's card holds test OS image A (Debian's arm64 kernel + an initramfs printing marker A)
 * with U-Boot and stage 1 on its boot partition. It boots: stage 1 finds no job and starts A. The
 * agent (`startAgent`, targets row with `qmp:` reset) then flashes image B (marker B, U-Boot and
 * stage 1 on its boot partition too): it stages flash.scr, resets the VM through QMP, stage 1
 * runs the job, stage 2 writes B and resets; stage 1 on B's boot partition finds no flash.scr
 * (the agent deleted the staged folder) and boots B's kernel — marker B appears on the console.
 *
 * Card A is made by `make-card` (model `arm64`, the QEMU test U-Boot as `--uboot`) from a
 * Raspberry Pi OS-style image (config.txt, cmdline.txt, gzip'd kernel8.img, initramfs8). Image B
 * is uploaded as a plain OS image: the agent's default `inject` layout carries U-Boot, stage 1 and
 * the env file into its boot partition while staging. The board's serial console is a unix socket
 * in the targets database; the job passes only because its `console:<marker B>` boot check matches
 * a line the agent captured from it after the board reported the flash done.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../../runner-agent/src/agent.js';
import { validateConfig } from '../../runner-agent/src/config.js';
import { createLogger, formatRecord, silentLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { openConsole } from '../../runner-agent/src/console/capture.js';
import { connectAgent, type AgentConnection } from '../../src/protocol/client.js';
import type { AgentMessage } from '../../src/protocol/messages.js';
import { macDir } from '../../src/protocol/tftp-names.js';
import { getPiModel } from '../../runner-agent/src/image/models.js';
import { makeCard } from '../../runner-agent/src/make-card.js';
import { qemuAgentSettings } from './agent-scenario.js';
import {
  BOOT_PARTITION_OFFSET,
  CARD_BOOTCMD,
  DHCP_ONLY_ENV,
  INIT_BANNER,
  PREPARE_KERNEL_TIMEOUT_MS,
  STAGE1_ENV_FILE,
  buildTestOsImage,
  listBootPartition,
  newMarker,
  readBootFile,
  stage1ScriptImage,
  testKernelGate,
} from './os-image.js';
import { killAllQemuBoards, startQemuBoard, type QemuBoard } from './qemu-board.js';
import { BUILD_TIMEOUT_MS, qemuTestGate } from './test-uboot.js';

const uboot = await qemuTestGate('the whole loop: the agent flashes a booted board, which boots the new image (QEMU)');
const kernelGate = await testKernelGate();
const run = uboot.run && kernelGate.run;
const title = uboot.run && !kernelGate.run ? `${uboot.title} (skipped: ${kernelGate.reason})` : uboot.title;

const MiB = 1024 * 1024;
const MAC = '52:54:00:10:0b:07';
const TOKEN = 'qemu-loop-test-token-0123456789abcdef';
const TARGET = 'qemu-loop';
const CARD_SIZE = 64 * MiB;
/** Image B: 4 MiB of partition-table gap + a 24 MiB boot partition (gzip'd kernel, U-Boot, initramfs). */
const IMAGE_B_SIZE = 28 * MiB;
const RUN_TIMEOUT_MS = 240_000;

/** A Raspberry Pi OS-style config.txt: 64-bit kernel8.img with its initramfs. */
const CONFIG_TXT = '# test OS image\narm_64bit=1\ninitramfs initramfs8 followkernel\n';

describe.skipIf(!run)(title, () => {
  let ubootBin = '';
  let kernelGz: Buffer = Buffer.alloc(0);
  let stage1: Buffer = Buffer.alloc(0);
  let stage1Path = '';
  let workDir = '';

  beforeAll(async () => {
    ubootBin = await uboot.ubootBin();
    // gzip'd like Raspberry Pi OS's kernel8.img: smaller to flash, and stage 1 unpacks it.
    kernelGz = gzipSync(await readFile(await kernelGate.kernel()), { level: 6 });
    stage1 = await stage1ScriptImage();
  }, BUILD_TIMEOUT_MS + PREPARE_KERNEL_TIMEOUT_MS);

  beforeEach(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-loop-'));
    // Stage 1 from the current boot.cmd (the committed boot.scr may lag behind it in a working tree).
    stage1Path = join(workDir, 'boot.scr');
    await writeFile(stage1Path, stage1);
  });

  afterEach(async () => {
    await killAllQemuBoards();
    await rm(workDir, { recursive: true, force: true });
  });

  /**
   * A Raspberry Pi OS-style test image (no U-Boot, no stage 1), then `make-card` of it: U-Boot,
   * boot.scr and rpi-flash.env injected, config.txt switched to `kernel=u-boot.bin`.
   */
  async function cardFromOsImage(out: string, size: number, marker: string): Promise<void> {
    const raw = `${out}.os`;
    await buildOsImage(raw, size, marker);
    await makeCard({
      image: raw,
      model: getPiModel('arm64'),
      out,
      uboot: ubootBin,
      bootScr: stage1Path,
      now: new Date(0),
    });
    await rm(raw);
  }

  /** A Raspberry Pi OS-style image: kernel8.img, initramfs8, config.txt, cmdline.txt; no U-Boot. */
  async function buildOsImage(out: string, size: number, marker: string): Promise<void> {
    await buildTestOsImage({
      path: out,
      size,
      kernelImage: kernelGz,
      marker,
      ending: 'sleep', // the agent resets the board, as a lab does; nothing powers it off
      env: false,
      extraFiles: { 'config.txt': CONFIG_TXT, 'cmdline.txt': `console=ttyAMA0 panic=-1 rpiflash.image=${marker}\n` },
    });
  }

  it(
    'boots image A, flashes image B through QMP reset + stage 1 + stage 2, then boots B',
    async () => {
      const markerA = newMarker('image-a');
      const markerB = newMarker('image-b');
      const sdImage = join(workDir, 'sd.img');
      const imageB = join(workDir, 'image-b.img');
      await cardFromOsImage(sdImage, CARD_SIZE, markerA);
      await buildOsImage(imageB, IMAGE_B_SIZE, markerB);
      expect((await readBootFile(sdImage, STAGE1_ENV_FILE)).toString()).toMatch(/^rpf_kernel=kernel8\.img$/m);
      const imageBRaw = await readFile(imageB);

      const qmpSocket = join(workDir, 'qmp.sock'); // where startQemuBoard puts it
      const serialSocket = join(workDir, 'serial.sock');
      await writeFile(
        join(workDir, 'targets.csv'),
        `name,mac,ip,reset,model,console\n${TARGET},${MAC},127.0.0.1,qmp:${qmpSocket},arm64,unix:${serialSocket}\n`,
      );
      const config = await validateConfig(
        qemuAgentSettings(TOKEN, {
          flash: { partSize: '4MiB', tftpWindowSize: 8 },
          timeouts: { boardShow: 30, stall: 30, boot: 150 },
          defaultLayout: 'inject',
          uboot: { binaries: { arm64: ubootBin }, bootScr: stage1Path },
        }),
        workDir,
      );
      const records: LogRecord[] = [];
      let agent: RunningAgent | undefined;
      let board: QemuBoard | undefined;
      let conn: AgentConnection | undefined;
      const jobLog: string[] = [];
      try {
        agent = await startAgent(config, { log: createLogger({ level: 'debug', sink: (r) => records.push(r) }) });
        board = await startQemuBoard({
          ubootBin,
          mac: MAC,
          tftpPort: agent.tftp.port,
          sdImage,
          env: DHCP_ONLY_ENV,
          bootcmd: CARD_BOOTCMD,
          timeoutMs: RUN_TIMEOUT_MS,
          workDir,
          serialSocket,
        });
        // Image A is up: stage 1 found no job and booted A's kernel (watched through the same console
        // the agent will read; one reader at a time, so this one closes before the job).
        for (let i = 0; i < 200 && !existsSync(serialSocket); i++) await new Promise((r) => setTimeout(r, 50));
        const watcher = await openConsole({ kind: 'unix', path: serialSocket }, { log: silentLogger });
        const sawA = await watcher.waitFor(new RegExp(`${INIT_BANNER} ${markerA}`), { timeoutMs: 120_000, since: 0 });
        await watcher.close();
        expect(sawA, 'image A booted').not.toBeNull();

        conn = await connectAgent({
          url: agent.url,
          token: TOKEN,
          client: 'qemu-loop-test',
          onEvent: (m: AgentMessage) => void (m.type === 'log' && jobLog.push(`${m.level} ${m.source} ${m.message}`)),
        });
        await conn.lease(TARGET, { holder: 'qemu-loop-test' });
        const sha256 = createHash('sha256').update(imageBRaw).digest('hex');
        await conn.upload({ path: imageB, sha256, size: imageBRaw.length, compression: 'none' });
        const result = await conn.flash({ sha256, bootCheck: `console:${INIT_BANNER} ${markerB}` });
        const jobId = result.job;
        expect(result, jobLog.join('\n')).toMatchObject({ ok: true, code: 'OK' });
        // Only the image's mapped ranges (and the layout's patches) are written: the parts' bytes.
        expect(result.bytesWritten).toBe(result.parts.reduce((sum, p) => sum + p.size, 0));
        expect(result.bytesWritten).toBeLessThanOrEqual(IMAGE_B_SIZE);
        // The console story reached the client: stage 1 ran the job, then found none and booted B.
        const consoleLines = jobLog.filter((l) => l.startsWith('info console ')).join('\n');
        expect(consoleLines).toMatch(new RegExp(`rpi-flash: running ${macDir(MAC)}/flash\\.scr`));
        expect(consoleLines).toMatch(
          new RegExp(`rpi-flash: no job for ${macDir(MAC)} on 10\\.0\\.2\\.2: booting the installed system`),
        );
        expect(consoleLines).toMatch(
          new RegExp(`Kernel command line: console=ttyAMA0 panic=-1 rpiflash\\.image=${markerB}`),
        );
        expect(jobLog.join('\n')).toMatch(new RegExp(`booted: console:.*matched ".*${markerB}`));
        expect(jobLog.join('\n')).toMatch(/layout inject: \d+ patch\(es\)/);
        // The staged folder is gone, and the job's record keeps the console it saw.
        expect((await readdir(config.tftp.root)).filter((n) => !n.startsWith('.'))).toEqual([]);
        expect(await readFile(join(config.stateDir, 'jobs', `${jobId}.console.log`), 'utf8')).toContain(markerB);
      } finally {
        conn?.close();
        await board?.kill();
        await agent?.stop();
        await writeFile(join(workDir, 'agent.log'), records.map(formatRecord).join('\n') + '\n').catch(() => {});
        if (jobLog.length) await writeFile(join(workDir, 'job.log'), jobLog.join('\n') + '\n').catch(() => {});
      }

      // The card now holds image B byte for byte, with U-Boot and stage 1 on its boot partition.
      // Outside the boot partition (the MBR and its gap) the card holds image B exactly as uploaded.
      const card = await readFile(sdImage);
      expect(
        card.subarray(0, BOOT_PARTITION_OFFSET).equals(imageBRaw.subarray(0, BOOT_PARTITION_OFFSET)),
        'card starts with image B',
      ).toBe(true);
      const names = (await listBootPartition(sdImage)).map((n) => n.toLowerCase());
      expect(names).toEqual(
        expect.arrayContaining(['u-boot.bin', 'boot.scr', STAGE1_ENV_FILE, 'kernel8.img', 'initramfs8', 'config.txt']),
      );
      expect((await readBootFile(sdImage, 'u-boot.bin')).equals(await readFile(ubootBin))).toBe(true);
      expect((await readBootFile(sdImage, 'boot.scr')).equals(stage1)).toBe(true);
      expect((await readBootFile(sdImage, 'config.txt')).toString()).toMatch(/^kernel=u-boot\.bin$/m);
      expect(BOOT_PARTITION_OFFSET).toBe(4 * MiB);
    },
    RUN_TIMEOUT_MS + 30_000,
  );
});
