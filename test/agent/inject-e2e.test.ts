/**
 * The inject layout on the simulated lab: the agent carries U-Boot, stage 1 and the env file into
 * the image's boot partition while staging; the card receives the patched image, the rest of the
 * image stays as uploaded; bad images are refused before the board is reset.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startLab, sha256File, type Lab } from '../support/lab.js';
import { buildTestImage, fsckBoot, mtoolsNames, mtoolsRead } from '../image/build-image.js';
import { fakeGzipArm64Image, fakeUboot, PI_OS_CMDLINE, PI_OS_CONFIG, stage1Script } from '../image/fixtures.js';

let lab: Lab | undefined;
let dir: string | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function injectLab(reset = 'sim') {
  dir = await mkdtemp(path.join(os.tmpdir(), 'inject-e2e-'));
  const ubootBin = path.join(dir, 'u-boot.bin');
  const bootScr = path.join(dir, 'boot.scr');
  await writeFile(ubootBin, fakeUboot());
  await writeFile(bootScr, stage1Script());
  lab = await startLab({
    boards: [{ name: 'pi4-inj', mac: '02:00:00:00:02:01', reset }],
    config: {
      defaultLayout: 'inject',
      uboot: { binaries: { pi4: ubootBin }, bootScr, defaultModel: 'pi4' },
      flash: { partSize: '2MiB' },
    },
  });
  return { ubootBin, bootScr };
}

async function upload(l: Lab, file: string) {
  const conn = await l.connect();
  await conn.lease('pi4-inj');
  const sha256 = await sha256File(file);
  await conn.upload({ path: file, sha256, size: (await stat(file)).size, compression: 'none' });
  return { conn, sha256 };
}

describe('inject layout on the simulated lab', () => {
  it('writes the image with U-Boot, stage 1 and the env file in its boot partition; nothing else changes', async () => {
    const { ubootBin, bootScr } = await injectLab();
    const image = await buildTestImage(dir!, 'os.img', {
      fat: 32,
      bootMiB: 40,
      rootMiB: 8,
      files: {
        'config.txt': PI_OS_CONFIG,
        'cmdline.txt': PI_OS_CMDLINE,
        'kernel8.img': fakeGzipArm64Image(),
        initramfs8: Buffer.alloc(4096, 1),
      },
    });
    const original = await readFile(image.path);
    const { conn, sha256 } = await upload(lab!, image.path);
    const result = await conn.flash({ sha256, bootCheck: 'none' });
    expect(result.code, result.message).toBe('OK');
    const card = (await readFile(path.join(lab!.agent.config.stateDir, 'sim', 'pi4-inj.card'))).subarray(0, image.size);
    const cardFile = path.join(dir!, 'card.img');
    await writeFile(cardFile, card);
    // Outside the boot partition, byte for byte the upload (partition table, PARTUUIDs, root fs).
    expect(card.subarray(0, image.bootOffset).equals(original.subarray(0, image.bootOffset))).toBe(true);
    expect(card.subarray(image.rootOffset).equals(original.subarray(image.rootOffset))).toBe(true);
    // Inside, a clean FAT holding the carried files.
    expect((await fsckBoot(image, cardFile)).clean).toBe(true);
    const names = (await mtoolsNames(cardFile, image.bootOffset)).map((n) => n.toLowerCase());
    expect(names).toEqual(
      expect.arrayContaining(['u-boot.bin', 'boot.scr', 'rpi-flash.env', 'kernel8.img', 'config.txt']),
    );
    expect((await mtoolsRead(cardFile, image.bootOffset, 'u-boot.bin')).equals(await readFile(ubootBin))).toBe(true);
    expect((await mtoolsRead(cardFile, image.bootOffset, 'boot.scr')).equals(await readFile(bootScr))).toBe(true);
    expect((await mtoolsRead(cardFile, image.bootOffset, 'config.txt')).toString()).toMatch(/^kernel=u-boot\.bin$/m);
    expect((await mtoolsRead(cardFile, image.bootOffset, 'rpi-flash.env')).toString()).toMatch(
      /^rpf_kernel=kernel8\.img$/m,
    );
    // The parts the board verified carry the patched bytes' CRCs (the board checked them).
    expect(result.parts.every((p) => p.status === 'ok')).toBe(true);
  });

  it('refuses an image that is not a disk image before the board is touched', async () => {
    await injectLab('sim:no-show');
    const file = path.join(dir!, 'blob.img');
    await writeFile(file, Buffer.alloc(3 * 1024 * 1024, 0x42));
    const { conn, sha256 } = await upload(lab!, file);
    const result = await conn.flash({ sha256, bootCheck: 'none' });
    expect(result).toMatchObject({ ok: false, code: 'IMAGE_NOT_DISK' });
    // The job never reached the reset: no reset phase timing, and nothing staged is left.
    expect(result.timings.reset).toBeUndefined();
    expect(await lab!.tftpFolders()).toEqual([]);
  });

  it("names a missing U-Boot build for the target's model as a lab problem", async () => {
    await injectLab();
    const image = await buildTestImage(dir!, 'os2.img', {
      fat: 32,
      bootMiB: 40,
      rootMiB: 0,
      files: { 'config.txt': PI_OS_CONFIG, 'cmdline.txt': PI_OS_CMDLINE, 'kernel8.img': fakeGzipArm64Image() },
    });
    await rm(path.join(dir!, 'u-boot.bin'));
    const { conn, sha256 } = await upload(lab!, image.path);
    const result = await conn.flash({ sha256, bootCheck: 'none' });
    expect(result.code).toBe('LAB_MISCONFIGURED');
    expect(result.message).toContain('u-boot.bin');
    expect(result.timings.reset).toBeUndefined();
  });
});
