/**
 * The in-place update's look at a running board before anything is touched (layout `ota`): one
 * POSIX sh snippet, run over SSH with the board's own tools (`uname`, `id`, `cat` — busybox
 * applets suffice), prints tagged sections of what the kernel says; `parseBoardProbe` reads them
 * and `boardProblems` says, in sentences, why the board cannot take the update. The parser is
 * held to recorded outputs of real systems in the tests and to one real run on a loopback server.
 */

/** Section tags: a line of its own, never part of the kernel's files. */
const TAG = '@@rpf-';

export const PROBE_COMMAND = [
  `echo ${TAG}arch; uname -m`,
  `echo ${TAG}uid; id -u`,
  // Only a user that is not root needs sudo; -n: never a password prompt.
  `echo ${TAG}sudo; if [ "$(id -u)" != 0 ]; then sudo -n true </dev/null >/dev/null 2>&1 && echo yes || echo no; fi`,
  `echo ${TAG}meminfo; cat /proc/meminfo`,
  `echo ${TAG}mountinfo; cat /proc/self/mountinfo`,
  `echo ${TAG}cmdline; cat /proc/cmdline`,
  `echo ${TAG}ssh; echo "$SSH_CONNECTION"`,
  `echo ${TAG}init; cat /proc/1/comm`,
  // name, major:minor, partition or disk, and the parent folder in sysfs (a partition's disk).
  `echo ${TAG}block; for d in /sys/class/block/*; do [ -e "$d/dev" ] || continue; ` +
    'p=$(cd -P "$d/.." 2>/dev/null && pwd -P); ' +
    'if [ -e "$d/partition" ]; then k=part; else k=disk; fi; ' +
    'echo "${d##*/} $(cat "$d/dev") $k ${p##*/}"; done',
  `echo ${TAG}end`,
].join('\n');

export interface MountEntry {
  majorMinor: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

export interface BlockDevice {
  name: string;
  majorMinor: string;
  kind: 'part' | 'disk';
  /** For a partition: the disk it belongs to (its parent in sysfs). */
  parent: string;
}

export interface BoardProbe {
  /** `uname -m`: aarch64, armv7l… */
  machine: string;
  uid: number | undefined;
  /** A user that is not root may run `sudo -n`; undefined for root. */
  sudo: boolean | undefined;
  /** Bytes the kernel says it can give without swapping (MemAvailable, else MemFree + Cached). */
  memAvailable: number | undefined;
  memTotal: number | undefined;
  mounts: MountEntry[];
  cmdline: string;
  /** The agent's address as the board sees it (first field of $SSH_CONNECTION). */
  sshClientAddress: string | undefined;
  init: string;
  blocks: BlockDevice[];
  /** The probe ran to its end (a truncated output proves nothing). */
  complete: boolean;
}

function sections(output: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of output.split('\n')) {
    if (line.startsWith(TAG)) {
      current = [];
      out.set(line.slice(TAG.length).trim(), current);
    } else current?.push(line);
  }
  return out;
}

/** `\040` and friends in mountinfo paths. */
function unescapeMount(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountinfo(lines: readonly string[]): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of lines) {
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const left = line.slice(0, dash).split(' ');
    const right = line.slice(dash + 3).split(' ');
    if (left.length < 5 || right.length < 2) continue;
    out.push({
      majorMinor: left[2]!,
      mountPoint: unescapeMount(left[4]!),
      fsType: right[0]!,
      source: unescapeMount(right[1]!),
    });
  }
  return out;
}

function meminfoBytes(lines: readonly string[], key: string): number | undefined {
  const line = lines.find((l) => l.startsWith(`${key}:`));
  const m = line && /:\s*(\d+)\s*kB/.exec(line);
  return m ? Number(m[1]) * 1024 : undefined;
}

export function parseBoardProbe(output: string): BoardProbe {
  const s = sections(output);
  const first = (key: string) => (s.get(key) ?? []).find((l) => l.trim() !== '')?.trim() ?? '';
  const meminfo = s.get('meminfo') ?? [];
  const available = meminfoBytes(meminfo, 'MemAvailable');
  const free = meminfoBytes(meminfo, 'MemFree');
  const cached = meminfoBytes(meminfo, 'Cached');
  const uidText = first('uid');
  const sudoText = first('sudo');
  const blocks: BlockDevice[] = [];
  for (const line of s.get('block') ?? []) {
    const [name, majorMinor, kind, parent] = line.trim().split(/\s+/);
    if (!name || !majorMinor || (kind !== 'part' && kind !== 'disk')) continue;
    blocks.push({ name, majorMinor, kind, parent: parent ?? '' });
  }
  return {
    machine: first('arch'),
    uid: /^\d+$/.test(uidText) ? Number(uidText) : undefined,
    sudo: sudoText === 'yes' ? true : sudoText === 'no' ? false : undefined,
    memAvailable: available ?? (free !== undefined && cached !== undefined ? free + cached : free),
    memTotal: meminfoBytes(meminfo, 'MemTotal'),
    mounts: parseMountinfo(s.get('mountinfo') ?? []),
    cmdline: first('cmdline'),
    sshClientAddress: first('ssh').split(/\s+/)[0] || undefined,
    init: first('init'),
    blocks,
    complete: s.has('end'),
  };
}

/** Debian architectures whose static busybox runs on a kernel of this `uname -m`, best first. */
export function busyboxArchesFor(machine: string): string[] {
  if (machine === 'aarch64' || machine === 'arm64') return ['arm64', 'armhf', 'armel'];
  if (machine === 'armv7l' || machine === 'armv8l') return ['armhf', 'armel'];
  if (/^armv[56]/.test(machine)) return ['armel'];
  return [];
}

/** File systems a whole-disk write can sit under once they are read-only or frozen. */
const LOCAL_FS = new Set(['ext2', 'ext3', 'ext4', 'btrfs', 'f2fs', 'xfs', 'vfat', 'squashfs', 'erofs']);
/** RAM file systems the new root may be made in (a folder of theirs is no write to the card). */
export const RAM_FS = new Set(['tmpfs', 'devtmpfs', 'ramfs']);
const RAM_DIRS = ['/run', '/dev/shm', '/tmp', '/dev'];

export interface RootDevice {
  /** The root file system's partition (`/dev/mmcblk0p2`) and the whole disk it is on (`/dev/mmcblk0`). */
  partition: string;
  disk: string;
  fsType: string;
}

/** Where `/` lives, or why it cannot be written from under it. */
export function rootDevice(probe: BoardProbe): RootDevice | string {
  const root = [...probe.mounts].reverse().find((m) => m.mountPoint === '/');
  if (!root) return 'no "/" mount in /proc/self/mountinfo';
  if (!LOCAL_FS.has(root.fsType))
    return `the root file system is ${root.fsType} (${root.source}), not a partition of a local disk`;
  const part = probe.blocks.find((b) => b.majorMinor === root.majorMinor);
  if (!part) return `no block device ${root.majorMinor} for the root file system ${root.source} in /sys/class/block`;
  if (part.kind !== 'part')
    return (
      `the root file system is on the whole disk /dev/${part.name}, not on a partition: ` +
      'the update would write it in use'
    );
  const disk = probe.blocks.find((b) => b.name === part.parent && b.kind === 'disk');
  if (!disk) return `the partition /dev/${part.name} has no disk in /sys/class/block (parent "${part.parent}")`;
  return { partition: `/dev/${part.name}`, disk: `/dev/${disk.name}`, fsType: root.fsType };
}

/** The first RAM file system mounted at one of the usual places. */
export function ramDir(probe: BoardProbe): string | undefined {
  for (const dir of RAM_DIRS) {
    const m = [...probe.mounts].reverse().find((e) => e.mountPoint === dir);
    if (m && RAM_FS.has(m.fsType)) return dir;
  }
  return undefined;
}

export interface BoardNeeds {
  /** Bytes the RAM system needs: one part, the busybox binary and a margin. */
  ramBytes: number;
  /** Debian architectures for which the agent carries a static busybox. */
  busyboxArches: readonly string[];
}

/** Why the board cannot take the in-place update, one sentence each; empty when it can. */
export function boardProblems(probe: BoardProbe, needs: BoardNeeds): string[] {
  const problems: string[] = [];
  if (!probe.complete) problems.push('the probe did not run to its end (is the login shell a POSIX sh?)');
  const arches = busyboxArchesFor(probe.machine);
  if (!arches.length) problems.push(`the architecture "${probe.machine || '?'}" is not an ARM the agent can serve`);
  else if (!arches.some((a) => needs.busyboxArches.includes(a)))
    problems.push(
      `the agent carries no static busybox for "${probe.machine}" (needs ota.busybox.${arches.join(' or ')}, ` +
        `has ${needs.busyboxArches.join(', ') || 'none'})`,
    );
  if (probe.uid === undefined) problems.push('"id -u" printed no user id');
  else if (probe.uid !== 0 && probe.sudo !== true)
    problems.push(`the login user (uid ${probe.uid}) is not root and cannot run "sudo -n" without a password`);
  if (probe.memAvailable === undefined) problems.push('/proc/meminfo shows no MemAvailable or MemFree');
  else if (probe.memAvailable < needs.ramBytes)
    problems.push(
      `not enough free RAM: ${mib(probe.memAvailable)} available, the RAM system needs ${mib(needs.ramBytes)} ` +
        '(one part, busybox and a margin: lower ota.partSize)',
    );
  const root = rootDevice(probe);
  if (typeof root === 'string') problems.push(root);
  if (!ramDir(probe)) problems.push(`no RAM file system (tmpfs) at ${RAM_DIRS.join(', ')} to build the RAM system in`);
  return problems;
}

function mib(bytes: number): string {
  return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}
