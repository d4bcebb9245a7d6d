/**
 * `make-card`: card images written from raw and compressed OS images built here, and the guards
 * in front of a block device (shown, not mounted, large enough, confirmed), exercised on a real
 * but unattached loop device node with a sysfs tree and mount table of the test's own, so no
 * test ever writes a real disk.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyPatchesToFile } from '../../runner-agent/src/image/disk.js';
import { planInjection } from '../../runner-agent/src/image/inject.js';
import { getPiModel } from '../../runner-agent/src/image/models.js';
import { makeCard, makeCardMain, type MakeCardIo } from '../../runner-agent/src/make-card.js';
import { buildTestImage, fsckBoot, mtoolsRead, type TestImage } from './build-image.js';
import { fakeGzipArm64Image, fakeUboot, PI_OS_CMDLINE, PI_OS_CONFIG, stage1Script } from './fixtures.js';

const NOW = new Date(Date.UTC(2026, 5, 1, 12, 0, 0));
let dir: string;
let image: TestImage;
let ubootFile: string;
let scrFile: string;
let expected: Buffer; // the source image with the injection applied

function capture() {
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (d: Buffer) => (stdout += d.toString()));
  err.on('data', (d: Buffer) => (stderr += d.toString()));
  return { io: { stdout: out, stderr: err }, text: () => ({ stdout, stderr }) };
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-card-'));
  image = await buildTestImage(dir, 'os.img', {
    fat: 16,
    bootMiB: 16,
    rootMiB: 8,
    files: {
      'config.txt': PI_OS_CONFIG,
      'cmdline.txt': PI_OS_CMDLINE,
      'kernel8.img': fakeGzipArm64Image(),
      initramfs8: 'initramfs',
    },
  });
  ubootFile = path.join(dir, 'u-boot.bin');
  scrFile = path.join(dir, 'boot.scr');
  await writeFile(ubootFile, fakeUboot());
  await writeFile(scrFile, stage1Script());
  const plan = await planInjection(image.path, image.size, {
    ubootBin: await readFile(ubootFile),
    bootScr: await readFile(scrFile),
    model: 'pi4',
    now: NOW,
  });
  const copy = path.join(dir, 'expected.img');
  await copyFile(image.path, copy);
  await applyPatchesToFile(copy, plan.patches);
  expected = await readFile(copy);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('make-card to a file', () => {
  const cases = [
    { compression: 'none', name: 'os.img' },
    { compression: 'gz', name: 'os.img.gz' },
    { compression: 'xz', name: 'os.img.xz' },
    { compression: 'zst', name: 'os.img.zst' },
    // By content: a compressed image under a neutral name still decompresses.
    { compression: 'gz', name: 'packed-os.img' },
  ] as const;
  for (const { compression, name } of cases) {
    it(`from ${name} (${compression}): the image plus exactly the injection`, async () => {
      let source = image.path;
      if (compression !== 'none') {
        source = path.join(dir, name);
        const raw = await readFile(image.path);
        const packed =
          compression === 'gz'
            ? gzipSync(raw)
            : execFileSync(compression === 'xz' ? 'xz' : 'zstd', ['-c', '-q', '-T1'], {
                input: raw,
                maxBuffer: 64 * 1024 * 1024,
              });
        await writeFile(source, packed);
      }
      const out = path.join(dir, `card-${name}`);
      const result = await makeCard({
        image: source,
        model: getPiModel('pi4'),
        out,
        uboot: ubootFile,
        bootScr: scrFile,
        now: NOW,
      });
      expect(result.imageSize).toBe(image.size);
      expect((await readFile(out)).equals(expected)).toBe(true);
      expect(existsSync(`${out}.partial`)).toBe(false);
      expect((await fsckBoot(image, out)).clean).toBe(true);
    });
  }

  it('through the CLI, with the project stage 1 by default and static network values', async () => {
    const out = path.join(dir, 'card-cli.img');
    const c = capture();
    const code = await makeCardMain(
      ['--image', image.path, '--model', 'pi4', '--out', out, '--uboot', ubootFile, '--env', 'rpf_serverip=10.0.0.1'],
      c.io,
    );
    expect(c.text().stderr).toBe('');
    expect(code).toBe(0);
    expect(c.text().stdout).toMatch(
      new RegExp(
        String.raw`wrote .*card-cli\.img: .*boot partition 1 \(FAT16\) ` +
          String.raw`now starts U-Boot \(rpi_4\) and stage 1, which boots kernel8\.img`,
      ),
    );
    const projectScr = await readFile(new URL('../../uboot/boot.scr', import.meta.url)).catch(() => undefined);
    const cardScr = await mtoolsRead(out, image.bootOffset, 'boot.scr');
    if (projectScr) expect(cardScr.equals(projectScr)).toBe(true);
    expect(cardScr.subarray(0, 4).toString('hex')).toBe('27051956');
    expect((await mtoolsRead(out, image.bootOffset, 'rpi-flash.env')).toString()).toContain(
      '\nrpf_serverip=10.0.0.1\n',
    );
  });

  it('refuses a bad image with its code and leaves no output behind', async () => {
    const junk = path.join(dir, 'junk.img');
    await writeFile(junk, Buffer.alloc(1024 * 1024, 0x5a));
    const out = path.join(dir, 'card-junk.img');
    const c = capture();
    expect(
      await makeCardMain(
        ['--image', junk, '--model', 'pi4', '--out', out, '--uboot', ubootFile, '--boot-scr', scrFile],
        c.io,
      ),
    ).toBe(1);
    expect(c.text().stderr).toMatch(/no MBR signature.*\[IMAGE_NOT_DISK\]/);
    expect((await readdir(dir)).filter((f) => f.startsWith('card-junk'))).toEqual([]);
  });

  it('refuses, as the action does, an image whose name and content disagree or that it cannot decompress', async () => {
    const run = async (name: string, content: Buffer) => {
      await writeFile(path.join(dir, name), content);
      const c = capture();
      const out = path.join(dir, `card-${name}`);
      const code = await makeCardMain(
        ['--image', path.join(dir, name), '--model', 'pi4', '--out', out, '--uboot', ubootFile, '--boot-scr', scrFile],
        c.io,
      );
      expect(existsSync(out)).toBe(false);
      return { code, stderr: c.text().stderr };
    };
    // A raw image saved under a compressed name: what a failed download looks like.
    expect(await run('os-raw.img.xz', await readFile(image.path))).toEqual({
      code: 1,
      stderr: expect.stringMatching(/os-raw\.img\.xz: the name says xz but the content is not compressed/) as string,
    });
    expect(await run('os.img.bz2', Buffer.from('BZh91AY&SY'))).toEqual({
      code: 1,
      stderr: expect.stringMatching(
        /os\.img\.bz2 is bzip2-compressed; supported images are raw, \.gz, \.xz or \.zst/,
      ) as string,
    });
  });

  it('usage: --help, missing options, unknown model, missing default U-Boot', async () => {
    let c = capture();
    expect(await makeCardMain(['--help'], c.io)).toBe(0);
    expect(c.text().stdout).toMatch(/--model MODEL[\s\S]*pi3-32 .*rpi_3_32b[\s\S]*--yes/);
    c = capture();
    expect(await makeCardMain(['--image', 'x.img'], c.io)).toBe(2);
    expect(c.text().stderr).toMatch(/missing --model, --out/);
    c = capture();
    expect(await makeCardMain(['--image', 'x.img', '--model', 'pi9', '--out', 'y'], c.io)).toBe(2);
    expect(c.text().stderr).toMatch(
      /unknown board model "pi9"; known: pi0w, pi02, pi2, pi3, pi3-32, pi4, pi4-32, arm64/,
    );
    if (!existsSync('/usr/lib/u-boot/rpi_4/u-boot.bin')) {
      c = capture();
      expect(
        await makeCardMain(['--image', image.path, '--model', 'pi4', '--out', path.join(dir, 'never.img')], c.io),
      ).toBe(1);
      expect(c.text().stderr).toMatch(
        /no U-Boot for model pi4 at \/usr\/lib\/u-boot\/rpi_4\/u-boot\.bin: install Debian's u-boot-rpi/,
      );
    }
  });

  it('the agent CLI dispatches make-card', () => {
    const help = execFileSync(process.execPath, ['--import', 'tsx', 'runner-agent/src/cli.ts', 'make-card', '--help'], {
      encoding: 'utf8',
    });
    expect(help).toMatch(/^rpi-flash-agent make-card/);
  });
});

/** An unattached loop device node: a real block device that cannot be written (no backing file). */
function idleLoopDevice(): string | undefined {
  const idle = () => {
    let names: string[];
    try {
      names = readdirSync('/sys/class/block').filter((n) => /^loop\d+$/.test(n));
    } catch {
      return undefined; // no sysfs
    }
    return names.find((name) => {
      try {
        return readFileSync(`/sys/class/block/${name}/size`, 'utf8').trim() === '0' && existsSync(`/dev/${name}`);
      } catch {
        return false; // gone meanwhile
      }
    });
  };
  const found = idle();
  if (found || process.getuid?.() !== 0) return found;
  // Root may have the kernel add a free one (util-linux's losetup asks /dev/loop-control).
  try {
    execFileSync('losetup', ['-f'], { stdio: 'ignore' });
  } catch {
    return undefined; // no loop driver or no losetup
  }
  return idle();
}

const loop = idleLoopDevice();
const inCi = Boolean(process.env.CI);
const noLoop =
  'no idle loop device (a /dev/loopN with nothing attached; as root, "losetup -f" from util-linux adds one)';

// Said in the name when the tests skip; in CI they run, and fail without a loop device.
describe.skipIf(!loop && !inCi)(
  `make-card to a block device (the idle ${loop ?? 'loop'} node, a fake sysfs)` +
    (loop || inCi ? '' : ` (skipped: ${noLoop})`),
  () => {
    beforeAll(() => {
      if (!loop) throw new Error(`CI runs the block-device tests of make-card, but there is ${noLoop}`);
    });
    let io: Omit<MakeCardIo, 'stdin' | 'stdout' | 'stderr'>;
    const devPath = `/dev/${loop}`;

    /** A sysfs tree describing the device as a 1 GiB card with one partition, and a mount table. */
    async function fakeSystem(o: { sizeBytes?: number; mounted?: boolean; partition?: boolean }) {
      const sysRoot = await mkdtemp(path.join(dir, 'sys-'));
      const block = path.join(sysRoot, 'block', loop!);
      await mkdir(path.join(block, 'device'), { recursive: true });
      await mkdir(path.join(block, `${loop}p1`), { recursive: true });
      await mkdir(path.join(sysRoot, 'class', 'block', loop!), { recursive: true });
      const sectors = String((o.sizeBytes ?? 1024 * 1024 * 1024) / 512);
      await writeFile(path.join(sysRoot, 'class', 'block', loop!, 'size'), sectors);
      if (o.partition) await writeFile(path.join(sysRoot, 'class', 'block', loop!, 'partition'), '1');
      await writeFile(path.join(block, 'size'), sectors);
      await writeFile(path.join(block, 'removable'), '1');
      await writeFile(path.join(block, 'device', 'model'), 'Test Card Reader  \n');
      await writeFile(path.join(block, 'device', 'vendor'), 'Acme');
      await writeFile(path.join(block, `${loop}p1`, 'partition'), '1');
      await writeFile(path.join(block, `${loop}p1`, 'size'), String(512 * 1024));
      const mountsFile = path.join(sysRoot, 'mounts');
      await writeFile(
        mountsFile,
        `proc /proc proc rw 0 0\n${o.mounted ? `/dev/${loop}p1 /media/card\\040boot vfat rw 0 0\n` : ''}`,
      );
      const swapsFile = path.join(sysRoot, 'swaps');
      await writeFile(swapsFile, 'Filename Type Size Used Priority\n');
      io = { sysRoot, mountsFile, swapsFile };
    }

    const args = (extra: string[] = [], source = image.path) => [
      '--image',
      source,
      '--model',
      'pi4',
      '--out',
      devPath,
      '--uboot',
      ubootFile,
      '--boot-scr',
      scrFile,
      ...extra,
    ];

    it('shows the device and refuses without a terminal to confirm on', async () => {
      await fakeSystem({});
      const c = capture();
      const stdin = new PassThrough();
      expect(await makeCardMain(args(), { ...io, ...c.io, stdin })).toBe(1);
      const { stdout, stderr } = c.text();
      expect(stdout).toContain(
        `Device ${devPath} (${loop}): 1.0 GiB, Acme Test Card Reader, removable\n  ${loop}p1: 256.0 MiB\n`,
      );
      expect(stdout).toMatch(/Write os\.img \(28\.0 MiB, U-Boot rpi_4\) to \/dev\/loop\d\? Everything on it is lost/);
      expect(stderr).toMatch(/not confirmed: standard input is not a terminal.*--yes.*Nothing was written/);
    });

    it('asks on the terminal and takes anything but y as no', async () => {
      await fakeSystem({});
      const c = capture();
      const stdin = Object.assign(new PassThrough(), { isTTY: true });
      stdin.end('n\n');
      expect(await makeCardMain(args(), { ...io, ...c.io, stdin })).toBe(1);
      expect(c.text().stderr).toMatch(/not confirmed: nothing was written to \/dev\/loop\d/);
    });

    it('refuses a mounted device even with --yes', async () => {
      await fakeSystem({ mounted: true });
      const c = capture();
      expect(await makeCardMain(args(['--yes']), { ...io, ...c.io, stdin: new PassThrough() })).toBe(1);
      expect(c.text().stdout).toContain(`${loop}p1: 256.0 MiB, mounted on /media/card boot`);
      expect(c.text().stderr).toMatch(
        new RegExp(`is in use: /dev/${loop}p1 mounted on /media/card boot\\. Unmount it first`),
      );
    });

    it('refuses a partition, even with --yes', async () => {
      await fakeSystem({ partition: true });
      const c = capture();
      expect(await makeCardMain(args(['--yes']), { ...io, ...c.io, stdin: new PassThrough() })).toBe(1);
      expect(c.text().stderr).toMatch(
        new RegExp(`/dev/${loop} is a partition \\(${loop}\\); give the whole card, e\\.g\\. /dev/sdX`),
      );
    });

    it('refuses a device smaller than the image, even with --yes', async () => {
      await fakeSystem({ sizeBytes: 16 * 1024 * 1024 });
      const c = capture();
      expect(await makeCardMain(args(['--yes']), { ...io, ...c.io, stdin: new PassThrough() })).toBe(1);
      expect(c.text().stderr).toMatch(/holds 16\.0 MiB, the image needs 28\.0 MiB; nothing was written/);
    });

    it('checks a compressed image before showing the device: a bad one never reaches it', async () => {
      await fakeSystem({});
      const bad = path.join(dir, 'gpt.img');
      execFileSync('truncate', ['-s', '8M', bad]);
      execFileSync('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', bad], {
        input: 'label: gpt\nsize=4MiB, type=uefi\n',
      });
      await writeFile(`${bad}.zst`, execFileSync('zstd', ['-c', '-q', bad], { maxBuffer: 16 * 1024 * 1024 }));
      const c = capture();
      expect(await makeCardMain(args(['--yes'], `${bad}.zst`), { ...io, ...c.io, stdin: new PassThrough() })).toBe(1);
      expect(c.text().stderr).toMatch(/GPT images are not supported yet.*\[IMAGE_GPT_UNSUPPORTED\]/);
      expect(c.text().stdout).toBe('');
    });

    it('plans a compressed image from its head before asking', async () => {
      await fakeSystem({});
      const xz = `${image.path}.dev.xz`;
      await writeFile(xz, execFileSync('xz', ['-c', '-T1', '-1', image.path], { maxBuffer: 64 * 1024 * 1024 }));
      const c = capture();
      expect(await makeCardMain(args([], xz), { ...io, ...c.io, stdin: new PassThrough() })).toBe(1);
      expect(c.text().stdout).toMatch(/Write os\.img\.dev\.xz \(28\.0 MiB, U-Boot rpi_4\)/);
    });
  },
);

describe('make-card output paths', () => {
  it('refuses a path under /dev that is not a block device', async () => {
    const c = capture();
    expect(
      await makeCardMain(
        [
          '--image',
          image.path,
          '--model',
          'pi4',
          '--out',
          '/dev/sdz-does-not-exist',
          '--uboot',
          ubootFile,
          '--boot-scr',
          scrFile,
          '--yes',
        ],
        c.io,
      ),
    ).toBe(1);
    expect(c.text().stderr).toMatch(
      /\/dev\/sdz-does-not-exist is not a block device \(it does not exist\): refusing to write a file under \/dev/,
    );
    expect(existsSync('/dev/sdz-does-not-exist')).toBe(false);
  });
});
