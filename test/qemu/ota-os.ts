/**
 * The in-place update's test operating system (issue 12): a disk image laid out like Raspberry Pi
 * OS's (MBR; partition 1 FAT boot at 4 MiB with kernel8.img, initrd.img, config.txt, cmdline.txt;
 * partition 2 ext4 root) that boots from the VM's own disk and runs an SSH server, as a Pi in the
 * field does before it is updated in place.
 *
 * Everything on it comes from Debian arm64 (scripts/prepare-ota-os.sh): the test kernel, gzip'd as
 * Raspberry Pi OS ships kernel8.img; busybox-static; `dropbear` from dropbear-bin with its libraries
 * and loader. The initramfs only loads the kernel's virtio (MMIO, blk, net) and ext4 modules,
 * mounts the root partition read-only and switches to it. The root's `/sbin/init` is a busybox sh
 * script (PID 1): proc, sys, dev, devpts, tmpfs on /run and /tmp, a static address on eth0,
 * dropbear with a host key made on the build host (Debian's dropbear-bin for amd64: dropbearkey)
 * and an authorized_keys for root, then the image's marker on the console; it stays up.
 *
 * The root is mounted read-only and nothing on the disk is written by booting: after an update the
 * disk equals the new image byte for byte, even once the new system runs.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { BOOT_PARTITION_OFFSET, INIT_BANNER, buildDiskImage, cpioNewc, osImageToolsAvailable } from './os-image.js';
import { inCi } from './test-uboot.js';

const execFileAsync = promisify(execFile);

export const PREPARE_OTA_OS_SCRIPT = fileURLToPath(new URL('../../scripts/prepare-ota-os.sh', import.meta.url));
export const HOW_TO_PREPARE_OTA_OS = 'bash scripts/prepare-ota-os.sh';
/** The kernel package (~60 MB) and a handful of small ones from deb.debian.org, unpacked once. */
export const PREPARE_OTA_OS_TIMEOUT_MS = 15 * 60_000;

const SECTOR = 512;
const MiB = 1024 * 1024;

/** What every line the test OS's own scripts print starts with. */
export const OTA_OS_PREFIX = 'rpi-flash ota-os:';
/** The lines the initramfs and the root's init print, in order (each a RegExp on the console). */
export const OTA_OS_LINES = {
  initramfs: /rpi-flash ota-os: initramfs started on (\S+)/,
  mounted: /rpi-flash ota-os: mounted (\S+) read-only/,
  init: /rpi-flash ota-os: init of image (\S+) started/,
  address: /rpi-flash ota-os: eth0 has (\S+)/,
  sshd: /rpi-flash ota-os: dropbear listens on port (\d+)/,
  /** Any step that fails prints this one line and powers the VM off. */
  failed: /rpi-flash ota-os: FAILED at ([a-z-]+): [^\r\n]*/,
} as const;

/** The board's address and its network as the image configures eth0 by default (the tap link's). */
export const OTA_BOARD_ADDRESS = '10.42.0.2/24';

/** Where the root keeps what identifies the image (the test reads them over SSH). */
export const MARKER_FILE = '/etc/rpi-flash-marker';
export const PAYLOAD_FILE = '/srv/rpi-flash-payload.bin';

/** What scripts/prepare-ota-os.sh made: one folder per kernel and package versions. */
export interface OtaOsParts {
  dir: string;
  /** The raw kernel (the modules' own). */
  kernelImage: string;
  /** The same kernel gzip'd, as kernel8.img on the boot partition (U-Boot's booti inflates it). */
  kernelGz: string;
  kernelRelease: string;
  /** Module paths inside `rootfs`, in load order. */
  modules: string[];
  /** bin/busybox, usr/sbin/dropbear, lib/… (loader and libraries), lib/modules/… */
  rootfs: string;
  /** The static arm64 busybox (what the agent's `ota.busybox.arm64` names in the tests). */
  busybox: string;
}

async function partsIn(dir: string): Promise<OtaOsParts> {
  const lines = (text: string) =>
    text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
  return {
    dir,
    kernelImage: join(dir, 'Image'),
    kernelGz: join(dir, 'kernel8.img'),
    kernelRelease: (await readFile(join(dir, 'kernel-release'), 'utf8')).trim(),
    modules: lines(await readFile(join(dir, 'modules.load'), 'utf8')),
    rootfs: join(dir, 'rootfs'),
    busybox: join(dir, 'rootfs', 'bin', 'busybox'),
  };
}

/** The prepared folder, without downloading; undefined when there is none yet. */
export async function findOtaOsParts(): Promise<OtaOsParts | undefined> {
  try {
    const { stdout } = await execFileAsync('bash', [PREPARE_OTA_OS_SCRIPT, '--cached-only']);
    return await partsIn(stdout.trim());
  } catch {
    return undefined;
  }
}

/** Runs the prepare script (it only prints the folder when it is done already). */
export async function prepareOtaOsParts(): Promise<OtaOsParts> {
  try {
    const { stdout } = await execFileAsync('bash', [PREPARE_OTA_OS_SCRIPT], {
      timeout: PREPARE_OTA_OS_TIMEOUT_MS,
      maxBuffer: 16 * 1024 * 1024,
    });
    return await partsIn(stdout.trim());
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${HOW_TO_PREPARE_OTA_OS} failed: ${e.message}\n${(e.stderr ?? '').slice(-4000)}`, {
      cause: err,
    });
  }
}

/** The tools that build the image and its keys: os-image.ts's, mkfs.ext4, Debian's dropbear-bin. */
export async function otaImageToolsAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  const base = await osImageToolsAvailable();
  if (!base.ok) return base;
  for (const [tool, pkg] of [
    ['mkfs.ext4', 'e2fsprogs'],
    ['dropbearkey', 'dropbear-bin'],
    ['dropbearconvert', 'dropbear-bin'],
    ['aarch64-linux-gnu-readelf', 'binutils-aarch64-linux-gnu'],
    ['aarch64-linux-gnu-objcopy', 'binutils-aarch64-linux-gnu'],
  ]) {
    try {
      await execFileAsync('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return { ok: false, reason: `${tool} is not installed (Debian: ${pkg})` };
    }
  }
  return { ok: true };
}

/**
 * How an OTA test gates itself: skip on a developer machine without the tools or the prepared
 * folder (saying how to get them); in CI prepare it, and fail when a tool is missing.
 */
export async function otaOsGate(): Promise<{ run: boolean; reason: string; parts(): Promise<OtaOsParts> }> {
  const tools = await otaImageToolsAvailable();
  const found = await findOtaOsParts();
  const run = (tools.ok && found !== undefined) || inCi;
  const reason = !tools.ok
    ? tools.reason
    : found
      ? ''
      : `the OTA test OS is not prepared; run: ${HOW_TO_PREPARE_OTA_OS}`;
  return {
    run,
    reason,
    async parts() {
      if (!tools.ok) throw new Error(`the OTA tests need: ${tools.reason}`);
      return found ?? prepareOtaOsParts();
    },
  };
}

// ---- Keys -------------------------------------------------------------------------------------

/** One key pair made with Debian's dropbearkey. */
export interface TestKey {
  /** The private key in dropbear's own format (what dropbear's `-r` reads). */
  dropbearFile: string;
  /** The same private key in OpenSSH's format (what the agent's `sshkey` names). */
  opensshFile: string;
  /** `ssh-ed25519 AAAA… <comment>`: an authorized_keys line, or a targets row's `hostkey`. */
  publicLine: string;
  /** `SHA256:<base64 without =>` of the public key blob, as OpenSSH prints it. */
  fingerprint: string;
}

/** The SHA256 fingerprint of an OpenSSH public-key line, as `ssh-keygen -l` prints it. */
export function fingerprintOf(publicLine: string): string {
  const blob = publicLine.trim().split(/\s+/)[1];
  if (!blob) throw new Error(`not a public-key line: ${JSON.stringify(publicLine)}`);
  const digest = createHash('sha256').update(Buffer.from(blob, 'base64')).digest('base64');
  return `SHA256:${digest.replace(/=+$/, '')}`;
}

/** An ed25519 key pair in `dir` (created), named `name`: dropbearkey, then dropbearconvert to OpenSSH. */
export async function makeTestKey(dir: string, name: string): Promise<TestKey> {
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`key name ${JSON.stringify(name)} is not plain`);
  await mkdir(dir, { recursive: true });
  const dropbearFile = join(dir, `${name}.dropbear`);
  const opensshFile = join(dir, name);
  await rm(dropbearFile, { force: true });
  await execFileAsync('dropbearkey', ['-t', 'ed25519', '-f', dropbearFile]);
  const { stdout } = await execFileAsync('dropbearkey', ['-y', '-f', dropbearFile]);
  const publicLine = /^ssh-ed25519 \S+(?: \S+)?$/m.exec(stdout)?.[0];
  if (!publicLine) throw new Error(`dropbearkey -y printed no ssh-ed25519 line:\n${stdout}`);
  await execFileAsync('dropbearconvert', ['dropbear', 'openssh', dropbearFile, opensshFile]);
  await chmod(opensshFile, 0o600);
  return { dropbearFile, opensshFile, publicLine, fingerprint: fingerprintOf(publicLine) };
}

/** The keys one test run needs: the board's host key and the key the agent logs in with. */
export interface OtaKeys {
  host: TestKey;
  client: TestKey;
}

export async function makeOtaKeys(dir: string): Promise<OtaKeys> {
  const [host, client] = await Promise.all([makeTestKey(dir, 'host_ed25519'), makeTestKey(dir, 'client_ed25519')]);
  return { host, client };
}

// ---- busybox's applets --------------------------------------------------------------------------

/**
 * The applet names compiled into a busybox binary, read from the binary itself (it runs on arm64,
 * not here): busybox keeps them as one sorted run of NUL-terminated names starting `[`, `[[`. The
 * root gets a /bin symlink for each, as a system with busybox installed has (its root is read-only:
 * `busybox --install` cannot run at boot).
 */
export async function busyboxApplets(busybox: string): Promise<string[]> {
  const data = await readFile(busybox);
  const start = data.indexOf(Buffer.from('[\0[[\0'));
  if (start < 0) throw new Error(`${busybox}: no applet name table found`);
  const end = data.indexOf(Buffer.from('\0\0'), start);
  const names = data.subarray(start, end).toString('latin1').split('\0');
  for (const n of names)
    if (!/^[a-z0-9_.[\]-]+$/.test(n)) throw new Error(`${busybox}: unexpected applet name ${JSON.stringify(n)}`);
  for (const needed of ['sh', 'mount', 'ip', 'cat', 'id', 'uname', 'mkfifo', 'switch_root', 'insmod', 'poweroff'])
    if (!names.includes(needed)) throw new Error(`${busybox} has no ${needed} applet`);
  return names;
}

// ---- The scripts ------------------------------------------------------------------------------

const plain = (what: string, value: string, re = /^[A-Za-z0-9._:/-]+$/) => {
  if (!re.test(value)) throw new Error(`${what} ${JSON.stringify(value)} is not plain`);
  return value;
};

/**
 * `/init` of the initramfs: the modules, the root partition from `root=` (a device path) mounted
 * read-only, switch_root to its /sbin/init. Every step prints a line; a failure prints
 * `FAILED at <step>` and powers off, so a test sees why at once.
 */
export function otaInitramfsInit(o: { modules: string[] }): string {
  for (const m of o.modules)
    if (!/^[A-Za-z0-9._/+-]+\.ko$/.test(m)) throw new Error(`module path ${JSON.stringify(m)} is not a plain .ko path`);
  return `#!/bin/busybox sh
# rpi-flash OTA test initramfs (test/qemu/ota-os.ts): modules, the root on the disk read-only, switch_root.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

say() { echo "${OTA_OS_PREFIX} $*"; }
fail() {
	echo "${OTA_OS_PREFIX} FAILED at $1: $2"
	dmesg 2>/dev/null | tail -n 20
	poweroff -f
	sleep 3600
}

mount -t proc proc /proc || fail mount "cannot mount /proc"
mount -t sysfs sysfs /sys || fail mount "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fail mount "cannot mount devtmpfs on /dev"
# Kernel messages below warnings stay in dmesg, so they do not split the lines the test reads.
echo 4 >/proc/sys/kernel/printk
say "initramfs started on $(uname -r)"

for m in ${o.modules.map((m) => `/${m}`).join(' ')}; do
	insmod "$m" || fail modules "insmod $m failed"
done

root=
rootfstype=ext4
for x in $(cat /proc/cmdline); do
	case "$x" in
	root=/dev/*) root="\${x#root=}" ;;
	rootfstype=*) rootfstype="\${x#rootfstype=}" ;;
	esac
done
[ -n "$root" ] || fail cmdline "no root=/dev/… on the command line: $(cat /proc/cmdline)"
i=0
while [ ! -b "$root" ]; do
	i=$((i + 1))
	[ $i -le 100 ] || fail root "$root did not appear within 10 s (is the disk virtio-blk on virtio-mmio?)"
	sleep 0.1
done
# Read-only, and ext4's noload is not needed: a clean file system mounted ro writes nothing.
mount -t "$rootfstype" -o ro "$root" /newroot || fail mount "cannot mount $root"
say "mounted $root read-only"
[ -x /newroot/sbin/init ] || fail switch-root "the root on $root has no /sbin/init"
mount --move /dev /newroot/dev
umount /sys
umount /proc
exec switch_root /newroot /sbin/init
fail switch-root "switch_root did not start /sbin/init"
`;
}

export interface OtaInitOptions {
  /** Printed after INIT_BANNER once dropbear listens: the image's identity on the console. */
  marker: string;
  /** A short name of the image (A, B…), printed as the init starts and kept as the hostname's end. */
  label: string;
  /** eth0's address with its prefix length. */
  address: string;
  /** A default route, if any. */
  gateway?: string;
  sshPort: number;
}

/**
 * The root's `/sbin/init`, a busybox sh script run as PID 1. It ends waiting on a FIFO with the
 * shell's own `read`: PID 1 must never exit, and once the agent's switch script has pivoted into
 * its RAM system (pivot_root moves PID 1's root there too) a loop that ran `sleep` would find no
 * program to run.
 */
export function otaRootInit(o: OtaInitOptions): string {
  if (!/^[\x20-\x7e]+$/.test(o.marker) || /["\\$`]/.test(o.marker))
    throw new Error(`marker must be printable ASCII without quotes, backslashes, $ or backquotes: ${o.marker}`);
  plain('label', o.label, /^[A-Za-z0-9-]+$/);
  plain('address', o.address, /^\d+\.\d+\.\d+\.\d+\/\d+$/);
  if (o.gateway) plain('gateway', o.gateway, /^\d+\.\d+\.\d+\.\d+$/);
  return `#!/bin/sh
# rpi-flash OTA test OS (test/qemu/ota-os.ts): PID 1 of image ${o.label}.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "${OTA_OS_PREFIX} $*"; }
fail() {
	echo "${OTA_OS_PREFIX} FAILED at $1: $2"
	poweroff -f
	while :; do read -r _; done
}

mount -t proc proc /proc || fail mount "cannot mount /proc"
mount -t sysfs sysfs /sys || fail mount "cannot mount /sys"
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev || fail mount "cannot mount devtmpfs on /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts || fail mount "cannot mount /dev/pts"
# The RAM file systems a Pi OS has (the agent stages its RAM system in one of them).
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run || fail mount "cannot mount /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp || fail mount "cannot mount /tmp"
say "init of image ${o.label} started"
hostname rpi-flash-ota-${o.label.toLowerCase()}

ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	[ $i -le 100 ] || fail link "no eth0 after 10 s (is the NIC virtio-net on virtio-mmio?)"
	sleep 0.1
done
ip addr add ${o.address} dev eth0 || fail link "cannot give eth0 ${o.address}"
ip link set eth0 up || fail link "cannot bring eth0 up"
${o.gateway ? `ip route add default via ${o.gateway} || fail link "cannot add the default route"` : ''}
say "eth0 has ${o.address}"

# dropbear: host key made on the build host, public keys only (-s), its log in RAM.
dropbear -F -E -s -p ${o.sshPort} -r /etc/dropbear/dropbear_ed25519_host_key -P /run/dropbear.pid \\
	>/run/dropbear.log 2>&1 &
i=0
while ! netstat -ltn 2>/dev/null | grep -q ':${o.sshPort} '; do
	i=$((i + 1))
	[ $i -le 100 ] || fail sshd "dropbear does not listen on port ${o.sshPort}: $(cat /run/dropbear.log)"
	sleep 0.1
done
say "dropbear listens on port ${o.sshPort}"
echo "${INIT_BANNER} ${o.marker}"

mkfifo /run/rpi-flash-init.fifo || fail fifo "cannot make a FIFO in /run"
exec 3<>/run/rpi-flash-init.fifo
rm -f /run/rpi-flash-init.fifo
while :; do read -r _ <&3; done
`;
}

/** A Raspberry Pi OS style cmdline.txt for this image: the serial console, the root on the disk's partition 2. */
export function otaCmdline(extra = ''): string {
  return ['console=ttyAMA0,115200', 'root=/dev/vda2', 'rootfstype=ext4', 'ro', 'rootwait', extra].join(' ').trim();
}

/** config.txt: the names the Pi firmware loads (kernel8.img, initrd.img after it), the serial console. */
export const OTA_CONFIG_TXT = [
  'arm_64bit=1',
  'kernel=kernel8.img',
  'initramfs initrd.img followkernel',
  'enable_uart=1',
  '',
].join('\n');

// ---- The image --------------------------------------------------------------------------------

export interface OtaImageOptions {
  /** Output file; created or overwritten. */
  path: string;
  parts: OtaOsParts;
  keys: OtaKeys;
  marker: string;
  /** A, B…: in the init's first line and the hostname. */
  label: string;
  /** eth0's address; OTA_BOARD_ADDRESS by default. */
  address?: string;
  gateway?: string;
  /** dropbear's port; 22 by default. */
  sshPort?: number;
  /**
   * Bytes of `PAYLOAD_FILE` on the root, derived from the marker (so two images differ in their
   * root's content, not only in a line); 256 KiB by default.
   */
  payloadBytes?: number;
  /** Boot partition size (from 4 MiB); 16 MiB by default: the 11 MB kernel8.img and the initramfs. */
  bootPartitionSize?: number;
  /** Root partition size, right after the boot partition; 12 MiB by default. */
  rootPartitionSize?: number;
}

export interface OtaImage {
  path: string;
  /** The whole image's size in bytes (4 MiB + boot + root). */
  size: number;
  marker: string;
  cmdline: string;
  boot: { offset: number; size: number };
  root: { offset: number; size: number };
}

/** Deterministic bytes from a seed (sha256 in counter mode): the root's payload. */
export function payloadBytes(seed: string, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0, off = 0; off < length; i++) {
    const block = createHash('sha256').update(`${seed}:${i}`).digest();
    off += block.copy(out, off);
  }
  return out;
}

/** The gzip'd newc initramfs: busybox, the modules, /init and /dev/console. */
export async function buildOtaInitramfs(parts: OtaOsParts): Promise<Buffer> {
  const dirs = new Set<string>(['bin', 'dev']);
  for (const m of parts.modules) {
    const segments = m.split('/');
    for (let i = 1; i < segments.length; i++) dirs.add(segments.slice(0, i).join('/'));
  }
  const cpio = cpioNewc([
    ...[...dirs].sort().map((name) => ({ name, mode: 0o40755 })),
    // The kernel opens /dev/console for init before /init mounts devtmpfs.
    { name: 'dev/console', mode: 0o20600, rdev: [5, 1] },
    { name: 'bin/busybox', mode: 0o100755, data: await readFile(parts.busybox) },
    ...(await Promise.all(
      parts.modules.map(async (m) => ({ name: m, mode: 0o100644, data: await readFile(join(parts.rootfs, m)) })),
    )),
    { name: 'init', mode: 0o100755, data: Buffer.from(otaInitramfsInit({ modules: parts.modules })) },
  ]);
  return gzipSync(cpio, { level: 9 });
}

/**
 * Builds the disk image: MBR with partition 1 FAT (kernel8.img, initrd.img, config.txt,
 * cmdline.txt) and partition 2 ext4 (`mkfs.ext4 -d`, no root needed: inside `unshare -r` when not
 * root, so the files are root's, as dropbear wants authorized_keys to be).
 */
export async function buildOtaTestImage(o: OtaImageOptions): Promise<OtaImage> {
  const bootSize = o.bootPartitionSize ?? 16 * MiB;
  const rootSize = o.rootPartitionSize ?? 12 * MiB;
  if (rootSize % MiB !== 0 || bootSize % MiB !== 0) throw new Error('partition sizes must be whole MiB');
  const rootOffset = BOOT_PARTITION_OFFSET + bootSize;
  const size = rootOffset + rootSize;
  const cmdline = otaCmdline();
  const [kernel, initramfs, applets] = await Promise.all([
    readFile(o.parts.kernelGz),
    buildOtaInitramfs(o.parts),
    busyboxApplets(o.parts.busybox),
  ]);
  await buildDiskImage({
    path: o.path,
    size,
    bootPartitionSize: bootSize,
    files: {
      // As Raspberry Pi OS's boot partition names its build. First, so its cluster is the partition's
      // first: two images differ in their first 8 MiB too, not only in the root.
      'issue.txt': `rpi-flash OTA test image ${o.label} (${o.marker})\n`,
      'kernel8.img': kernel,
      'initrd.img': initramfs,
      'config.txt': OTA_CONFIG_TXT,
      'cmdline.txt': `${cmdline}\n`,
    },
  });
  await run(
    'sfdisk',
    ['--append', '--no-reread', '--no-tell-kernel', '-q', o.path],
    `start=${rootOffset / SECTOR}, size=${rootSize / SECTOR}, type=83\n`,
  );
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-ota-root-'));
  try {
    const tree = join(dir, 'root');
    await rootTree(tree, o, applets);
    const fs = join(dir, 'root.ext4');
    const mkfs = [
      'mkfs.ext4',
      '-q',
      '-F',
      '-L',
      'rootfs',
      '-E',
      'root_owner=0:0',
      '-d',
      tree,
      fs,
      `${rootSize / 1024}k`,
    ];
    // Not root: the files are ours; inside a user namespace that maps us to root they are root's.
    const asRoot = process.getuid?.() === 0 ? mkfs : ['unshare', '-r', ...mkfs];
    await run(asRoot[0]!, asRoot.slice(1));
    await copyInto(o.path, fs, rootOffset);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return {
    path: o.path,
    size,
    marker: o.marker,
    cmdline,
    boot: { offset: BOOT_PARTITION_OFFSET, size: bootSize },
    root: { offset: rootOffset, size: rootSize },
  };
}

/** The root file system's folder tree for mkfs.ext4 -d. */
async function rootTree(tree: string, o: OtaImageOptions, applets: string[]): Promise<void> {
  for (const sub of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'run', 'tmp', 'mnt', 'srv', 'var'])
    await mkdir(join(tree, sub), { recursive: true });
  // busybox, dropbear, the loader and libraries as prepared; the modules stay in the initramfs.
  await run('cp', ['-a', join(o.parts.rootfs, 'bin'), join(o.parts.rootfs, 'usr'), join(o.parts.rootfs, 'lib'), tree]);
  await rm(join(tree, 'lib', 'modules'), { recursive: true, force: true });
  for (const name of applets) if (name !== 'busybox') await symlink('busybox', join(tree, 'bin', name));
  await chmod(join(tree, 'tmp'), 0o1777);

  const sshPort = o.sshPort ?? 22;
  await writeFile(
    join(tree, 'sbin', 'init'),
    otaRootInit({
      marker: o.marker,
      label: o.label,
      address: o.address ?? OTA_BOARD_ADDRESS,
      gateway: o.gateway,
      sshPort,
    }),
    { mode: 0o755 },
  );
  const etc = join(tree, 'etc');
  await mkdir(join(etc, 'dropbear'), { recursive: true });
  await writeFile(join(etc, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(etc, 'group'), 'root:x:0:\ntty:x:5:\n');
  await writeFile(join(etc, 'shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o600 });
  await writeFile(join(etc, 'shells'), '/bin/sh\n');
  await writeFile(join(etc, 'nsswitch.conf'), 'passwd: files\ngroup: files\nshadow: files\n');
  await writeFile(join(etc, 'hostname'), `rpi-flash-ota-${o.label.toLowerCase()}\n`);
  await writeFile(join(tree, MARKER_FILE), `${o.marker}\n`);
  await writeFile(join(tree, PAYLOAD_FILE), payloadBytes(o.marker, o.payloadBytes ?? 256 * 1024));
  await writeFile(join(etc, 'dropbear', 'dropbear_ed25519_host_key'), await readFile(o.keys.host.dropbearFile), {
    mode: 0o600,
  });
  // dropbear refuses an authorized_keys that others may write, or in a folder they may.
  await mkdir(join(tree, 'root', '.ssh'), { recursive: true, mode: 0o700 });
  await chmod(join(tree, 'root'), 0o700);
  await chmod(join(tree, 'root', '.ssh'), 0o700);
  await writeFile(join(tree, 'root', '.ssh', 'authorized_keys'), `${o.keys.client.publicLine}\n`, { mode: 0o600 });
}

/** Writes all of `src` into `dest` at `offset` without truncating `dest`. */
async function copyInto(dest: string, src: string, offset: number): Promise<void> {
  const data = await readFile(src);
  const fd = await open(dest, 'r+');
  try {
    let done = 0;
    while (done < data.length) done += (await fd.write(data, done, data.length - done, offset + done)).bytesWritten;
  } finally {
    await fd.close();
  }
}

async function run(cmd: string, args: string[], input?: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = execFile(cmd, args, { maxBuffer: 4 * 1024 * 1024 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve();
    });
    child.stdin!.end(input ?? '');
  });
}
