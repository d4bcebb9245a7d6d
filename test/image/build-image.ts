/**
 * Test OS images built with Debian's own tools, laid out like Raspberry Pi OS's: an MBR
 * (sfdisk), a FAT boot partition (mkfs.vfat, files put in with mtools' mcopy) and an ext4 root
 * (mkfs.ext4 -d, holding an /etc/fstab that names the partitions by PARTUUID). Also the readers
 * the tests check results with: mtools (mtype, mdir, mcopy out) and fsck.fat.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const MiB = 1024 * 1024;
/** mtools refuses odd geometries unless told not to check; these volumes are made by mkfs. */
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1' };

export const TOOLS = ['sfdisk', 'mkfs.vfat', 'fsck.vfat', 'mcopy', 'mtype', 'mdir', 'mkfs.ext4'];

export interface TestImageOptions {
  fat: 12 | 16 | 32;
  /** Boot partition size in MiB. */
  bootMiB: number;
  /** Root partition size in MiB (ext4); 0 for none. */
  rootMiB: number;
  /** Where the boot partition starts, in MiB (Raspberry Pi OS: 4). */
  startMiB?: number;
  /** MBR type byte of the boot partition; default 0x0c (FAT32 LBA), 0x0e for FAT16, 0x01 for FAT12. */
  bootType?: string;
  /** Sectors per cluster for mkfs.vfat (-s); mkfs's default when absent. */
  sectorsPerCluster?: number;
  /** FAT12/16 root directory entries (mkfs.vfat -r); mkfs's default (512) when absent. */
  rootEntries?: number;
  /** Files to put in the boot partition: name → content. Names with a `/` make folders. */
  files: Record<string, string | Buffer>;
  /** Disk identifier (PARTUUIDs are `<id>-01`, `<id>-02`). */
  diskId?: string;
  /** Make ext4 with content (slower); else the root partition is left as filler bytes. */
  ext4?: boolean;
  /** Leave the root partition a hole (sparse, zeros): for multi-GiB images in the bench. */
  sparseRoot?: boolean;
}

export interface TestImage {
  path: string;
  size: number;
  bootOffset: number;
  bootSize: number;
  rootOffset: number;
}

export async function buildTestImage(dir: string, name: string, o: TestImageOptions): Promise<TestImage> {
  const file = path.join(dir, name);
  const start = (o.startMiB ?? 4) * MiB;
  const bootSize = o.bootMiB * MiB;
  const rootSize = o.rootMiB * MiB;
  const size = start + bootSize + rootSize;
  const fh = await open(file, 'w');
  await fh.truncate(size);
  await fh.close();
  const diskId = o.diskId ?? '0x5eed1234';
  const type = o.bootType ?? (o.fat === 32 ? 'c' : o.fat === 16 ? 'e' : '1');
  const table = [
    `label: dos`,
    `label-id: ${diskId}`,
    `start=${start / 512}, size=${bootSize / 512}, type=${type}, bootable`,
  ];
  if (rootSize) table.push(`start=${(start + bootSize) / 512}, size=${rootSize / 512}, type=83`);
  await runWithInput('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', file], table.join('\n') + '\n');
  const mkfsArgs = ['-F', String(o.fat), '--offset', String(start / 512), '-n', 'BOOTFS', '-i', '5eed0001'];
  if (o.sectorsPerCluster) mkfsArgs.push('-s', String(o.sectorsPerCluster));
  if (o.rootEntries) mkfsArgs.push('-r', String(o.rootEntries));
  await run('mkfs.vfat', [...mkfsArgs, file, String(bootSize / 1024)]);
  await putFiles(file, start, o.files);
  if (rootSize) {
    if (o.ext4) {
      const rootDir = path.join(dir, `${name}.rootfs`);
      await mkdir(path.join(rootDir, 'etc'), { recursive: true });
      const id = diskId.replace(/^0x/, '');
      await writeFile(
        path.join(rootDir, 'etc', 'fstab'),
        'proc /proc proc defaults 0 0\n' +
          `PARTUUID=${id}-01 /boot/firmware vfat defaults 0 2\n` +
          `PARTUUID=${id}-02 / ext4 defaults,noatime 0 1\n`,
      );
      await run('mkfs.ext4', [
        '-q',
        '-F',
        '-L',
        'rootfs',
        '-E',
        `offset=${start + bootSize}`,
        '-d',
        rootDir,
        file,
        `${rootSize / 1024}k`,
      ]);
    } else if (!o.sparseRoot) {
      // Recognisable filler: the test checks not one byte of it changes.
      const fill = Buffer.alloc(MiB);
      for (let i = 0; i < fill.length; i++) fill[i] = (i * 7 + 3) & 0xff;
      const w = await open(file, 'r+');
      for (let at = 0; at < rootSize; at += MiB)
        await w.write(fill, 0, Math.min(MiB, rootSize - at), start + bootSize + at);
      await w.close();
    }
  }
  return { path: file, size, bootOffset: start, bootSize, rootOffset: start + bootSize };
}

async function runWithInput(cmd: string, args: string[], input: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = execFile(cmd, args, (err, _stdout, stderr) =>
      err ? reject(new Error(`${cmd} failed: ${stderr || err.message}`)) : resolve(),
    );
    child.stdin!.end(input);
  });
}

const img = (file: string, offset: number) => `${file}@@${offset}`;

export async function putFiles(file: string, offset: number, files: Record<string, string | Buffer>): Promise<void> {
  const tmp = `${file}.put`;
  // Files for the root go in with one mcopy (it takes many sources), in the order given.
  const top = Object.entries(files).filter(([name]) => !name.includes('/'));
  if (top.length) {
    const stage = `${file}.stage`;
    await rm(stage, { recursive: true, force: true });
    await mkdir(stage);
    for (const [name, content] of top) await writeFile(path.join(stage, name), content);
    await run('mcopy', ['-o', '-i', img(file, offset), ...top.map(([name]) => path.join(stage, name)), '::/'], {
      env: MTOOLS_ENV,
    });
    await rm(stage, { recursive: true, force: true });
  }
  for (const [name, content] of Object.entries(files)) {
    if (!name.includes('/')) continue;
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) {
      await run('mmd', ['-D', 's', '-i', img(file, offset), `::/${parts.slice(0, i).join('/')}`], {
        env: MTOOLS_ENV,
      }).catch(() => {});
    }
    await writeFile(tmp, content);
    await run('mcopy', ['-o', '-i', img(file, offset), tmp, `::/${name}`], { env: MTOOLS_ENV });
  }
}

/** A file of the boot partition as mtools reads it. */
export async function mtoolsRead(file: string, offset: number, name: string): Promise<Buffer> {
  const out = `${file}.get`;
  await run('mcopy', ['-o', '-n', '-i', img(file, offset), `::/${name}`, out], { env: MTOOLS_ENV });
  return readFile(out);
}

/** `mdir -a` of the root: long names as mtools lists them. */
export async function mtoolsList(file: string, offset: number): Promise<string> {
  const { stdout } = await run('mdir', ['-a', '-i', img(file, offset), '::/'], { env: MTOOLS_ENV });
  return stdout;
}

/** The bare names in the root directory (`mdir -b`). */
export async function mtoolsNames(file: string, offset: number): Promise<string[]> {
  const { stdout } = await run('mdir', ['-b', '-i', img(file, offset), '::/'], { env: MTOOLS_ENV });
  return stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/^::\//, ''));
}

/**
 * `fsck.fat -n` (check only, change nothing) of the boot partition, copied out of the image since
 * fsck has no offset option. Resolves to its output; the exit status tells clean (0) or not.
 */
export async function fsckBoot(image: TestImage, file = image.path): Promise<{ clean: boolean; output: string }> {
  const part = `${file}.boot`;
  const fh = await open(file, 'r');
  const buf = Buffer.alloc(image.bootSize);
  await fh.read(buf, 0, buf.length, image.bootOffset);
  await fh.close();
  await writeFile(part, buf);
  try {
    const { stdout, stderr } = await run('fsck.vfat', ['-n', '-v', part]);
    return { clean: true, output: stdout + stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    return { clean: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}${e.message}` };
  }
}
