/**
 * Issue 10 item 2: the virt test U-Boot stores `crc32`'s result as every Debian Pi build does —
 * natively, a little-endian ulong (8 bytes on arm64) — because build-test-uboot.sh leaves out what
 * sends `crc32` down common/hash.c's multi-hash path (SHA256/384/512, CRC32_VERIFY, CMD_HASH,
 * CMD_SHA1SUM, FIT). Proved with the calibration line of a generated stage-2 script: on this build
 * it must choose not to byte-swap, as it does on the Pi builds (pi-builds.test.ts).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrationCrc, generateStage2Script } from '../../runner-agent/src/board/stage2-script.js';
import { JOB, MAC, SECRET, stageParts, testImage } from '../board/flash-harness.js';
import { calibrationLine } from './pi-stage2.js';
import { startQemuBoard, withConsoleOnFailure } from './qemu-board.js';
import { qemuTestGate, useQemuWorkspace } from './test-uboot.js';

const gate = await qemuTestGate('crc32 on the virt test U-Boot');

/** Stage 2's RAM on the virt machine, as agent-flash.test.ts configures the agent. */
const CRC_ADDR = 0x47e0_0000;
const BOOT_TIMEOUT_MS = 60_000;

describe.skipIf(!gate.run)(gate.title, () => {
  const qemu = useQemuWorkspace(gate, {
    prefix: 'rpi-flash-crc32-',
    prepare: (dir) => writeFile(join(dir, 'sd.img'), Buffer.alloc(1024 * 1024)),
  });

  it("stores the result natively, so stage 2's calibration chooses not to byte-swap", async () => {
    const script = generateStage2Script({
      jobId: JOB,
      mac: MAC,
      reportSecret: SECRET,
      parts: stageParts(testImage(4096), 4096).parts,
      retries: 2,
      loadAddr: 0x4800_0000,
      crcAddr: CRC_ADDR,
      beaconAddr: 0x47f0_0000,
      mmcDev: 0,
    });
    const board = await startQemuBoard({
      ubootBin: qemu.ubootBin,
      mac: MAC,
      tftpPort: 9, // never used: no TFTP command runs
      sdImage: join(qemu.workDir, 'sd.img'),
      bootcmd: `${calibrationLine(script)}; printenv rpf_fix; md.b 0x${CRC_ADDR.toString(16)} 8; poweroff`,
      timeoutMs: BOOT_TIMEOUT_MS,
      workDir: qemu.workDir,
    });
    await withConsoleOnFailure(board, async () => {
      expect(await board.waitForExit(BOOT_TIMEOUT_MS)).toBe(0);
      const le = Buffer.alloc(8);
      le.writeUInt32LE(calibrationCrc());
      const bytes = [...le].map((b) => b.toString(16).padStart(2, '0')).join(' ');
      expect(board.console()).toContain(`${CRC_ADDR.toString(16)}: ${bytes}`);
      expect(board.console()).toMatch(/^rpf_fix=true\r?$/m);
    });
  });
});
