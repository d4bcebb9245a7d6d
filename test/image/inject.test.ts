/**
 * Carrying U-Boot into images the test builds with Debian's tools (sfdisk, mkfs.vfat, mtools,
 * mkfs.ext4), checked with fsck.fat and by reading the files back with mtools.
 */
import { copyFile, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyPatchesToFile, BufferImageReader, type ImageReader } from '../../runner-agent/src/image/disk.js';
import {
  InjectError,
  planInjection,
  planInjectionFrom,
  type InjectOptions,
  type InjectResult,
} from '../../runner-agent/src/image/inject.js';
import { COMMENT_PREFIX, INJECT_BEGIN } from '../../runner-agent/src/image/boot-config.js';
import { countFreeSlots, FatVolume } from '../../runner-agent/src/image/fat.js';
import { findBootPartition, parseMbr } from '../../runner-agent/src/image/mbr.js';
import { SectorOverlay } from '../../runner-agent/src/image/disk.js';
import {
  buildTestImage,
  fsckBoot,
  mtoolsList,
  mtoolsNames,
  mtoolsRead,
  putFiles,
  type TestImage,
} from './build-image.js';
import {
  fakeArm64Image,
  fakeGzipArm64Image,
  fakeUboot,
  fakeZImage,
  PI_OS_CMDLINE,
  PI_OS_CONFIG,
  stage1Script,
} from './fixtures.js';

let dir: string;
const uboot = fakeUboot();
const bootScr = stage1Script();
const opts = (extra: Partial<InjectOptions> = {}): InjectOptions => ({
  ubootBin: uboot,
  bootScr,
  model: 'pi4',
  now: new Date(Date.UTC(2026, 0, 2, 3, 4, 6)),
  ...extra,
});

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-inject-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Applies the plan to a copy of the image and returns the copy's path. */
async function patchedCopy(image: TestImage, result: InjectResult, name: string): Promise<string> {
  const out = path.join(dir, name);
  await copyFile(image.path, out);
  await applyPatchesToFile(out, result.patches);
  return out;
}

async function expectOnlyBootPartitionChanged(image: TestImage, patched: string, result: InjectResult): Promise<void> {
  let last = -1;
  for (const p of result.patches) {
    expect(p.offset).toBeGreaterThan(last);
    expect(p.offset).toBeGreaterThanOrEqual(image.bootOffset);
    expect(p.offset + p.data.length).toBeLessThanOrEqual(image.bootOffset + image.bootSize);
    last = p.offset + p.data.length - 1;
  }
  const a = await readFile(image.path);
  const b = await readFile(patched);
  expect(b.length).toBe(a.length);
  // Everything outside the boot partition (MBR, gap, root file system with its fstab) is identical.
  expect(b.subarray(0, image.bootOffset).equals(a.subarray(0, image.bootOffset))).toBe(true);
  expect(b.subarray(image.bootOffset + image.bootSize).equals(a.subarray(image.bootOffset + image.bootSize))).toBe(
    true,
  );
}

/** The boot partition's root directory as this project's own reader sees it. */
async function rootDirectory(file: string) {
  const reader = new BufferImageReader(await readFile(file));
  const boot = findBootPartition(parseMbr(await reader.read(0, 512), reader.size));
  const vol = await FatVolume.open(new SectorOverlay(reader), boot.offset, boot.size);
  return { vol, dir: await vol.root() };
}

async function expectInjectError(p: Promise<unknown>, code: InjectError['code'], message: RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(InjectError);
  expect((err as InjectError).code).toBe(code);
  expect((err as InjectError).message).toMatch(message);
}

describe('a Raspberry Pi OS-like image (FAT32 boot, ext4 root)', () => {
  let image: TestImage;
  let result: InjectResult;
  let patched: string;
  const kernel = fakeGzipArm64Image();
  const initramfs = Buffer.from('070701 fake initramfs\n'.repeat(100));

  beforeAll(async () => {
    image = await buildTestImage(dir, 'pios.img', {
      fat: 32,
      bootMiB: 40,
      rootMiB: 16,
      ext4: true,
      files: {
        'config.txt': PI_OS_CONFIG,
        'cmdline.txt': PI_OS_CMDLINE,
        'kernel8.img': kernel,
        initramfs8: initramfs,
        'kernel7l.img': fakeZImage(),
        'bcm2711-rpi-4-b.dtb': Buffer.alloc(5000, 1),
      },
    });
    result = await planInjection(image.path, image.size, opts());
    patched = await patchedCopy(image, result, 'pios-patched.img');
  });

  it('leaves a clean FAT32 file system (fsck.fat -n)', async () => {
    const fsck = await fsckBoot(image, patched);
    expect(fsck.output).not.toMatch(/differ|wrong|invalid|corrected/i);
    expect(fsck.clean).toBe(true);
    expect(result.bootPartition).toMatchObject({
      index: 1,
      type: 0x0c,
      fat: 'FAT32',
      offset: image.bootOffset,
      size: image.bootSize,
    });
  });

  it('puts U-Boot and stage 1 in, byte for byte, under their long names', async () => {
    expect((await mtoolsRead(patched, image.bootOffset, 'u-boot.bin')).equals(uboot)).toBe(true);
    expect((await mtoolsRead(patched, image.bootOffset, 'boot.scr')).equals(bootScr)).toBe(true);
    const names = await mtoolsNames(patched, image.bootOffset);
    expect(names).toEqual(
      expect.arrayContaining(['u-boot.bin', 'boot.scr', 'rpi-flash.env', 'config.txt', 'kernel8.img']),
    );
    expect(await mtoolsList(patched, image.bootOffset)).toMatch(/RPI-FL~1 ENV\s+\d+.*rpi-flash\.env/);
    expect(result.files).toEqual(['u-boot.bin', 'boot.scr', 'rpi-flash.env', 'config.txt']);
  });

  it('writes the env file stage 1 imports: kernel, initramfs (auto_initramfs), mode, command line', async () => {
    const env = (await mtoolsRead(patched, image.bootOffset, 'rpi-flash.env')).toString();
    expect(env).toContain('\nrpf_kernel=kernel8.img\n');
    expect(env).toContain('\nrpf_initrd=initramfs8\n');
    expect(env).toContain('\nrpf_arm64=1\n');
    expect(env).toContain('\nrpf_kernel_comp=gzip\n');
    expect(env).toContain(`\nrpf_bootargs=${PI_OS_CMDLINE.trim()}\n`);
    expect(env).toContain('\nrpf_bootpart=1\n');
    expect(result.env).toMatchObject({
      rpf_kernel: 'kernel8.img',
      rpf_initrd: 'initramfs8',
      rpf_arm64: '1',
      rpf_bootargs: PI_OS_CMDLINE.trim(),
    });
  });

  it('rewrites config.txt to start U-Boot and keeps every other line verbatim', async () => {
    const config = (await mtoolsRead(patched, image.bootOffset, 'config.txt')).toString();
    expect(config.startsWith(PI_OS_CONFIG)).toBe(true); // no kernel/initramfs lines to turn off here
    const block = config.slice(PI_OS_CONFIG.length);
    expect(block).toMatch(/^# >>> rpi-flash/);
    expect(block).toContain('\n[all]\nkernel=u-boot.bin\narm_64bit=1\n');
    expect(block).toContain('\nenable_uart=1\n');
    expect(block).toMatch(/# <<< rpi-flash\n$/);
  });

  it('changes nothing outside the boot partition: MBR, PARTUUIDs, root file system and its fstab', async () => {
    await expectOnlyBootPartitionChanged(image, patched, result);
  });

  it('reads only the MBR and the boot partition, far less than the image', async () => {
    const file = await readFile(image.path);
    const reads: [number, number][] = [];
    const recording: ImageReader = {
      size: file.length,
      read: async (offset, length) => {
        reads.push([offset, length]);
        return new BufferImageReader(file).read(offset, length);
      },
    };
    await planInjectionFrom(recording, opts());
    for (const [offset, length] of reads) {
      const inMbr = offset + length <= 512;
      const inBoot = offset >= image.bootOffset && offset + length <= image.bootOffset + image.bootSize;
      expect(inMbr || inBoot, `read ${offset}+${length}`).toBe(true);
    }
    expect(result.bytesRead).toBeLessThan(image.bootSize / 4);
  });

  it('injects an already injected image (a make-card output) to the same result, not twice', async () => {
    const again = await planInjection(patched, image.size, opts({ ubootBin: fakeUboot(700 * 1024) }));
    const twice = await patchedCopy({ ...image, path: patched }, again, 'pios-twice.img');
    expect((await fsckBoot(image, twice)).clean).toBe(true);
    const config1 = (await mtoolsRead(patched, image.bootOffset, 'config.txt')).toString();
    const config2 = (await mtoolsRead(twice, image.bootOffset, 'config.txt')).toString();
    expect(config2).toBe(config1);
    expect((await mtoolsRead(twice, image.bootOffset, 'u-boot.bin')).length).toBe(700 * 1024);
    expect((await mtoolsNames(twice, image.bootOffset)).filter((n) => n === 'u-boot.bin')).toHaveLength(1);
    expect(again.env).toEqual(result.env);
  });
});

describe('other layouts', () => {
  it('FAT16: explicit kernel= and initramfs lines in model sections, a 32-bit board', async () => {
    const config =
      'disable_splash=1\r\n' +
      '[pi3]\r\n' +
      'kernel=kernel7.img\r\n' +
      '[pi4]\r\n' +
      'kernel=zImage-custom\r\n' +
      'initramfs initrd.img followkernel\r\n' +
      '[all]\r\n' +
      'gpu_mem=64\r\n';
    const image = await buildTestImage(dir, 'fat16.img', {
      fat: 16,
      bootMiB: 20,
      rootMiB: 4,
      files: {
        'config.txt': config,
        'cmdline.txt': 'root=/dev/mmcblk0p2 rw',
        'zImage-custom': fakeZImage(),
        'kernel7.img': fakeZImage(),
        'initrd.img': Buffer.alloc(3000, 7),
      },
    });
    const result = await planInjection(
      image.path,
      image.size,
      opts({ model: 'pi4-32', ubootBin: fakeUboot(400 * 1024) }),
    );
    const patched = await patchedCopy(image, result, 'fat16-patched.img');
    expect(result.bootPartition.fat).toBe('FAT16');
    expect((await fsckBoot(image, patched)).clean).toBe(true);
    expect(result.env).toMatchObject({
      rpf_kernel: 'zImage-custom',
      rpf_initrd: 'initrd.img',
      rpf_arm64: '0',
      rpf_bootargs: 'root=/dev/mmcblk0p2 rw',
    });
    const out = (await mtoolsRead(patched, image.bootOffset, 'config.txt')).toString();
    expect(
      out.startsWith(
        'disable_splash=1\r\n' +
          '[pi3]\r\n' +
          `${COMMENT_PREFIX}kernel=kernel7.img\r\n` +
          '[pi4]\r\n' +
          `${COMMENT_PREFIX}kernel=zImage-custom\r\n` +
          `${COMMENT_PREFIX}initramfs initrd.img followkernel\r\n` +
          '[all]\r\n' +
          'gpu_mem=64\r\n' +
          INJECT_BEGIN,
      ),
    ).toBe(true);
    expect(out).toContain('\r\nkernel=u-boot.bin\r\narm_64bit=0\r\n');
    await expectOnlyBootPartitionChanged(image, patched, result);
  });

  it('FAT12: a small boot partition, the firmware default kernel for a Pi 3 in 32-bit mode', async () => {
    const image = await buildTestImage(dir, 'fat12.img', {
      fat: 12,
      bootMiB: 2,
      rootMiB: 1,
      startMiB: 1,
      files: { 'kernel7.img': fakeZImage(300 * 1024), 'cmdline.txt': 'console=ttyAMA0 root=/dev/mmcblk0p2' },
    });
    const result = await planInjection(
      image.path,
      image.size,
      opts({ model: 'pi3-32', ubootBin: fakeUboot(500 * 1024) }),
    );
    const patched = await patchedCopy(image, result, 'fat12-patched.img');
    expect(result.bootPartition.fat).toBe('FAT12');
    const fsck = await fsckBoot(image, patched);
    expect(fsck.output).not.toMatch(/differ|wrong|invalid/i);
    expect(fsck.clean).toBe(true);
    expect(result.env).toMatchObject({ rpf_kernel: 'kernel7.img', rpf_arm64: '0' });
    expect(result.env.rpf_initrd).toBeUndefined();
    // No config.txt before: one is created holding only the block.
    const config = (await mtoolsRead(patched, image.bootOffset, 'config.txt')).toString();
    expect(config).toMatch(/^# >>> rpi-flash[^\n]*\n[^\n]*\n\[all\]\nkernel=u-boot\.bin\narm_64bit=0\n/);
    expect((await mtoolsRead(patched, image.bootOffset, 'u-boot.bin')).length).toBe(500 * 1024);
  });

  it('FAT32 with one-sector clusters: a full root directory grows by a cluster', async () => {
    const files: Record<string, string | Buffer> = { 'config.txt': 'arm_64bit=1\n', 'kernel8.img': fakeArm64Image() };
    for (let i = 0; i < 14; i++) files[`overlay-number-${i}.dtbo`] = `overlay ${i}`;
    const image = await buildTestImage(dir, 'fat32-dir.img', {
      fat: 32,
      bootMiB: 40,
      rootMiB: 0,
      sectorsPerCluster: 1,
      files,
    });
    // Fill the root directory's last cluster exactly, with one-slot 8.3 names.
    const before = await rootDirectory(image.path);
    const filler: Record<string, string> = {};
    for (let i = 0; i < countFreeSlots(before.dir); i++) filler[`FILL${i}.TXT`] = '';
    await putFiles(image.path, image.bootOffset, filler);
    const full = await rootDirectory(image.path);
    expect(countFreeSlots(full.dir)).toBe(0);

    const result = await planInjection(image.path, image.size, opts());
    const patched = await patchedCopy(image, result, 'fat32-dir-patched.img');
    expect((await fsckBoot(image, patched)).clean).toBe(true);
    expect((await rootDirectory(patched)).dir.clusters!.length).toBeGreaterThan(full.dir.clusters!.length);
    const names = await mtoolsNames(patched, image.bootOffset);
    for (const n of [...Object.keys(files), ...Object.keys(filler), 'u-boot.bin', 'boot.scr', 'rpi-flash.env'])
      expect(names).toContain(n);
  });

  it('follows include files and turns off their kernel lines too', async () => {
    const image = await buildTestImage(dir, 'include.img', {
      fat: 32,
      bootMiB: 34,
      rootMiB: 0,
      files: {
        'config.txt': 'include syscfg.txt\ninclude usercfg.txt\n',
        'syscfg.txt': 'arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\ncmdline=cmd.txt\n',
        'usercfg.txt': '# user settings\n',
        vmlinuz: fakeArm64Image(),
        'initrd.img': 'x',
        'cmd.txt': 'root=LABEL=writable\n',
      },
    });
    const result = await planInjection(image.path, image.size, opts());
    const patched = await patchedCopy(image, result, 'include-patched.img');
    const fsck = await fsckBoot(image, patched);
    expect(fsck.output).not.toMatch(/differ|wrong|invalid|corrected/i);
    expect(fsck.clean).toBe(true);
    expect(result.env).toMatchObject({
      rpf_kernel: 'vmlinuz',
      rpf_initrd: 'initrd.img',
      rpf_arm64: '1',
      rpf_bootargs: 'root=LABEL=writable',
      rpf_kernel_comp: 'none',
    });
    expect(result.files).toContain('syscfg.txt');
    expect((await mtoolsRead(patched, image.bootOffset, 'syscfg.txt')).toString()).toBe(
      'arm_64bit=1\n' +
        `${COMMENT_PREFIX}kernel=vmlinuz\n` +
        `${COMMENT_PREFIX}initramfs initrd.img followkernel\n` +
        'cmdline=cmd.txt\n',
    );
    expect((await mtoolsRead(patched, image.bootOffset, 'usercfg.txt')).toString()).toBe('# user settings\n');
  });

  it('adds static network values for stage 1 to the env file', async () => {
    const image = await buildTestImage(dir, 'extra.img', {
      fat: 16,
      bootMiB: 16,
      rootMiB: 0,
      files: { 'kernel8.img': fakeArm64Image() },
    });
    const result = await planInjection(
      image.path,
      image.size,
      opts({ extraEnv: { rpf_ipaddr: '10.0.0.5', rpf_serverip: '10.0.0.1' }, envName: 'lab.env' }),
    );
    const patched = await patchedCopy(image, result, 'extra-patched.img');
    const env = (await mtoolsRead(patched, image.bootOffset, 'lab.env')).toString();
    expect(env).toContain('\nrpf_ipaddr=10.0.0.5\nrpf_serverip=10.0.0.1\n');
  });
});

describe('bad images are refused with a stable code', () => {
  let good: TestImage;
  beforeAll(async () => {
    good = await buildTestImage(dir, 'good.img', {
      fat: 32,
      bootMiB: 34,
      rootMiB: 8,
      files: { 'config.txt': 'arm_64bit=1\n', 'kernel8.img': fakeArm64Image() },
    });
  });

  it('not a disk image: random bytes, a compressed file, a bare file system', async () => {
    const junk = path.join(dir, 'junk.img');
    await writeFile(junk, Buffer.alloc(64 * 1024, 0x41));
    await expectInjectError(planInjection(junk, 64 * 1024, opts()), 'IMAGE_NOT_DISK', /no MBR signature/);
    const gz = path.join(dir, 'image.img.gz');
    await writeFile(gz, Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), Buffer.alloc(4096)]));
    await expectInjectError(planInjection(gz, 4100, opts()), 'IMAGE_NOT_DISK', /gzip-compressed: decompress it first/);
    const tiny = path.join(dir, 'tiny.img');
    await writeFile(tiny, 'hello');
    await expectInjectError(planInjection(tiny, 5, opts()), 'IMAGE_NOT_DISK', /too short/);
    // The boot partition alone (a FAT volume without a partition table).
    const bare = path.join(dir, 'bare.img');
    const fh = await open(good.path, 'r');
    const buf = Buffer.alloc(good.bootSize);
    await fh.read(buf, 0, buf.length, good.bootOffset);
    await fh.close();
    await writeFile(bare, buf);
    await expectInjectError(planInjection(bare, buf.length, opts()), 'IMAGE_NOT_DISK', /bare FAT file system/);
  });

  it('truncated: the partition table points past the end of the file', async () => {
    const cut = path.join(dir, 'cut.img');
    const full = await readFile(good.path);
    await writeFile(cut, full.subarray(0, good.rootOffset + 1024 * 1024));
    await expectInjectError(
      planInjection(cut, good.rootOffset + 1024 * 1024, opts()),
      'IMAGE_TRUNCATED',
      /partition 2 .* ends at byte \d+ but the image has only/,
    );
    // A file shorter than the size it is said to have, cut inside the boot partition's FAT.
    const cutBoot = path.join(dir, 'cut-boot.img');
    await writeFile(cutBoot, full.subarray(0, good.bootOffset + 100 * 1024));
    await expectInjectError(
      planInjection(cutBoot, full.length, opts()),
      'IMAGE_TRUNCATED',
      /ends at byte \d+, before byte \d+ that the image needs/,
    );
  });

  it('GPT: a clear "not supported yet"', async () => {
    const gpt = path.join(dir, 'gpt.img');
    const fh = await open(gpt, 'w');
    await fh.truncate(8 * 1024 * 1024);
    await fh.close();
    const { execFileSync } = await import('node:child_process');
    execFileSync('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', gpt], {
      input: 'label: gpt\nsize=4MiB, type=uefi\n',
    });
    await expectInjectError(
      planInjection(gpt, 8 * 1024 * 1024, opts()),
      'IMAGE_GPT_UNSUPPORTED',
      /GPT images are not supported yet/,
    );
  });

  it('no FAT partition, or a FAT-typed partition without a FAT file system', async () => {
    const linuxOnly = path.join(dir, 'linux-only.img');
    await copyFile(good.path, linuxOnly);
    const fh = await open(linuxOnly, 'r+');
    await fh.write(Buffer.from([0x83]), 0, 1, 446 + 4); // partition 1 becomes type Linux
    await fh.close();
    await expectInjectError(
      planInjection(linuxOnly, good.size, opts()),
      'IMAGE_NO_BOOT_PARTITION',
      /no FAT boot partition.*1: type 0x83, 2: type 0x83/,
    );
    const wiped = path.join(dir, 'wiped.img');
    await copyFile(good.path, wiped);
    const w = await open(wiped, 'r+');
    await w.write(Buffer.alloc(512), 0, 512, good.bootOffset);
    await w.close();
    await expectInjectError(
      planInjection(wiped, good.size, opts()),
      'IMAGE_NO_BOOT_PARTITION',
      /holds no valid FAT file system/,
    );
  });

  it('a boot partition too small for U-Boot: sizes in the message', async () => {
    const small = await buildTestImage(dir, 'small.img', {
      fat: 12,
      bootMiB: 1,
      rootMiB: 1,
      startMiB: 1,
      files: { 'kernel8.img': fakeArm64Image(400 * 1024) },
    });
    await expectInjectError(
      planInjection(small.path, small.size, opts()),
      'BOOT_PARTITION_FULL',
      /has \d+\.\d KiB free.*u-boot\.bin 600\.0 KiB.*short/,
    );
  });

  it('a FAT16 root directory without free entries', async () => {
    // A small fixed root directory (mkfs may round it up to fill its sectors), filled with one-slot
    // 8.3 names until two entries are left: the four new files need eight.
    const image = await buildTestImage(dir, 'rootfull.img', {
      fat: 16,
      bootMiB: 16,
      rootMiB: 0,
      rootEntries: 32,
      files: { 'KERNEL8.IMG': fakeArm64Image() },
    });
    const { dir: root } = await rootDirectory(image.path);
    const filler: Record<string, string> = {};
    for (let i = 0; i < countFreeSlots(root) - 2; i++) filler[`F${i}.TXT`] = 'x';
    await putFiles(image.path, image.bootOffset, filler);
    await expectInjectError(
      planInjection(image.path, image.size, opts()),
      'BOOT_PARTITION_FULL',
      new RegExp(`FAT16 root directory is full: 8 entries are needed .*, 2 of ${root.slotCount} are free`),
    );
  });

  it(
    'config.txt directives that change what is loaded: ' +
      'os_prefix, kernel_address, unevaluable sections, missing kernel',
    async () => {
      const cases: [string, Record<string, string | Buffer>, RegExp][] = [
        ['os_prefix=new/\n', {}, /config\.txt line 1 "os_prefix=new\/": os_prefix moves/],
        ['arm_64bit=1\nkernel_address=0x200000\n', {}, /line 2 "kernel_address=0x200000"/],
        [
          '[EDID=VSC-TD2220]\nkernel=other.img\n[all]\n',
          { 'other.img': fakeArm64Image() },
          /line 2 "kernel=other\.img".*\[EDID=VSC-TD2220\]/,
        ],
        ['kernel=missing.img\n', {}, /names kernel missing\.img, which is not on the boot partition/],
        ['kernel=uboot_rpi_4.bin\n', { 'uboot_rpi_4.bin': 'x' }, /already starts its own U-Boot/],
        ['include nothere.txt\n', {}, /included file nothere\.txt is not on the boot partition/],
      ];
      let n = 0;
      for (const [config, extra, message] of cases) {
        const image = await buildTestImage(dir, `cfg-${n++}.img`, {
          fat: 16,
          bootMiB: 16,
          rootMiB: 0,
          files: { 'config.txt': config, 'kernel8.img': fakeArm64Image(), ...extra },
        });
        await expectInjectError(planInjection(image.path, image.size, opts()), 'BOOT_CONFIG_UNSUPPORTED', message);
      }
    },
    120_000,
  );

  it('a model section without a model is refused, with the model it is accepted', async () => {
    const image = await buildTestImage(dir, 'modelsec.img', {
      fat: 16,
      bootMiB: 16,
      rootMiB: 0,
      files: {
        'config.txt': '[pi3]\nkernel=k3.img\n[pi4]\nkernel=k4.img\n[all]\n',
        'k3.img': fakeArm64Image(),
        'k4.img': fakeArm64Image(),
      },
    });
    await expectInjectError(
      planInjection(image.path, image.size, opts({ model: undefined })),
      'BOOT_CONFIG_UNSUPPORTED',
      /\[pi3\].*unknown board model/,
    );
    expect((await planInjection(image.path, image.size, opts({ model: 'pi3' }))).env.rpf_kernel).toBe('k3.img');
    expect((await planInjection(image.path, image.size, opts({ model: 'pi4' }))).env.rpf_kernel).toBe('k4.img');
  });

  it('a 32-bit image for a 64-bit U-Boot', async () => {
    const image = await buildTestImage(dir, 'armhf.img', {
      fat: 16,
      bootMiB: 16,
      rootMiB: 0,
      files: { 'config.txt': 'arm_64bit=0\n', 'kernel7l.img': fakeZImage() },
    });
    await expectInjectError(
      planInjection(image.path, image.size, opts({ model: 'pi4' })),
      'BOOT_CONFIG_UNSUPPORTED',
      /32-bit kernel \(kernel7l\.img, ARM zImage\).*use model pi4-32/,
    );
  });
});
