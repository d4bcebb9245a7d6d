/**
 * What the TFTP server may serve: the files of targets that have a job right now, and nothing else.
 *
 * Every file of a target lives under `<tftp-root>/<macdir>/` (DESIGN §3.4). The folder on disk
 * holds the generated `flash.scr` and a `job.json` manifest so an operator can see what is staged;
 * the parts are never copied — they are served as byte ranges of the stored image. A folder exists
 * only while its target has a job: `unstage` removes it, and start-up removes any left by a crash.
 * The folder is the agent's alone (mode 0700): `flash.scr` holds the job's report secret, which no
 * other local user may read; over TFTP a folder is served only to its target's address.
 *
 * A job may also offer what the board's own firmware fetches when it boots from the network
 * (DESIGN §8, `StagedJob.firmware`): a few names at the root (`bootcode.bin` for the Pi 3 ROM,
 * U-Boot's distro-boot `boot.scr.uimg`), answered only to the address of the job's target since
 * the name says nothing of whose it is, and every file under the firmware's folder (serial, MAC or
 * TFTP_PREFIX_STR), straight out of the image's boot partition. Nothing of it is on disk.
 */
import { open, mkdir, rm, readdir, writeFile, rename, type FileHandle } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import path from 'node:path';
import type { Logger } from '../log.js';
import type { ImageView } from './image-view.js';
import type {
  TftpFile,
  TftpProgress,
  TftpRequest,
  TftpResolver,
  TftpWriteTarget,
  TransferEnd,
} from '../tftp/server.js';
import { TftpAccessError } from '../tftp/server.js';
import { clientText } from '../tftp/log-text.js';

/** A file a staged job offers, relative to its macdir. */
export type StagedFile =
  | { kind: 'buffer'; data: Buffer }
  /** `size` bytes of the image view from `offset` (zero-padded past the image's end). */
  | { kind: 'range'; view: ImageView; offset: number; size: number }
  /** A whole file on disk (a cached compressed part): `size` as it was when staged. */
  | { kind: 'file'; path: string; size: number }
  /**
   * `size` bytes gathered in order from several ranges of the image view (a FAT file whose
   * clusters are not contiguous): still read straight from the image, never copied.
   */
  | { kind: 'extents'; view: ImageView; extents: readonly ImageExtent[]; size: number };

/** A byte range of an image view. */
export interface ImageExtent {
  offset: number;
  size: number;
}

/**
 * What a job offers the board's own firmware when it boots from the network (DESIGN §8), beside
 * (not instead of) its macdir files: a layout that network-boots a board into U-Boot and then
 * flashes it stages both in one job.
 */
export interface FirmwareFiles {
  /**
   * The folder the firmware puts before every name after `bootcode.bin` (the target's
   * `netboot.folder`): `1a2b3c4d`, `dc-a6-32-01-36-c2` (which is the macdir: macdir files are
   * looked up first) or a TFTP_PREFIX_STR folder. Matched without case.
   */
  folder: string;
  /** Paths relative to the folder, lower case (`start.elf`, `overlays/vc4-kms-v3d.dtbo`). */
  files: ReadonlyMap<string, StagedFile>;
  /**
   * Names asked for without the folder, answered from `files` to the target's address only.
   * Default ROOT_FIRMWARE_NAMES. `bootsig.bin` is never served: the ROM expects "not found".
   */
  rootNames?: readonly string[];
  /** The TFTP block size the firmware transfers with (firmwareBlksize): files over 65535 blocks warn. */
  blksize: number;
  /** Every request of the firmware's sequence, served or not ("not found" is normal for most names). */
  onRequest?(r: FirmwareRequest, req: TftpRequest): void;
  /** A transfer of a firmware file moved on: what the board acknowledged so far. */
  onProgress?(name: string, p: TftpProgress): void;
  /**
   * A transfer of a firmware file ended. `probe`: the client stopped it after at most one block
   * (an ERROR or silence), as the ROM does with `<folder>/start.elf` to learn whether the folder
   * exists: normal, no failure.
   */
  onTransferEnd?(name: string, t: TransferEnd, probe: boolean): void;
}

export interface FirmwareRequest {
  /** Relative to the folder, or the root name (`bootcode.bin`), lower case. */
  name: string;
  atRoot: boolean;
  found: boolean;
}

/** What the Pi 3 ROM fetches before it knows its folder, and U-Boot's distro boot script. */
export const ROOT_FIRMWARE_NAMES: readonly string[] = ['bootcode.bin', 'boot.scr.uimg'];
/** The ROM asks for it right after bootcode.bin and goes on only when it is not found. */
const BOOTSIG = 'bootsig.bin';
/** TFTP block numbers are 16 bits: a longer file wraps them, which older firmware gets wrong. */
const MAX_UNWRAPPED_BLOCKS = 65535;

export interface StagedJob {
  jobId: string;
  /** The target's IP: requests from any other address are refused (unless checkClientIp is off). */
  targetIp: string;
  files: Map<string, StagedFile>;
  /**
   * The prefix (relative to macdir) under which any name is a beacon, `<job>/<secret>/`; none = no
   * beacons. It is never written to a log: the secret in it is what makes a report the board's.
   */
  beaconPrefix?: string;
  /** Called for every read request of this job's files, before it is served. */
  onRead(relPath: string, req: TftpRequest): void;
  /** A transfer of one of this job's files moved on: what the board acknowledged so far. */
  onProgress(relPath: string, p: TftpProgress): void;
  /** A beacon was read; the message is what follows the prefix. */
  onBeacon(message: string, req: TftpRequest): void;
  /** A transfer of one of this job's files ended (with the options actually negotiated). */
  onTransferEnd?(relPath: string, t: TransferEnd): void;
  /** Optional write hook (seed-compatible reports); absent = writes refused. */
  onWrite?(relPath: string, req: TftpRequest): TftpWriteTarget | null;
  /** A request for this job's folder came from another address than `targetIp` and was refused. */
  onRefused?(relPath: string, req: TftpRequest): void;
  /** What the board's firmware fetches when it boots from the network; none = it does not here. */
  firmware?: FirmwareFiles;
}

const MACDIR = /^[0-9a-f]{2}(-[0-9a-f]{2}){5}$/;
const SEED_MACDIR = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const BEACON_ANSWER = Buffer.from('ok\n');

/** How the TFTP server's log names a beacon: the secret part of its path left out. */
const BEACON_LOG_PREFIX = '<report>/';

/** Root requests from addresses that have no network-boot job are logged at most this often (with a count). */
const UNMATCHED_LOG_MS = 5000;

/** Which staged job a request path names, and whose side of it: its macdir files or its firmware's. */
type Route =
  | { kind: 'macdir'; macdir: string; job: StagedJob; rel: string }
  | { kind: 'firmware'; macdir: string; job: StagedJob; firmware: FirmwareFiles; name: string; atRoot: boolean };

export class BoardFiles implements TftpResolver {
  private readonly jobs = new Map<string, StagedJob>();
  private readonly unmatched = { count: 0, at: -Infinity };

  constructor(private readonly o: { root: string; log: Logger; checkClientIp: boolean }) {}

  /** Remove every target folder left behind (a crash, a kill -9): run at start-up. */
  async removeLeftovers(): Promise<string[]> {
    await mkdir(this.o.root, { recursive: true });
    const removed: string[] = [];
    for (const entry of await readdir(this.o.root, { withFileTypes: true })) {
      if (!MACDIR.test(entry.name) && !SEED_MACDIR.test(entry.name) && !entry.name.startsWith('.staging-')) continue;
      await rm(path.join(this.o.root, entry.name), { recursive: true, force: true });
      removed.push(entry.name);
    }
    return removed;
  }

  has(macdir: string): boolean {
    return this.jobs.has(macdir);
  }

  /** The target of this macdir has a job that serves its firmware (a network boot): DHCP answers it. */
  servesFirmware(macdir: string): boolean {
    return this.jobs.get(macdir)?.firmware !== undefined;
  }

  /**
   * Make a job's files visible. The folder is written under a temporary name and renamed into
   * place, so a board never sees half a folder. A firmware folder that another staged job's
   * files would shadow (or the same target address twice) is refused before anything is written.
   */
  async stage(macdir: string, job: StagedJob, onDisk: Record<string, Buffer>): Promise<void> {
    if (this.jobs.has(macdir)) throw new Error(`target folder ${macdir} is already staged`);
    this.checkFolders(macdir, job);
    const tmp = path.join(this.o.root, `.staging-${macdir}-${job.jobId}`);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true, mode: 0o700 });
    for (const [name, data] of Object.entries(onDisk)) await writeFile(path.join(tmp, name), data, { mode: 0o600 });
    const dir = path.join(this.o.root, macdir);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
    this.jobs.set(macdir, job);
    if (job.firmware) this.warnWrapping(job, job.firmware);
  }

  /**
   * Hide a job's files at once (synchronously, so a board that reboots right after its last
   * beacon already finds no `flash.scr`), then delete the folder.
   */
  withdraw(macdir: string): void {
    this.jobs.delete(macdir);
  }

  async unstage(macdir: string): Promise<void> {
    this.jobs.delete(macdir);
    await rm(path.join(this.o.root, macdir), { recursive: true, force: true });
  }

  /**
   * A job's folders must not shadow another staged job's: its firmware folder against their
   * macdirs and firmware folders, its macdir against their firmware folders, and one target
   * address offers root names through one job only (they carry no folder to tell whose).
   */
  private checkFolders(macdir: string, job: StagedJob): void {
    const firmware = job.firmware;
    const folder = firmware?.folder.toLowerCase();
    if (firmware) {
      if (!isPlainRelative(folder!))
        throw new Error(`firmware folder "${firmware.folder}" is not a plain relative folder`);
      if (!Number.isInteger(firmware.blksize) || firmware.blksize < 8)
        throw new Error(`firmware blksize ${firmware.blksize} is not a TFTP block size`);
      for (const name of firmware.files.keys())
        if (name !== name.toLowerCase() || !isPlainRelative(name))
          throw new Error(`firmware file name "${name}" must be a lower-case relative path`);
    }
    const overlap = (a: string, b: string) => a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
    for (const [otherDir, other] of this.jobs) {
      const otherFolder = other.firmware?.folder.toLowerCase();
      if (folder && ((folder !== macdir && overlap(folder, otherDir)) || (otherFolder && overlap(folder, otherFolder))))
        throw new Error(`firmware folder ${firmware!.folder} overlaps the staged files of ${otherDir}`);
      if (otherFolder && otherFolder !== otherDir && overlap(otherFolder, macdir))
        throw new Error(`target folder ${macdir} overlaps the firmware folder of ${otherDir}`);
      if (firmware && other.firmware && other.targetIp === job.targetIp)
        throw new Error(`${otherDir} already offers firmware files to ${job.targetIp}`);
    }
  }

  /** The warning firmwareWrapping() gives, in the agent's log, once per file when the job is staged. */
  private warnWrapping(job: StagedJob, firmware: FirmwareFiles): void {
    for (const w of firmwareWrapping(firmware))
      this.o.log.warn(
        'firmware file needs more than 65535 TFTP blocks: block numbers wrap, ' +
          'and Pi 4/5 EEPROMs before 2025-09-23 (rpi-eeprom #720/#755) fail on such files',
        {
          job: job.jobId,
          file: `${firmware.folder}/${w.name}`,
          bytes: w.size,
          blksize: firmware.blksize,
          blocks: w.blocks,
        },
      );
  }

  /** Which job's file `tftpPath` names; the client-address check is the caller's (see lookup). */
  private route(tftpPath: string, peerAddress: string): Route | null {
    const slash = tftpPath.indexOf('/');
    if (slash < 0) {
      const found = this.firmwareFor(peerIp(peerAddress));
      if (!found) return null;
      const { macdir, job } = found;
      return { kind: 'firmware', macdir, job, firmware: job.firmware!, name: tftpPath.toLowerCase(), atRoot: true };
    }
    if (slash === 0) return null;
    const macdir = tftpPath.slice(0, slash).toLowerCase();
    const rel = tftpPath.slice(slash + 1);
    const job = this.jobs.get(macdir);
    if (job) {
      // A MAC-prefix firmware folder is the macdir itself: the job's own files come first.
      const firmware = job.firmware;
      if (firmware?.folder.toLowerCase() === macdir && !job.files.has(rel) && !isBeacon(job, rel))
        return { kind: 'firmware', macdir, job, firmware, name: rel.toLowerCase(), atRoot: false };
      return { kind: 'macdir', macdir, job, rel };
    }
    const lower = tftpPath.toLowerCase();
    for (const [dir, other] of this.jobs) {
      const folder = other.firmware?.folder.toLowerCase();
      if (folder && lower.startsWith(`${folder}/`))
        return {
          kind: 'firmware',
          macdir: dir,
          job: other,
          firmware: other.firmware!,
          name: lower.slice(folder.length + 1),
          atRoot: false,
        };
    }
    return null;
  }

  /** The staged job that offers firmware files to this address. */
  private firmwareFor(address: string): { macdir: string; job: StagedJob } | undefined {
    for (const [macdir, job] of this.jobs) if (job.firmware && job.targetIp === address) return { macdir, job };
    return undefined;
  }

  /** The route of a request, after the client-address check for a folder (a root route is by address). */
  private lookup(req: TftpRequest): Route | null {
    const route = this.route(req.path, req.peer.address);
    if (!route || (route.kind === 'firmware' && route.atRoot)) return route;
    const { job, macdir } = route;
    if (this.o.checkClientIp && peerIp(req.peer.address) !== job.targetIp) {
      // Each board sees only its own folder: another host asking for it is refused and logged.
      this.o.log.warn("tftp request for another target's folder refused", {
        path: clientText(req.path),
        peer: req.peer.address,
        expected: job.targetIp,
      });
      // A macdir file is named relative to the macdir; a firmware file by its whole path.
      const rel = route.kind === 'macdir' ? route.rel : req.path;
      this.notify(job, 'refused', () => job.onRefused?.(rel, req));
      throw new TftpAccessError(
        `${route.kind === 'macdir' ? macdir : route.firmware.folder} is not served to ${req.peer.address}`,
      );
    }
    return route;
  }

  resolveRead(req: TftpRequest): Promise<TftpFile | null> {
    return promiseOf(() => this.fileFor(req));
  }

  resolveWrite(req: TftpRequest): Promise<TftpWriteTarget | null> {
    return promiseOf(() => this.writeTargetFor(req));
  }

  /** The file a read request gets; throws a TftpAccessError for a refusal. */
  private fileFor(req: TftpRequest): TftpFile | null {
    const found = this.lookup(req);
    if (!found) {
      if (!req.path.includes('/')) this.unmatchedRoot(req);
      return null;
    }
    if (found.kind === 'firmware') return this.firmwareFile(found, req);
    const { job, rel } = found;
    if (isBeacon(job, rel)) {
      const message = rel.slice(job.beaconPrefix!.length);
      this.hook(job, 'beacon', () => job.onBeacon(message, req));
      return { ...bufferFile(BEACON_ANSWER), logPath: `${found.macdir}/${BEACON_LOG_PREFIX}${clientText(message)}` };
    }
    const file = job.files.get(rel);
    if (!file) return null;
    this.hook(job, 'read', () => job.onRead(rel, req));
    return stagedTftpFile(file);
  }

  /** A firmware file: root names from `rootNames` only, never `bootsig.bin`, folder names as staged. */
  private firmwareFile(route: Extract<Route, { kind: 'firmware' }>, req: TftpRequest): TftpFile | null {
    const { job, firmware, name, atRoot } = route;
    const allowed = atRoot
      ? name !== BOOTSIG && (firmware.rootNames ?? ROOT_FIRMWARE_NAMES).some((n) => n.toLowerCase() === name)
      : isPlainRelative(name);
    const file = allowed ? firmware.files.get(name) : undefined;
    this.hook(job, 'firmware request', () => firmware.onRequest?.({ name, atRoot, found: !!file }, req));
    return file ? stagedTftpFile(file) : null;
  }

  /** A root request no staged job answers: not found, and a line in the log (bounded under a flood). */
  private unmatchedRoot(req: TftpRequest): void {
    const u = this.unmatched;
    u.count++;
    const now = performance.now();
    if (now - u.at < UNMATCHED_LOG_MS) return;
    this.o.log.warn('tftp request at the root from an address no network-boot job is staged for: not found', {
      path: clientText(req.path),
      peer: req.peer.address,
      ...(u.count > 1 ? { alsoSince: u.count - 1 } : {}),
    });
    u.count = 0;
    u.at = now;
  }

  /** Route the TFTP server's progress report (bytes acknowledged) to the job that owns the file. */
  transferProgress(p: TftpProgress): void {
    const r = this.route(p.path, p.peer.address);
    if (r?.kind === 'macdir') this.notify(r.job, 'progress', () => r.job.onProgress(r.rel, p));
    else if (r) this.notify(r.job, 'firmware progress', () => r.firmware.onProgress?.(r.name, p));
  }

  /** Route the TFTP server's end-of-transfer report to the job that owns the file. */
  transferEnded(t: TransferEnd): void {
    const r = this.route(t.path, t.peer.address);
    if (r?.kind === 'macdir') {
      this.notify(r.job, 'transfer-end', () => r.job.onTransferEnd?.(r.rel, t));
      return;
    }
    // Only what was served: a name not found was told to onRequest already.
    if (!r || t.size === undefined || t.kind !== 'read') return;
    const probe = isProbe(t);
    if (probe)
      this.o.log.info('firmware stopped the transfer after the first block, as the boot ROM probes a folder', {
        job: r.job.jobId,
        path: clientText(t.path),
        peer: t.peer.address,
      });
    this.notify(r.job, 'firmware transfer-end', () => r.firmware.onTransferEnd?.(r.name, t, probe));
  }

  /**
   * True when a transfer that ended is a firmware probe (isProbe) of a staged job's file: for the
   * TFTP server's own log, which reports every transfer that did not complete as a failure.
   */
  isFirmwareProbe(t: TransferEnd): boolean {
    return this.route(t.path, t.peer.address)?.kind === 'firmware' && t.size !== undefined && isProbe(t);
  }

  /**
   * Runs a job's hook for a request. A hook that throws (a TftpAccessError aside: a refusal) is
   * that job's bug: logged with its stack against the job, and the request answered with an error
   * that tells the peer nothing more; the TFTP server and every other target go on.
   */
  private hook<T>(job: StagedJob, what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof TftpAccessError) throw err; // a refusal the hook meant (error 2)
      this.hookFailed(job, what, err);
      throw new Error(`internal error (${what})`, { cause: err });
    }
  }

  /** Runs a job's hook for a report from the TFTP server, which has nothing to answer: logged only. */
  private notify(job: StagedJob, what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.hookFailed(job, what, err);
    }
  }

  private hookFailed(job: StagedJob, what: string, err: unknown): void {
    this.o.log.error(`staged job's ${what} hook failed`, {
      job: job.jobId,
      error: (err as Error)?.message ?? String(err),
      stack: (err as Error)?.stack,
    });
  }

  /** Where an upload goes; throws a TftpAccessError for a refusal. The firmware uploads nothing. */
  private writeTargetFor(req: TftpRequest): TftpWriteTarget | null {
    const found = this.lookup(req);
    if (found?.kind !== 'macdir' || !found.job.onWrite) return null;
    const { job, rel } = found;
    return this.hook(job, 'write', () => job.onWrite?.(rel, req) ?? null);
  }
}

/**
 * The firmware files whose transfer needs more than 65535 blocks at the firmware's block size
 * (DESIGN §8): the server wraps block numbers past 65535 for clients that follow, but Pi 4/5
 * EEPROMs before 2025-09-23 fail on such files. The layout may tell its job's log too.
 */
export function firmwareWrapping(firmware: FirmwareFiles): { name: string; size: number; blocks: number }[] {
  const out: { name: string; size: number; blocks: number }[] = [];
  for (const [name, file] of firmware.files) {
    const size = stagedSize(file);
    // A transfer ends with a short block, an empty one when the size is a multiple of the block size.
    const blocks = Math.floor(size / firmware.blksize) + 1;
    if (blocks > MAX_UNWRAPPED_BLOCKS) out.push({ name, size, blocks });
  }
  return out;
}

export function stagedSize(file: StagedFile): number {
  return file.kind === 'buffer' ? file.data.length : file.size;
}

/**
 * A read the client ended (an ERROR, or silence until the server gave up) with at most one block
 * acknowledged: how the ROM asks whether `<folder>/start.elf` exists.
 */
function isProbe(t: TransferEnd): boolean {
  const blksize = Number(t.options.blksize ?? 512);
  return !t.ok && t.bytes <= blksize && (t.size ?? 0) > blksize;
}

function isBeacon(job: StagedJob, rel: string): boolean {
  return !!job.beaconPrefix && rel.startsWith(job.beaconPrefix) && rel.length > job.beaconPrefix.length;
}

/** `a/b/c`: no empty, `.` or `..` segment, no leading or trailing `/`. */
function isPlainRelative(p: string): boolean {
  return p.length > 0 && p.split('/').every((s) => s !== '' && s !== '.' && s !== '..');
}

function peerIp(address: string): string {
  return address.replace(/^::ffff:/, '');
}

function stagedTftpFile(file: StagedFile): TftpFile {
  switch (file.kind) {
    case 'buffer':
      return bufferFile(file.data);
    case 'range':
      return rangeFile(file);
    case 'file':
      return diskFile(file);
    case 'extents':
      return extentsFile(file);
  }
}

/** `fn()` as a promise, as an async function gives it: what it returns resolves, what it throws rejects. */
function promiseOf<T>(fn: () => T): Promise<T> {
  return new Promise((resolve) => resolve(fn()));
}

function bufferFile(data: Buffer): TftpFile {
  return {
    size: data.length,
    read(position, length) {
      return Promise.resolve(data.subarray(position, Math.min(data.length, position + length)));
    },
  };
}

function diskFile(file: Extract<StagedFile, { kind: 'file' }>): TftpFile {
  let opening: Promise<FileHandle> | undefined;
  return {
    size: file.size,
    async read(position, length) {
      const handle = await (opening ??= open(file.path, 'r'));
      const out = Buffer.alloc(Math.max(0, Math.min(file.size, position + length) - position));
      let got = 0;
      while (got < out.length) {
        const { bytesRead } = await handle.read(out, got, out.length - got, position + got);
        if (bytesRead === 0) throw new Error(`${file.path} is shorter than its staged ${file.size} bytes`);
        got += bytesRead;
      }
      return out;
    },
    async close() {
      const h = await opening?.catch(() => undefined);
      opening = undefined;
      await h?.close();
    },
  };
}

function rangeFile(file: Extract<StagedFile, { kind: 'range' }>): TftpFile {
  // One handle per transfer, opened on the first read and closed by the server when it ends.
  let opening: Promise<FileHandle> | undefined;
  return {
    size: file.size,
    async read(position, length) {
      const end = Math.min(file.size, position + length);
      const handle = await (opening ??= open(file.view.path, 'r'));
      return file.view.read(handle, file.offset + position, Math.max(0, end - position));
    },
    async close() {
      const h = await opening?.catch(() => undefined);
      opening = undefined;
      await h?.close();
    },
  };
}

function extentsFile(file: Extract<StagedFile, { kind: 'extents' }>): TftpFile {
  // Where each extent starts in the file: a read finds its first extent by binary search.
  const starts: number[] = [];
  let total = 0;
  for (const e of file.extents) {
    starts.push(total);
    total += e.size;
  }
  let opening: Promise<FileHandle> | undefined;
  return {
    size: file.size,
    async read(position, length) {
      const end = Math.min(file.size, position + length);
      if (end <= position) return Buffer.alloc(0);
      const handle = await (opening ??= open(file.view.path, 'r'));
      let lo = 0;
      let hi = starts.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (starts[mid]! <= position) lo = mid;
        else hi = mid - 1;
      }
      const pieces: Buffer[] = [];
      let at = position;
      for (let i = lo; at < end && i < file.extents.length; i++) {
        const e = file.extents[i]!;
        const from = at - starts[i]!;
        if (from >= e.size) continue;
        const n = Math.min(e.size - from, end - at);
        pieces.push(await file.view.read(handle, e.offset + from, n));
        at += n;
      }
      // Extents shorter than the size read as zeros, as a range past the image's end does.
      if (at < end) pieces.push(Buffer.alloc(end - at));
      return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
    },
    async close() {
      const h = await opening?.catch(() => undefined);
      opening = undefined;
      await h?.close();
    },
  };
}
