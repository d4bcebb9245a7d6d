/**
 * What the TFTP server may serve: the files of targets that have a job right now, and nothing else.
 *
 * Every file of a target lives under `<tftp-root>/<macdir>/` (DESIGN §3.4). The folder on disk
 * holds the generated `flash.scr` and a `job.json` manifest so an operator can see what is staged;
 * the parts are never copied — they are served as byte ranges of the stored image. A folder exists
 * only while its target has a job: `unstage` removes it, and start-up removes any left by a crash.
 * The folder is the agent's alone (mode 0700): `flash.scr` holds the job's report secret, which no
 * other local user may read; over TFTP a folder is served only to its target's address.
 */
import { open, mkdir, rm, readdir, writeFile, rename, type FileHandle } from 'node:fs/promises';
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
  | { kind: 'file'; path: string; size: number };

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
}

const MACDIR = /^[0-9a-f]{2}(-[0-9a-f]{2}){5}$/;
const SEED_MACDIR = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const BEACON_ANSWER = Buffer.from('ok\n');

/** How the TFTP server's log names a beacon: the secret part of its path left out. */
const BEACON_LOG_PREFIX = '<report>/';

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
    await mkdir(tmp, { recursive: true, mode: 0o700 });
    for (const [name, data] of Object.entries(onDisk)) await writeFile(path.join(tmp, name), data, { mode: 0o600 });
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
    if (this.o.checkClientIp && req.peer.address.replace(/^::ffff:/, '') !== job.targetIp) {
      // Each board sees only its own folder: another host asking for it is refused and logged.
      this.o.log.warn("tftp request for another target's folder refused", {
        path: clientText(req.path),
        peer: req.peer.address,
        expected: job.targetIp,
      });
      this.notify(job, 'refused', () => job.onRefused?.(rel, req));
      throw new TftpAccessError(`${macdir} is not served to ${req.peer.address}`);
    }
    return { macdir, job, rel };
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
    if (!found) return null;
    const { job, rel } = found;
    if (job.beaconPrefix && rel.startsWith(job.beaconPrefix) && rel.length > job.beaconPrefix.length) {
      const message = rel.slice(job.beaconPrefix.length);
      this.hook(job, 'beacon', () => job.onBeacon(message, req));
      return { ...bufferFile(BEACON_ANSWER), logPath: `${found.macdir}/${BEACON_LOG_PREFIX}${clientText(message)}` };
    }
    const file = job.files.get(rel);
    if (!file) return null;
    this.hook(job, 'read', () => job.onRead(rel, req));
    if (file.kind === 'buffer') return bufferFile(file.data);
    return file.kind === 'range' ? rangeFile(file) : diskFile(file);
  }

  /** Route the TFTP server's progress report (bytes acknowledged) to the job that owns the file. */
  transferProgress(p: TftpProgress): void {
    const owner = this.owner(p.path);
    if (owner) this.notify(owner.job, 'progress', () => owner.job.onProgress(owner.rel, p));
  }

  /** Route the TFTP server's end-of-transfer report to the job that owns the file. */
  transferEnded(t: TransferEnd): void {
    const owner = this.owner(t.path);
    if (owner) this.notify(owner.job, 'transfer-end', () => owner.job.onTransferEnd?.(owner.rel, t));
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

  private owner(tftpPath: string): { job: StagedJob; rel: string } | undefined {
    const slash = tftpPath.indexOf('/');
    if (slash <= 0) return undefined;
    const job = this.jobs.get(tftpPath.slice(0, slash).toLowerCase());
    return job && { job, rel: tftpPath.slice(slash + 1) };
  }

  /** Where an upload goes; throws a TftpAccessError for a refusal. */
  private writeTargetFor(req: TftpRequest): TftpWriteTarget | null {
    const found = this.lookup(req);
    if (!found?.job.onWrite) return null;
    const { job, rel } = found;
    return this.hook(job, 'write', () => job.onWrite?.(rel, req) ?? null);
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
