/**
 * The network-boot test operating system (issue 11): a disk image laid out like Raspberry Pi OS's
 * (MBR; partition 1 FAT boot at 4 MiB with kernel8.img, initrd.img, config.txt, cmdline.txt;
 * partition 2 ext4 root) whose initramfs takes the root from an NBD export instead of the card.
 *
 * The kernel is Debian's arm64 one (scripts/prepare-test-kernel.sh); the initramfs holds what
 * scripts/prepare-netboot-os.sh fetched from Debian for that kernel — busybox-static, nbd-client
 * with its libraries and loader, the modules (virtio over MMIO, virtio_net, nbd, ext4) — and an
 * `/init` shell script written here. The root partition's `/sbin/init` is os-image.ts's few-line
 * assembly program that prints the image's marker and powers off: the marker on the console proves
 * the kernel ran the root that came over NBD.
 *
 * `/init` reads `nbdroot=` and `root=` from /proc/cmdline in the grammar of Debian's own
 * initramfs script (nbd-client's usr/share/initramfs-tools/scripts/local-top/nbd), so a command
 * line that boots Debian over NBD boots this image too. The image's own cmdline.txt (cardCmdline:
 * `root=PARTUUID=5250460a-02`, what stage 1 passes when it boots the card after a flash) makes
 * `/init` skip the network and mount partition 2 of the card instead; that needs the card's driver
 * (sdhci-pci and its dependencies) among the prepared modules, or `/init` fails `at card`.
 */
import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, open, readdir, readFile, readlink, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import {
  BOOT_PARTITION_OFFSET,
  BOOT_PARTITION_START_SECTOR,
  buildDiskImage,
  buildInit,
  cpioNewc,
  osImageToolsAvailable,
  type CpioEntry,
  type InitEnding,
} from './os-image.js';
import { inCi } from './test-uboot.js';

const execFileAsync = promisify(execFile);

export const PREPARE_NETBOOT_OS_SCRIPT = fileURLToPath(new URL('../../scripts/prepare-netboot-os.sh', import.meta.url));
export const HOW_TO_PREPARE_NETBOOT_OS = 'bash scripts/prepare-netboot-os.sh';
/** The kernel package (~60 MB) and a dozen small ones from deb.debian.org, unpacked once. */
export const PREPARE_NETBOOT_OS_TIMEOUT_MS = 15 * 60_000;

const SECTOR = 512;
const MiB = 1024 * 1024;
/** The MBR disk identifier buildDiskImage writes: partitions are PARTUUID=5250460a-0N. */
export const DISK_ID = '5250460a';
export const ROOT_PARTUUID = `${DISK_ID}-02`;

/** What every line `/init` prints starts with. */
export const NETBOOT_PREFIX = 'rpi-flash netboot:';
/**
 * The lines `/init` prints, in order, for the test to follow (each a RegExp on the console).
 * `failed` is the one line printed when any step fails (then the VM powers off).
 */
export const NETBOOT_LINES = {
  start: /rpi-flash netboot: initramfs started/,
  modules: /rpi-flash netboot: modules loaded/,
  link: /rpi-flash netboot: eth0 is up/,
  address: /rpi-flash netboot: address (\d+\.\d+\.\d+\.\d+)\/(\d+) from DHCP server (\d+\.\d+\.\d+\.\d+)/,
  nbdroot: /rpi-flash netboot: nbd root: server (\S+) port (\S+) export (\S+) device (\S+)/,
  connected: /rpi-flash netboot: (\S+) connected/,
  mounted: /rpi-flash netboot: mounted (\S+) read-write on \/newroot/,
  wrote: /rpi-flash netboot: wrote \/newroot\/(\S+)/,
  switching: /rpi-flash netboot: switching to the root on (\S+)/,
  failed: /rpi-flash netboot: FAILED at ([a-z-]+): [^\r\n]*/,
} as const;
/**
 * What `/init` prints instead of the network steps when the command line names a root on the card
 * (`root=PARTUUID=…` or `root=/dev/mmcblk…`, the image booted from its own card): then `mounted`,
 * `wrote` and `switching` of NETBOOT_LINES follow; a card that never shows fails `at card`.
 */
export const CARD_ROOT_LINES = {
  root: /rpi-flash netboot: card root (\S+) is (\S+)/,
} as const;
/** The file `/init` writes on the NBD root before switching to it (proof that the root is writable). */
export const ROOT_PROOF_FILE = 'rpi-flash-netboot.txt';

/** What scripts/prepare-netboot-os.sh made: one folder per kernel and package versions. */
export interface NetbootOsParts {
  dir: string;
  /** The kernel the modules belong to. */
  kernelImage: string;
  /** The modules' folder name under /lib/modules (e.g. 6.1.0-57-arm64). */
  kernelRelease: string;
  /** Module paths inside `rootfs`, in load order. */
  modules: string[];
  /** busybox, nbd-client, its libraries and loader, the modules: copied into the initramfs as they are. */
  rootfs: string;
}

async function partsIn(dir: string): Promise<NetbootOsParts> {
  const lines = (text: string) =>
    text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
  return {
    dir,
    kernelImage: join(dir, 'Image'),
    kernelRelease: (await readFile(join(dir, 'kernel-release'), 'utf8')).trim(),
    modules: lines(await readFile(join(dir, 'modules.load'), 'utf8')),
    rootfs: join(dir, 'rootfs'),
  };
}

/** A folder the prepare script made (or a copy of one made with other modules), read as it is. */
export async function readNetbootOsParts(dir: string): Promise<NetbootOsParts> {
  return partsIn(dir);
}

/** The prepared folder, without downloading; undefined when there is none yet. */
export async function findNetbootOsParts(): Promise<NetbootOsParts | undefined> {
  try {
    const { stdout } = await execFileAsync('bash', [PREPARE_NETBOOT_OS_SCRIPT, '--cached-only']);
    return await partsIn(stdout.trim());
  } catch {
    return undefined;
  }
}

/** Runs the prepare script (it only prints the folder when it is done already). */
export async function prepareNetbootOsParts(): Promise<NetbootOsParts> {
  try {
    const { stdout } = await execFileAsync('bash', [PREPARE_NETBOOT_OS_SCRIPT], {
      timeout: PREPARE_NETBOOT_OS_TIMEOUT_MS,
      maxBuffer: 16 * 1024 * 1024,
    });
    return await partsIn(stdout.trim());
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${HOW_TO_PREPARE_NETBOOT_OS} failed: ${e.message}\n${(e.stderr ?? '').slice(-4000)}`, {
      cause: err,
    });
  }
}

/** The tools that build the image: os-image.ts's, mkfs.ext4 for the root, and the prepare script's. */
export async function netbootImageToolsAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  const base = await osImageToolsAvailable();
  if (!base.ok) return base;
  for (const [tool, pkg] of [
    ['mkfs.ext4', 'e2fsprogs'],
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
 * How a network-boot test gates itself: skip on a developer machine without the tools or the
 * prepared folder (saying how to get them); in CI prepare it, and fail when a tool is missing.
 */
export async function netbootOsGate(): Promise<{ run: boolean; reason: string; parts(): Promise<NetbootOsParts> }> {
  const tools = await netbootImageToolsAvailable();
  const found = await findNetbootOsParts();
  const run = (tools.ok && found !== undefined) || inCi;
  const reason = !tools.ok
    ? tools.reason
    : found
      ? ''
      : `the network-boot test OS is not prepared; run: ${HOW_TO_PREPARE_NETBOOT_OS}`;
  return {
    run,
    reason,
    async parts() {
      if (!tools.ok) throw new Error(`the network-boot tests need: ${tools.reason}`);
      return found ?? prepareNetbootOsParts();
    },
  };
}

/** busybox udhcpc's script: configure eth0 from the lease and keep what /init needs in a file. */
export const UDHCPC_SCRIPT = `#!/bin/sh
# udhcpc calls this with deconfig, bound, renew, leasefail or nak; the lease is in the environment.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set dev "$interface" up
	;;
bound|renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface" || exit 1
	for r in $router; do ip route add default via "$r" dev "$interface" && break; done
	# What Debian's initramfs calls ROOTSERVER and ROOTPATH: the next server (siaddr) and option 17.
	{
		echo "IP=$ip"
		echo "MASK=$mask"
		echo "DHCPSERVER=$serverid"
		echo "ROOTSERVER=\${siaddr:-$serverid}"
		echo "ROOTPATH=$rootpath"
	} >/run/net-$interface.conf
	;;
esac
exit 0
`;

/**
 * `/init` of the network-boot initramfs. Every step prints one line (NETBOOT_LINES); any failure
 * prints `FAILED at <step>: <why>` and powers the VM off, so a test sees why at once instead of
 * waiting for a timeout.
 */
export function netbootInitScript(o: { modules: string[] }): string {
  for (const m of o.modules)
    if (!/^[A-Za-z0-9._/+-]+\.ko$/.test(m)) throw new Error(`module path ${JSON.stringify(m)} is not a plain .ko path`);
  return `#!/bin/busybox sh
# rpi-flash network-boot test initramfs (test/qemu/netboot-os.ts): modules, DHCP, NBD root, switch_root.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /run /tmp /newroot
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

say() { echo "${NETBOOT_PREFIX} $*"; }
fail() {
	echo "${NETBOOT_PREFIX} FAILED at $1: $2"
	dmesg 2>/dev/null | tail -n 20
	sync
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
say "modules loaded"

# Mount $ROOT read-write, prove it writable, switch to it: the end of both roots' paths.
boot_root() {
	mount -t \${rootfstype:-ext4} -o rw "$ROOT" /newroot || fail mount "cannot mount $ROOT read-write"
	say "mounted $ROOT read-write on /newroot"
	echo "written by the network-boot initramfs at $(cat /proc/uptime)" >/newroot/${ROOT_PROOF_FILE} ||
		fail mount "cannot write to the root on $ROOT"
	sync
	say "wrote /newroot/${ROOT_PROOF_FILE}"
	[ -x /newroot/sbin/init ] || fail switch-root "the root on $ROOT has no /sbin/init"

	say "switching to the root on $ROOT"
	[ -d /newroot/dev ] && mount --move /dev /newroot/dev
	umount /sys
	umount /proc
	exec switch_root /newroot /sbin/init
	fail switch-root "switch_root did not start /sbin/init"
}

# The partition whose PARTUUID is $1 (<MBR disk id>-<number>, as the kernel spells it: the disk id
# is the little-endian word at byte 440, which od -tx4 reads as the kernel does on arm64).
partuuid_dev() {
	want=$(echo "$1" | tr A-F a-f)
	for p in /sys/class/block/*; do
		[ -r "$p/partition" ] || continue
		disk=$(basename "$(dirname "$(readlink -f "$p")")")
		sig=$(od -An -tx4 -j440 -N4 "/dev/$disk" 2>/dev/null | tr -d ' ')
		[ -n "$sig" ] || continue
		if [ "$(printf '%s-%02x' "$sig" "$(cat "$p/partition")")" = "$want" ]; then
			echo "/dev/\${p##*/}"
			return 0
		fi
	done
	return 1
}

# The root on the card (the image booted from its own card, as stage 1 boots it after a flash):
# root=PARTUUID=... as Raspberry Pi OS's cmdline.txt names it, or a card device. No network then.
for x in $(cat /proc/cmdline); do
	case "$x" in
	root=PARTUUID=*) cardroot="\${x#root=PARTUUID=}" ;;
	root=/dev/mmcblk*) carddev="\${x#root=}" ;;
	rootfstype=*) rootfstype="\${x#rootfstype=}" ;;
	esac
done
if [ -n "$cardroot" ] || [ -n "$carddev" ]; then
	i=0
	while :; do
		if [ -n "$carddev" ]; then
			[ -b "$carddev" ] && ROOT=$carddev && break
		else
			ROOT=$(partuuid_dev "$cardroot") && break
		fi
		i=$((i + 1))
		[ $i -le 100 ] || fail card "no block device for root \${cardroot:+PARTUUID=$cardroot}$carddev after 10 s"
		sleep 0.1
	done
	say "card root \${cardroot:+PARTUUID=$cardroot}$carddev is $ROOT"
	boot_root
fi

i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	[ $i -le 100 ] || fail link "no eth0 after 10 s (is the NIC virtio-net on virtio-mmio?)"
	sleep 0.1
done
ip link set lo up
ip link set eth0 up || fail link "cannot bring eth0 up"
say "eth0 is up"

udhcpc -i eth0 -s /etc/udhcpc.script -n -q -f -t 10 -T 2 >/dev/null 2>&1 || fail dhcp "no DHCP lease on eth0"
[ -r /run/net-eth0.conf ] || fail dhcp "udhcpc bound no address"
. /run/net-eth0.conf
say "address $IP/$MASK from DHCP server $DHCPSERVER"

# The kernel command line, read as Debian's initramfs script local-top/nbd (from nbd-client) reads it.
for x in $(cat /proc/cmdline); do
	case "$x" in
	nbddev=*) nbddev="\${x#nbddev=}" ;;
	nbdroot=*) nbdroot="\${x#nbdroot=}" ;;
	root=/dev/nbd*) nbddev="\${x#root=}" ;;
	rootfstype=*) rootfstype="\${x#rootfstype=}" ;;
	esac
done
[ -n "$nbdroot" ] || [ -n "$nbddev" ] ||
	fail cmdline "no nbdroot= and no root=/dev/nbd* on the command line: $(cat /proc/cmdline)"
ROOT="$nbddev"

case "$nbdroot" in
''|dhcp) nbdroot=$ROOTPATH ;;
esac
nbdrootdev="$nbddev"
nbdbasedev="\${nbddev#/dev/}"
case "$nbdroot" in
*,*,*)
	nbdsrv="\${nbdroot%%,*}"
	nbdpath="\${nbdroot%,*}"
	nbdpath="\${nbdpath##*,}"
	if [ -z "$nbdrootdev" ]; then
		nbdbasedev="\${nbdroot##*,}"
		nbdrootdev=/dev/$nbdbasedev
		ROOT=$nbdrootdev
	fi
	;;
*,*)
	nbdsrv="\${nbdroot%,*}"
	nbdport="\${nbdroot#*,}"
	;;
\\[*\\]:/*)
	nbdsrv=\${nbdroot%\\]*}
	nbdsrv=\${nbdsrv#\\[}
	nbdpath=\${nbdroot#\\[$nbdsrv\\]}
	nbdpath=\${nbdpath#:}
	;;
\\[*\\]*)
	nbdsrv=\${nbdroot%\\]*}
	nbdsrv=\${nbdsrv#\\[}
	nbdportpath=\${nbdroot#\\[$nbdsrv\\]}
	nbdportpath=\${nbdportpath#:}
	nbdport=\${nbdportpath%%/*}
	nbdpath=\${nbdportpath#$nbdport/}
	;;
/*|*:/*)
	nbdsrv=\${nbdroot%%[:/]*}
	nbdpath=\${nbdroot#$nbdsrv}
	nbdpath=\${nbdpath#:}
	;;
*)
	nbdsrv=\${nbdroot%%[:/]*}
	nbdportpath=\${nbdroot#$nbdsrv}
	nbdportpath=\${nbdportpath#:}
	nbdport=\${nbdportpath%%/*}
	nbdpath=\${nbdportpath#$nbdport/}
	;;
esac
nbdrootdev=\${nbdrootdev%p*}
nbdbasedev=\${nbdbasedev%p*}
case "$nbdsrv" in
''|dhcp) nbdsrv=$ROOTSERVER ;;
esac
if [ -z "$nbdsrv" ] || [ -z "$nbdrootdev" ] || [ -z "$nbdpath" ]; then
	fail cmdline "insufficient information to set up nbd (nbdroot=$nbdroot, host=$nbdsrv, name=$nbdpath, \\
port=$nbdport, nbd-device=$nbdrootdev)"
fi
say "nbd root: server $nbdsrv port \${nbdport:-10809} export $nbdpath device $nbdrootdev"

# As Debian's script runs it; the libraries and the loader are under /lib.
nbd-client $nbdsrv -N $nbdpath $nbdport $nbdrootdev -swap -persist -systemd-mark ||
	fail nbd "nbd-client could not connect $nbdrootdev to $nbdsrv"
i=0
while [ ! -b "$ROOT" ] || [ "$(cat /sys/block/$nbdbasedev/size 2>/dev/null || echo 0)" = 0 ]; do
	i=$((i + 1))
	[ $i -le 100 ] || fail nbd "$ROOT did not appear within 10 s"
	sleep 0.1
done
say "$nbdrootdev connected"

boot_root
`;
}

/** The entries of a folder tree for cpioNewc, parents before children, under `prefix`. */
async function treeEntries(dir: string, prefix = ''): Promise<CpioEntry[]> {
  const out: CpioEntry[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const path = join(dir, name);
    const rel = prefix ? `${prefix}/${name}` : name;
    const st = await lstat(path);
    if (st.isDirectory()) {
      out.push({ name: rel, mode: 0o40755 });
      out.push(...(await treeEntries(path, rel)));
    } else if (st.isSymbolicLink()) {
      out.push({ name: rel, mode: 0o120777, data: Buffer.from(await readlink(path)) });
    } else if (st.isFile()) {
      out.push({ name: rel, mode: 0o100000 | (st.mode & 0o777), data: await readFile(path) });
    } else {
      throw new Error(`${path}: only folders, files and symlinks go into the initramfs`);
    }
  }
  return out;
}

/** The gzip'd newc initramfs: the prepared rootfs, /init, the udhcpc script and /dev/console. */
export async function buildNetbootInitramfs(parts: NetbootOsParts): Promise<Buffer> {
  const tree = await treeEntries(parts.rootfs);
  const names = new Set(tree.map((e) => e.name));
  const dirs = ['dev', 'etc', 'run'].filter((d) => !names.has(d));
  const cpio = cpioNewc([
    ...tree,
    ...dirs.map((name) => ({ name, mode: 0o40755 })),
    // The kernel opens /dev/console for init before /init mounts devtmpfs.
    { name: 'dev/console', mode: 0o20600, rdev: [5, 1] },
    { name: 'etc/udhcpc.script', mode: 0o100755, data: Buffer.from(UDHCPC_SCRIPT) },
    { name: 'init', mode: 0o100755, data: Buffer.from(netbootInitScript({ modules: parts.modules })) },
  ]);
  return gzipSync(cpio, { level: 6 });
}

/** A Raspberry Pi OS style cmdline.txt for this image booted from its card (the root on partition 2). */
export function cardCmdline(extra = ''): string {
  const words = ['console=ttyAMA0,115200', `root=PARTUUID=${ROOT_PARTUUID}`, 'rootfstype=ext4', 'fsck.repair=yes'];
  return [...words, 'rootwait', extra].join(' ').trim();
}

/** config.txt: the names the Pi firmware loads (kernel8.img, initrd.img after it), the serial console. */
export const CONFIG_TXT = [
  'arm_64bit=1',
  'kernel=kernel8.img',
  'initramfs initrd.img followkernel',
  'enable_uart=1',
  '',
].join('\n');

/**
 * The command line with the root moved to NBD, in the grammar of Debian's local-top/nbd:
 * `root=/dev/nbd0 nbdroot=<server>:<port>/<export>` (or `<server>/<export>` on port 10809). Every
 * other word stays. This is what a network boot must serve as cmdline.txt for this image.
 */
export function nbdRootCmdline(cmdline: string, o: { server: string; port?: number; exportName: string }): string {
  if (!/^[A-Za-z0-9._-]+$/.test(o.exportName))
    throw new Error(`export name ${JSON.stringify(o.exportName)} is not plain`);
  const where = o.port === undefined ? `${o.server}/${o.exportName}` : `${o.server}:${o.port}/${o.exportName}`;
  const kept = cmdline
    .trim()
    .split(/\s+/)
    .filter((w) => !/^(root|nbdroot|nbddev)=/.test(w));
  return [...kept, 'root=/dev/nbd0', `nbdroot=${where}`].join(' ');
}

export interface NetbootImageOptions {
  /** Output file; created or overwritten. */
  path: string;
  parts: NetbootOsParts;
  /** What the root's /sbin/init prints after INIT_BANNER. */
  marker: string;
  /** What the root's /sbin/init does after printing: power off (QEMU exits 0, the default) or sleep. */
  ending?: InitEnding;
  /** Boot partition size (from 4 MiB); 56 MiB by default: the 33 MB kernel and the initramfs. */
  bootPartitionSize?: number;
  /** Root partition size, right after the boot partition; 32 MiB by default. */
  rootPartitionSize?: number;
  /** cmdline.txt; cardCmdline() by default. */
  cmdline?: string;
  /**
   * Called with the root file system's folder before `mkfs.ext4 -d` reads it (it holds sbin/init
   * and etc/ already): the caller adds content, e.g. a benchmark's few hundred MiB of real files.
   */
  populateRoot?: (tree: string) => Promise<void>;
}

export interface NetbootImage {
  initramfs: Buffer;
  cmdline: string;
  /** Byte offsets and sizes of the two partitions (for nbdkit's partition filter: partition 2). */
  boot: { offset: number; size: number };
  root: { offset: number; size: number };
}

/**
 * Builds the disk image: MBR with partition 1 FAT (kernel8.img, initrd.img, config.txt,
 * cmdline.txt) and partition 2 ext4 (made with `mkfs.ext4 -d`, no root needed) holding
 * `/sbin/init`, which prints the marker.
 */
export async function buildNetbootTestImage(o: NetbootImageOptions): Promise<NetbootImage> {
  const bootSize = o.bootPartitionSize ?? 56 * MiB;
  const rootSize = o.rootPartitionSize ?? 32 * MiB;
  if (rootSize % MiB !== 0 || bootSize % MiB !== 0) throw new Error('partition sizes must be whole MiB');
  const rootOffset = BOOT_PARTITION_OFFSET + bootSize;
  const cmdline = o.cmdline ?? cardCmdline();
  const [kernel, initramfs, init] = await Promise.all([
    readFile(o.parts.kernelImage),
    buildNetbootInitramfs(o.parts),
    buildInit(o.marker, o.ending ?? 'poweroff'),
  ]);
  // The boot partition's image first, grown after: mkfs.vfat picks FAT32 for a file of 512 MiB or
  // more even when told the partition's size, and then refuses a partition this small for FAT32.
  await buildDiskImage({
    path: o.path,
    size: rootOffset,
    bootPartitionSize: bootSize,
    files: {
      'kernel8.img': kernel,
      'initrd.img': initramfs,
      'config.txt': CONFIG_TXT,
      'cmdline.txt': `${cmdline}\n`,
    },
  });
  await truncate(o.path, rootOffset + rootSize);
  // Partition 2 after the boot partition, as Raspberry Pi OS has its root.
  await run(
    'sfdisk',
    ['--append', '--no-reread', '--no-tell-kernel', '-q', o.path],
    `start=${rootOffset / SECTOR}, size=${rootSize / SECTOR}, type=83\n`,
  );
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-netboot-root-'));
  try {
    const tree = join(dir, 'root');
    for (const sub of ['sbin', 'dev', 'proc', 'sys', 'etc']) await mkdir(join(tree, sub), { recursive: true });
    await writeFile(join(tree, 'sbin', 'init'), init, { mode: 0o755 });
    await writeFile(join(tree, 'etc', 'rpi-flash-marker'), `${o.marker}\n`);
    await o.populateRoot?.(tree);
    const fs = join(dir, 'root.ext4');
    await run('mkfs.ext4', ['-q', '-F', '-L', 'rootfs', '-E', 'root_owner=0:0', '-d', tree, fs, `${rootSize / 1024}k`]);
    await copyInto(o.path, fs, rootOffset);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return {
    initramfs,
    cmdline,
    boot: { offset: BOOT_PARTITION_START_SECTOR * SECTOR, size: bootSize },
    root: { offset: rootOffset, size: rootSize },
  };
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
