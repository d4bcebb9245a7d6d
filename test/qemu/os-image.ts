/**
 * Test operating-system images for the boot tests under QEMU (issue 5, items 3 and 7): a real
 * arm64 Linux kernel from Debian (scripts/prepare-test-kernel.sh), a tiny initramfs whose `/init`
 * prints a marker unique to one image build, and a disk image laid out like Raspberry Pi OS's
 * (MBR, FAT boot partition at 4 MiB) holding them and stage 1's env file.
 *
 * The initramfs needs no libc and no busybox: `/init` is a few lines of aarch64 assembly (write,
 * reboot, nanosleep system calls) assembled with binutils from gcc-aarch64-linux-gnu, and the cpio
 * archive and its gzip are written here. Same marker in, same bytes out.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { createSocket } from 'node:dgram';
import { TftpServer, realFileResolver, type TransferEnd } from '../../runner-agent/src/tftp/server.js';
import { buildStage1Image, STAGE1_CMD } from '../../scripts/build-boot-scr.js';
import { startQemuBoard, withConsoleOnFailure, type QemuBoard } from './qemu-board.js';
import { inCi } from './test-uboot.js';

const execFileAsync = promisify(execFile);

export const PREPARE_KERNEL_SCRIPT = fileURLToPath(new URL('../../scripts/prepare-test-kernel.sh', import.meta.url));
export const HOW_TO_PREPARE_KERNEL = 'bash scripts/prepare-test-kernel.sh';
/** The download is ~70 MB from deb.debian.org. */
export const PREPARE_KERNEL_TIMEOUT_MS = 10 * 60_000;
/** The file name of stage 1's env file on the boot partition (the contract with make-card). */
export const STAGE1_ENV_FILE = 'rpi-flash.env';
/** What `/init` prints before the marker; the marker follows on the same line. */
export const INIT_BANNER = 'rpi-flash test init:';

const SECTOR = 512;
/** Raspberry Pi OS images start their boot partition at 4 MiB (sector 8192). */
export const BOOT_PARTITION_START_SECTOR = 8192;

const TOOLS = ['aarch64-linux-gnu-as', 'aarch64-linux-gnu-ld', 'sfdisk', 'mkfs.vfat', 'mcopy', 'mdir'];

/** Whether the tools that build test OS images are installed. */
export async function osImageToolsAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  for (const tool of TOOLS) {
    try {
      await execFileAsync('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return {
        ok: false,
        reason: `${tool} is not installed (Debian: gcc-aarch64-linux-gnu, fdisk, dosfstools, mtools)`,
      };
    }
  }
  return { ok: true };
}

/** The prepared kernel's `Image`, without downloading; undefined when there is none yet. */
export async function findTestKernel(): Promise<string | undefined> {
  if (process.env.RPI_FLASH_TEST_KERNEL) return process.env.RPI_FLASH_TEST_KERNEL;
  try {
    const { stdout } = await execFileAsync('bash', [PREPARE_KERNEL_SCRIPT, '--cached-only']);
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Runs the prepare script (prints the cached path when already done) and returns `Image`'s path. */
export async function prepareTestKernel(): Promise<string> {
  try {
    const { stdout } = await execFileAsync('bash', [PREPARE_KERNEL_SCRIPT], {
      timeout: PREPARE_KERNEL_TIMEOUT_MS,
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${HOW_TO_PREPARE_KERNEL} failed: ${e.message}\n${(e.stderr ?? '').slice(-4000)}`, { cause: err });
  }
}

/**
 * How a boot test gates itself on top of `qemuTestGate`: skip on a developer machine without the
 * kernel or the image tools (saying how to get them), fetch the kernel in CI, fail there if tools
 * are missing.
 */
export async function testKernelGate(): Promise<{ run: boolean; reason: string; kernel(): Promise<string> }> {
  const tools = await osImageToolsAvailable();
  const found = await findTestKernel();
  const run = (tools.ok && found !== undefined) || inCi;
  const reason = !tools.ok ? tools.reason : found ? '' : `no test kernel; fetch it with: ${HOW_TO_PREPARE_KERNEL}`;
  return {
    run,
    reason,
    async kernel() {
      if (!tools.ok) throw new Error(`the boot tests need: ${tools.reason}`);
      return found ?? prepareTestKernel();
    },
  };
}

/** A marker no other image build prints: the test looks for exactly this on the console. */
export function newMarker(label: string): string {
  return `${label}-${process.pid.toString(36)}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export type InitEnding = 'poweroff' | 'sleep';

/** The assembly of `/init`: print `<banner> <marker>`, then power off (QEMU exits 0) or sleep. */
export function initAssembly(marker: string, ending: InitEnding): string {
  if (!/^[\x20-\x7e]+$/.test(marker) || marker.includes('"') || marker.includes('\\'))
    throw new Error(`marker must be printable ASCII without quotes or backslashes: ${JSON.stringify(marker)}`);
  const poweroff = [
    // reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_POWER_OFF, NULL)
    '  movz x0, #0xdead',
    '  movk x0, #0xfee1, lsl #16',
    '  movz x1, #0x1969',
    '  movk x1, #0x2812, lsl #16',
    '  movz x2, #0xfedc',
    '  movk x2, #0x4321, lsl #16',
    '  mov x3, #0',
    '  mov x8, #142',
    '  svc #0',
  ];
  return [
    '// rpi-flash test /init: no libc, three system calls.',
    '  .text',
    '  .global _start',
    '_start:',
    '  mov x0, #1', // the kernel opened /dev/console as fds 0, 1, 2
    '  adr x1, message',
    '  mov x2, #(message_end - message)',
    '  mov x8, #64', // write
    '  svc #0',
    ...(ending === 'poweroff' ? poweroff : []),
    // init must never exit (the kernel would panic): sleep for ever if there is nothing else to do.
    'forever:',
    '  adr x0, an_hour',
    '  mov x1, #0',
    '  mov x8, #101', // nanosleep
    '  svc #0',
    '  b forever',
    '  .balign 8',
    'an_hour:',
    '  .quad 3600, 0',
    'message:',
    `  .ascii "\\n${INIT_BANNER} ${marker}\\n"`,
    'message_end:',
    '',
  ].join('\n');
}

/** Assembles and links `/init` (a static aarch64 ELF of a few hundred bytes). */
export async function buildInit(marker: string, ending: InitEnding = 'poweroff'): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-init-'));
  try {
    await writeFile(join(dir, 'init.S'), initAssembly(marker, ending));
    await execFileAsync('aarch64-linux-gnu-as', ['-o', join(dir, 'init.o'), join(dir, 'init.S')]);
    await execFileAsync('aarch64-linux-gnu-ld', [
      '-static',
      '-s',
      '--build-id=none',
      '-o',
      join(dir, 'init'),
      join(dir, 'init.o'),
    ]);
    return await readFile(join(dir, 'init'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface CpioEntry {
  name: string;
  /** Full st_mode: type bits and permissions (0o100755 a file, 0o40755 a folder, 0o20600 a char device). */
  mode: number;
  data?: Buffer;
  /** Device numbers of a device node. */
  rdev?: [major: number, minor: number];
}

const pad4 = (n: number) => (4 - (n % 4)) % 4;

/** A cpio archive in the "newc" format the kernel unpacks as an initramfs; mtime 0, fixed inodes. */
export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const field = (n: number) => n.toString(16).padStart(8, '0');
  const add = (e: CpioEntry, ino: number) => {
    const name = Buffer.from(`${e.name}\0`);
    const data = e.data ?? Buffer.alloc(0);
    const header =
      '070701' +
      [
        ino,
        e.mode,
        0,
        0,
        e.mode & 0o40000 ? 2 : 1,
        0,
        data.length,
        0,
        0,
        e.rdev?.[0] ?? 0,
        e.rdev?.[1] ?? 0,
        name.length,
        0,
      ]
        .map(field)
        .join('');
    parts.push(
      Buffer.from(header, 'ascii'),
      name,
      Buffer.alloc(pad4(110 + name.length)),
      data,
      Buffer.alloc(pad4(data.length)),
    );
  };
  entries.forEach((e, i) => add(e, i + 1));
  add({ name: 'TRAILER!!!', mode: 0 }, 0);
  return Buffer.concat(parts);
}

/** A gzip'd initramfs: `/dev/console` (so the kernel can give init a console) and `/init`. */
export async function buildInitramfs(marker: string, ending: InitEnding = 'poweroff'): Promise<Buffer> {
  const init = await buildInit(marker, ending);
  const cpio = cpioNewc([
    { name: 'dev', mode: 0o40755 },
    { name: 'dev/console', mode: 0o20600, rdev: [5, 1] },
    { name: 'init', mode: 0o100755, data: init },
  ]);
  return gzipSync(cpio, { level: 9 });
}

/** stage 1's env file: `key=value` lines, as `env import -t` reads them. */
export function stage1EnvText(env: Record<string, string>): string {
  const lines = ['# rpi-flash stage 1 settings (read by boot.scr with env import -t)'];
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad env key ${JSON.stringify(k)}`);
    if (/[\r\n\0]/.test(v)) throw new Error(`env value of ${k} has a line break`);
    lines.push(`${k}=${v}`);
  }
  return lines.join('\n') + '\n';
}

export interface DiskImageOptions {
  /** Output file; created or overwritten. */
  path: string;
  /** Total size in bytes (a power of two when the file is used as QEMU's SD card). */
  size: number;
  /** Size of the FAT boot partition in bytes (from sector 8192); the rest stays empty. */
  bootPartitionSize: number;
  /** Files of the boot partition's root folder: name → contents. */
  files: Record<string, Buffer | string>;
  /** FAT volume label. */
  label?: string;
}

/** The byte offset of the boot partition, for mtools' `-i image@@offset`. */
export const BOOT_PARTITION_OFFSET = BOOT_PARTITION_START_SECTOR * SECTOR;

/**
 * A disk image like Raspberry Pi OS's: an MBR with one FAT partition (type 0x0c, bootable) at
 * 4 MiB, made with Debian's tools (sfdisk, mkfs.vfat --offset, mcopy).
 */
export async function buildDiskImage(o: DiskImageOptions): Promise<void> {
  const sectors = o.bootPartitionSize / SECTOR;
  if (!Number.isInteger(sectors) || sectors < 2048)
    throw new Error(`boot partition size must be whole sectors and at least 1 MiB, got ${o.bootPartitionSize}`);
  if (BOOT_PARTITION_OFFSET + o.bootPartitionSize > o.size)
    throw new Error(`a ${o.bootPartitionSize}-byte boot partition at 4 MiB does not fit in ${o.size} bytes`);
  await writeFile(o.path, Buffer.alloc(0));
  await truncate(o.path, o.size);
  const table =
    'label: dos\nlabel-id: 0x5250460a\n' + `start=${BOOT_PARTITION_START_SECTOR}, size=${sectors}, type=c, bootable\n`;
  await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', o.path], table);
  await run('mkfs.vfat', [
    '--offset',
    String(BOOT_PARTITION_START_SECTOR),
    '-n',
    o.label ?? 'BOOT',
    '-i',
    '5250460a',
    o.path,
    String(o.bootPartitionSize / 1024),
  ]);
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-boot-files-'));
  try {
    const names: string[] = [];
    for (const [name, contents] of Object.entries(o.files)) {
      if (!/^[A-Za-z0-9._-]+$/.test(name))
        throw new Error(`boot file name must be a plain file name: ${JSON.stringify(name)}`);
      await writeFile(join(dir, name), contents);
      names.push(join(dir, name));
    }
    if (names.length) await run('mcopy', ['-i', `${o.path}@@${BOOT_PARTITION_OFFSET}`, ...names, '::/']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The names in the root folder of a disk image's boot partition (mtools, read only). */
export async function listBootPartition(image: string, offset = BOOT_PARTITION_OFFSET): Promise<string[]> {
  const { stdout } = await execFileAsync('mdir', ['-b', '-i', `${image}@@${offset}`, '::/']);
  return stdout
    .split('\n')
    .map((l) => l.trim().replace(/^::\//, ''))
    .filter(Boolean);
}

/** One file of a disk image's boot partition (mtools, read only). */
export async function readBootFile(image: string, name: string, offset = BOOT_PARTITION_OFFSET): Promise<Buffer> {
  const { stdout } = await execFileAsync('mcopy', ['-n', '-i', `${image}@@${offset}`, `::/${name}`, '-'], {
    encoding: 'buffer',
    maxBuffer: 256 * 1024 * 1024,
  });
  return stdout;
}

async function run(cmd: string, args: string[], input?: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = execFile(cmd, args, { maxBuffer: 4 * 1024 * 1024 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve();
    });
    if (input !== undefined) child.stdin!.end(input);
    else child.stdin!.end();
  });
}

export interface TestOsImageOptions {
  path: string;
  /** Disk size; 64 MiB by default (a power of two, so it can be QEMU's SD card as it is). */
  size?: number;
  bootPartitionSize?: number;
  kernelImage: Buffer;
  /** File name of the kernel on the boot partition (kernel8.img like Raspberry Pi OS). */
  kernelName?: string;
  marker: string;
  ending?: InitEnding;
  /** Extra kernel command line words, after the console. */
  bootargs?: string;
  /** Extra boot-partition files (e.g. boot.scr, u-boot.bin). */
  extraFiles?: Record<string, Buffer | string>;
  /** Extra or overriding keys of rpi-flash.env; `false` leaves the env file out. */
  env?: Record<string, string> | false;
}

/**
 * A bootable test OS image: the kernel, an initramfs printing `marker`, and rpi-flash.env naming
 * them (rpf_kernel, rpf_initrd, rpf_arm64=1, rpf_bootargs with the PL011 console QEMU's virt has).
 */
export async function buildTestOsImage(o: TestOsImageOptions): Promise<{ initramfs: Buffer; envText?: string }> {
  const size = o.size ?? 64 * 1024 * 1024;
  const kernelName = o.kernelName ?? 'kernel8.img';
  const initramfs = await buildInitramfs(o.marker, o.ending ?? 'poweroff');
  const envText =
    o.env === false
      ? undefined
      : stage1EnvText({
          rpf_kernel: kernelName,
          rpf_initrd: 'initramfs8',
          rpf_arm64: '1',
          rpf_bootargs: `console=ttyAMA0 panic=-1 ${o.bootargs ?? ''}`.trim(),
          ...o.env,
        });
  await buildDiskImage({
    path: o.path,
    size,
    bootPartitionSize: o.bootPartitionSize ?? size - BOOT_PARTITION_OFFSET,
    files: {
      [kernelName]: o.kernelImage,
      initramfs8: initramfs,
      ...(envText === undefined ? {} : { [STAGE1_ENV_FILE]: envText }),
      ...o.extraFiles,
    },
  });
  return { initramfs, envText };
}

/** Stage 1 as the card carries it: built from the current uboot/boot.cmd (not the committed boot.scr). */
export async function stage1ScriptImage(): Promise<Buffer> {
  return buildStage1Image(await readFile(STAGE1_CMD, 'utf8'));
}

/**
 * The board's boot command under QEMU: probe the SD controller (`pci enum; mmc list`, which a Pi
 * does not need), then do what a Pi's distro boot does with boot.scr — load it from the boot
 * partition to ${scriptaddr} and `source` it.
 */
export const CARD_BOOTCMD = 'fatload mmc 0:1 ${scriptaddr} boot.scr && source ${scriptaddr}';

/** Environment for a board that must get its address and server by DHCP (slirp's: 10.0.2.15, next-server 10.0.2.2). */
export const DHCP_ONLY_ENV: Record<string, string> = { ipaddr: '', netmask: '', serverip: '' };

/** A UDP port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function closedUdpPort(): Promise<number> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => resolve());
  });
  const { port } = socket.address();
  await new Promise<void>((resolve) => socket.close(() => resolve()));
  return port;
}

export interface CardBootOptions {
  ubootBin: string;
  workDir: string;
  mac: string;
  /** The SD card image (a power of two in size); it must hold boot.scr on its boot partition. */
  sdImage: string;
  /**
   * `up`: the project's TFTP server serves `tftpFiles` (none: no job); `down`: nothing listens on
   * the TFTP port (the server's host answers, its service is gone).
   */
  server: 'up' | 'down';
  /** Files under the TFTP root: relative path → contents (e.g. `<macdir>/flash.scr`). */
  tftpFiles?: Record<string, Buffer>;
  /** Board environment overrides (see DHCP_ONLY_ENV). */
  env?: Record<string, string>;
  /** What ends the run successfully: a console match. */
  until: RegExp;
  timeoutMs: number;
}

export interface CardBootResult {
  console: string;
  consoleLog: string;
  transfers: TransferEnd[];
  /** ms from QEMU's start to each step's console line (undefined when it never appeared). */
  at: { stage1?: number; networkDone?: number; booting?: number; until: number };
}

/** The console line stage 1 prints when it leaves the network step without a job. */
export const STAGE1_NO_JOB = /rpi-flash: (no job for|no network)[^\n]*/;

/**
 * Boots the emulated board from its card with the project's TFTP server up or down, until the
 * console shows `until`; QEMU and the server are gone when it returns or throws.
 */
export async function bootFromCard(o: CardBootOptions): Promise<CardBootResult> {
  const transfers: TransferEnd[] = [];
  let server: TftpServer | undefined;
  let port: number;
  if (o.server === 'up') {
    const root = join(o.workDir, 'tftp');
    await mkdir(root, { recursive: true });
    for (const [path, data] of Object.entries(o.tftpFiles ?? {})) {
      await mkdir(join(root, path, '..'), { recursive: true });
      await writeFile(join(root, path), data);
    }
    server = new TftpServer({
      address: '127.0.0.1',
      port: 0,
      resolver: realFileResolver(root),
      onTransferEnd: (t) => transfers.push(t),
    });
    port = (await server.listen()).port;
  } else {
    port = await closedUdpPort();
  }
  let board: QemuBoard | undefined;
  try {
    const started = performance.now();
    board = await startQemuBoard({
      ubootBin: o.ubootBin,
      mac: o.mac,
      tftpPort: port,
      sdImage: o.sdImage,
      env: o.env,
      bootcmd: CARD_BOOTCMD,
      timeoutMs: o.timeoutMs,
      workDir: o.workDir,
    });
    const b = board;
    return await withConsoleOnFailure(b, async () => {
      const at: CardBootResult['at'] = { until: 0 };
      const since = () => performance.now() - started;
      // Each step's time is taken when its line arrives; a step that never comes is left out.
      const step = (re: RegExp, key: 'stage1' | 'networkDone' | 'booting') =>
        b.waitForConsole(re, o.timeoutMs).then(
          () => void (at[key] = since()),
          () => undefined,
        );
      const steps = Promise.all([
        step(/rpi-flash: stage 1/, 'stage1'),
        step(STAGE1_NO_JOB, 'networkDone'),
        step(/rpi-flash: booting /, 'booting'),
      ]);
      await b.waitForConsole(o.until, o.timeoutMs);
      at.until = since();
      await b.kill();
      await steps;
      return { console: b.console(), consoleLog: b.consoleLog, transfers, at };
    });
  } finally {
    await board?.kill();
    await server?.close();
  }
}
