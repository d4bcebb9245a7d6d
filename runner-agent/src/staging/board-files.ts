/**
 * What the TFTP server may serve: the files of targets that have a job right now, and nothing else.
 *
 * Every file of a target lives under `<tftp-root>/<macdir>/` (DESIGN §3.4). The folder on disk
 * holds the generated `flash.scr` and a `job.json` manifest so an operator can see what is staged;
 * the parts are never copied — they are served as byte ranges of the stored image. A folder exists
 * only while its target has a job: `unstage` removes it, and start-up removes any left by a crash.
 */
import { open, mkdir, rm, readdir, writeFile, rename, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { isIPv4 } from 'node:net';
import type { Logger } from '../log.js';
import type { ImageView } from './image-view.js';
import type { TftpFile, TftpRequest, TftpResolver, TftpWriteTarget, TransferEnd } from '../tftp/server.js';
import { TftpAccessError } from '../tftp/server.js';

/** A file a staged job offers, relative to its macdir. */
export type StagedFile =
  | { kind: 'buffer'; data: Buffer }
  /** `size` bytes of the image view from `offset` (zero-padded past the image's end). */
  | { kind: 'range'; view: ImageView; offset: number; size: number };

export interface StagedJob {
  jobId: string;
  /** The target's IP: requests from any other non-loopback address are refused. */
  targetIp: string;
  files: Map<string, StagedFile>;
  /** The prefix (relative to macdir) under which any name is a beacon, e.g. `<job>/report/`; none = no beacons. */
  beaconPrefix?: string;
  /** Called for every read request of this job's files, before it is served. */
  onRead(relPath: string, req: TftpRequest): void;
  /** Bytes of a file handed to the TFTP server so far. */
  onProgress(relPath: string, done: number, size: number): void;
  /** A beacon was read; the message is what follows the prefix. */
  onBeacon(message: string, req: TftpRequest): void;
  /** A transfer of one of this job's files ended (with the options actually negotiated). */
  onTransferEnd?(relPath: string, t: TransferEnd): void;
  /** Optional write hook (seed-compatible reports); absent = writes refused. */
  onWrite?(relPath: string, req: TftpRequest): TftpWriteTarget | null;
}

const MACDIR = /^[0-9a-f]{2}(-[0-9a-f]{2}){5}$/;
const SEED_MACDIR = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const BEACON_ANSWER = Buffer.from('ok\n');

function isLoopback(address: string): boolean {
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return (isIPv4(v4) && v4.startsWith('127.')) || address === '::1';
}

export class BoardFiles implements TftpResolver {
  private readonly jobs = new Map<string, StagedJob>();

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

  /**
   * Make a job's files visible. The folder is written under a temporary name and renamed into
   * place, so a board never sees half a folder.
   */
  async stage(macdir: string, job: StagedJob, onDisk: Record<string, Buffer>): Promise<void> {
    if (this.jobs.has(macdir)) throw new Error(`target folder ${macdir} is already staged`);
    const tmp = path.join(this.o.root, `.staging-${macdir}-${job.jobId}`);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    for (const [name, data] of Object.entries(onDisk)) await writeFile(path.join(tmp, name), data);
    const dir = path.join(this.o.root, macdir);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
    this.jobs.set(macdir, job);
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

  private lookup(req: TftpRequest): { macdir: string; job: StagedJob; rel: string } | null {
    const slash = req.path.indexOf('/');
    if (slash <= 0) return null;
    const macdir = req.path.slice(0, slash).toLowerCase();
    const rel = req.path.slice(slash + 1);
    const job = this.jobs.get(macdir);
    if (!job) return null;
    if (
      this.o.checkClientIp &&
      !isLoopback(req.peer.address) &&
      req.peer.address.replace(/^::ffff:/, '') !== job.targetIp
    ) {
      // Each board sees only its own folder: another host asking for it is refused and logged.
      this.o.log.warn("tftp request for another target's folder refused", {
        path: req.path,
        peer: req.peer.address,
        expected: job.targetIp,
      });
      throw new TftpAccessError(`${macdir} is not served to ${req.peer.address}`);
    }
    return { macdir, job, rel };
  }

  async resolveRead(req: TftpRequest): Promise<TftpFile | null> {
    const found = this.lookup(req);
    if (!found) return null;
    const { job, rel } = found;
    if (job.beaconPrefix && rel.startsWith(job.beaconPrefix) && rel.length > job.beaconPrefix.length) {
      job.onBeacon(rel.slice(job.beaconPrefix.length), req);
      return bufferFile(BEACON_ANSWER);
    }
    const file = job.files.get(rel);
    if (!file) return null;
    job.onRead(rel, req);
    const progress = (done: number, size: number) => job.onProgress(rel, done, size);
    return file.kind === 'buffer' ? bufferFile(file.data, progress) : rangeFile(file, progress);
  }

  /** Route the TFTP server's end-of-transfer report to the job that owns the file. */
  transferEnded(t: TransferEnd): void {
    const slash = t.path.indexOf('/');
    if (slash <= 0) return;
    const job = this.jobs.get(t.path.slice(0, slash).toLowerCase());
    job?.onTransferEnd?.(t.path.slice(slash + 1), t);
  }

  async resolveWrite(req: TftpRequest): Promise<TftpWriteTarget | null> {
    const found = this.lookup(req);
    if (!found?.job.onWrite) return null;
    return found.job.onWrite(found.rel, req);
  }
}

function bufferFile(data: Buffer, progress?: (done: number, size: number) => void): TftpFile {
  return {
    size: data.length,
    async read(position, length) {
      const chunk = data.subarray(position, Math.min(data.length, position + length));
      progress?.(position + chunk.length, data.length);
      return chunk;
    },
  };
}

function rangeFile(
  file: Extract<StagedFile, { kind: 'range' }>,
  progress: (done: number, size: number) => void,
): TftpFile {
  // One handle per transfer, opened on the first read and closed by the server when it ends.
  let opening: Promise<FileHandle> | undefined;
  return {
    size: file.size,
    async read(position, length) {
      const end = Math.min(file.size, position + length);
      const handle = await (opening ??= open(file.view.path, 'r'));
      const out = await file.view.read(handle, file.offset + position, Math.max(0, end - position));
      progress(end, file.size);
      return out;
    },
    async close() {
      const h = await opening?.catch(() => undefined);
      opening = undefined;
      await h?.close();
    },
  };
}
