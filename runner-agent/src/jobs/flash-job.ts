/**
 * One flash job: stage → reset → transfer → verify → boot, then clean up whatever happened.
 *
 * The job is a small state machine driven by what the board does over TFTP: it fetches its
 * script (it showed up), downloads parts (progress), reads beacons (its reports). Every wait is
 * bounded by a timeout and by the job's abort signal, so cancel and shutdown end it promptly; the
 * staged folder is withdrawn the moment the board reports it is done (so the board's reboot does
 * not flash again) and deleted in `finally` whatever the outcome.
 */
import type { ErrorCode } from '../../../src/protocol/errors.js';
import { isErrorCode } from '../../../src/protocol/errors.js';
import type {
  JobResult,
  LogEvent,
  PartReport,
  Phase,
  PhaseEvent,
  ProgressEvent,
  TargetInfo,
} from '../../../src/protocol/messages.js';
import { FLASH_SCRIPT, macDir, partFile, reportPrefix } from '../../../src/protocol/tftp-names.js';
import type { Logger } from '../log.js';
import type { AgentConfig } from '../config.js';
import type { Target } from '../targets/database.js';
import type { ResetLine } from '../reset/index.js';
import { parseBootCheck, waitForBoot, type BootCheck } from '../boot-check.js';
import { openConsole, type ConsoleCapture } from '../console/capture.js';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { StoredImage } from '../store/image-store.js';
import { buildScriptImage } from '../board/uimage.js';
import { generateStage2Script, planParts, type Stage2Part } from '../board/stage2-script.js';
import { boardCrcText, parseBeacon, type Beacon } from '../board/beacons.js';
import type { BoardFiles, StagedFile } from './board-files.js';
import { ImageView, type Patch } from './image-view.js';
import {
  interpretSeedResult,
  planSeedParts,
  SeedReports,
  seedFolder,
  type SeedOutcome,
  type SeedPlan,
} from '../layouts/seed.js';
import type { TftpRequest, TransferEnd } from '../tftp/server.js';

export type JobEvent = Omit<LogEvent, 're'> | Omit<PhaseEvent, 're'> | Omit<ProgressEvent, 're'>;

/** Stage-2 settings: the agent's `flash` configuration. */
export type FlashSettings = AgentConfig['flash'];

export interface FlashJobOptions {
  id: string;
  target: Target;
  /** How the image lands on the card (the target's layout, or the agent's default). */
  layout: 'whole' | 'inject' | 'seed';
  image: StoredImage;
  partCrcs: number[];
  bootCheck: string;
  timeouts: { boardShow: number; stall: number; boot: number };
  flash: FlashSettings;
  files: BoardFiles;
  resetLine: ResetLine;
  /** Where the job's record goes (`<job>.json`, `<job>.console.log`); none = not kept. */
  recordDir?: string;
  /** The layout's changes to the image (e.g. U-Boot injected into the boot partition); none = written as stored. */
  planPatches?: () => Promise<Patch[]>;
  log: Logger;
  emit(event: JobEvent): void;
}

/** A failure that ends the job with a result code. */
class JobFailure extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

interface PartState extends Stage2Part {
  status: PartReport['status'];
  retries: number;
  boardCrc?: string;
  served: number;
}

export function targetInfo(t: Target): TargetInfo {
  return { name: t.name, mac: t.mac, ip: t.ip, ...(t.model ? { model: t.model } : {}) };
}

export class FlashJob {
  private readonly abort = new AbortController();
  private readonly timings: Partial<Record<Phase, number>> = {};
  private parts: PartState[] = [];
  private phase: Phase = 'stage';
  /** Resolvers of whatever the job is waiting for from the board. */
  private wake: (() => void) | undefined;
  private scriptFetched = false;
  private lastActivity = Date.now();
  private done?: { ok: boolean };
  private readonly boardFailures: string[] = [];
  private tftpOptions: Record<string, string> | undefined;
  private readonly macdir: string;
  private console?: ConsoleCapture;
  /** Layout seed: the seed card's plan, its reports and what they mean. */
  private seed?: { folder: string; plan: SeedPlan; reports: SeedReports; part0Fetched: boolean; outcome?: SeedOutcome };
  /** The first console line that may satisfy a `console:` boot check (taken when the board reports success). */
  private consoleSince?: number;

  constructor(private readonly o: FlashJobOptions) {
    this.macdir = macDir(o.target.mac);
  }

  get id(): string {
    return this.o.id;
  }

  /** Ask the job to stop; `run()` then resolves with CANCELLED (or the code given). */
  cancel(reason = 'cancelled by the client', code: ErrorCode = 'CANCELLED'): void {
    if (!this.abort.signal.aborted) this.abort.abort(new JobFailure(code, reason));
  }

  private log(level: LogEvent['level'], message: string, source: LogEvent['source'] = 'agent'): void {
    this.o.log[level](message, { phase: this.phase, ...(source !== 'agent' ? { source } : {}) });
    this.o.emit({ type: 'log', job: this.o.id, level, source, phase: this.phase, message, time: Date.now() });
  }

  private async inPhase<T>(phase: Phase, body: () => Promise<T>): Promise<T> {
    this.phase = phase;
    const started = performance.now();
    this.o.emit({ type: 'phase', job: this.o.id, phase, state: 'start' });
    try {
      return await body();
    } finally {
      const seconds = Math.round(performance.now() - started) / 1000;
      this.timings[phase] = seconds;
      this.o.emit({ type: 'phase', job: this.o.id, phase, state: 'end', seconds });
    }
  }

  async run(): Promise<JobResult> {
    const { target, image } = this.o;
    let code: ErrorCode = 'OK';
    let message = 'flashed, verified and booted';
    try {
      this.throwIfCancelled();
      const bootCheck = parseBootCheckOrFail(this.o.bootCheck);
      if (bootCheck.kind === 'console' && !target.console)
        throw new JobFailure(
          'BAD_REQUEST',
          `boot check ${this.o.bootCheck} needs a console, and ${target.name} has none in the targets database (console column)`,
        );
      const seed = this.o.layout === 'seed';
      await this.inPhase('stage', () => (seed ? this.stageSeed() : this.stage()));
      await this.openConsole(bootCheck);
      await this.inPhase('reset', async () => {
        this.log('info', `resetting ${target.name} through ${this.o.resetLine.describe()}`);
        await this.raceAbort(this.o.resetLine.pulse());
      });
      await this.inPhase('transfer', () => (seed ? this.watchSeed() : this.watchTransfer()));
      await this.inPhase('verify', async () => (seed ? this.verifySeed() : this.verify()));
      if (bootCheck.kind === 'none') {
        this.log('info', 'boot check skipped (none)');
      } else {
        await this.inPhase('boot', async () => {
          this.log('info', `waiting for ${this.o.bootCheck} on ${target.ip} (up to ${this.o.timeouts.boot} s)`);
          const boot = await waitForBoot(bootCheck, target.ip, {
            timeoutMs: this.o.timeouts.boot * 1000,
            signal: this.abort.signal,
            log: this.o.log,
            ...(this.console
              ? {
                  console: this.console,
                  ...(this.consoleSince !== undefined ? { consoleSince: this.consoleSince } : {}),
                }
              : {}),
          });
          this.throwIfCancelled();
          if (!boot.ok)
            throw new JobFailure(
              'BOOT_TIMEOUT',
              `the new system did not answer ${this.o.bootCheck} on ${target.ip} within ${this.o.timeouts.boot} s`,
            );
          this.log(
            'info',
            `booted: ${this.o.bootCheck} ${boot.line !== undefined ? `matched "${boot.line}"` : 'answered'} after ${(boot.ms / 1000).toFixed(1)} s`,
          );
        });
      }
    } catch (err) {
      const failure = this.abort.signal.aborted ? (this.abort.signal.reason as JobFailure) : err;
      // Any error carrying a stable code (job failures, agent errors, the inject layout's errors).
      const coded = failure as { code?: unknown; message?: string };
      if (isErrorCode(coded?.code)) {
        code = coded.code;
        message = coded.message ?? String(failure);
      } else {
        code = 'INTERNAL';
        message = `internal error: ${(failure as Error)?.message ?? String(failure)}`;
        this.o.log.error('job failed unexpectedly', { error: (failure as Error)?.stack ?? String(failure) });
      }
      this.log(code === 'CANCELLED' ? 'warn' : 'error', `${code}: ${message}`);
    } finally {
      await this.o.files
        .unstage(this.seed ? this.seed.folder : this.macdir)
        .catch((err: Error) => this.o.log.error('could not delete the staged folder', { error: err.message }));
      await this.console?.close().catch(() => {});
    }
    const result: JobResult = {
      ok: code === 'OK',
      code,
      message,
      job: this.o.id,
      target: targetInfo(target),
      sha256: image.sha256,
      bytesWritten: this.seed
        ? this.seed.outcome?.code === 'OK'
          ? this.seed.plan.writtenBytes
          : (this.seed.outcome?.reportedCount ?? 0)
        : this.parts.filter((p) => p.status === 'ok').reduce((sum, p) => sum + p.size, 0),
      timings: this.timings,
      parts: this.parts.map((p) => ({
        part: p.index,
        offset: p.imageOffset,
        size: p.size,
        crc32: hex8(p.crc32),
        status: p.status,
        retries: p.retries,
      })),
      ...(this.tftpOptions ? { tftpOptions: this.tftpOptions } : {}),
    };
    await this.keepRecord(result);
    return result;
  }

  /** Start capturing the board's console (when the target has one) before the reset. */
  private async openConsole(check: BootCheck): Promise<void> {
    const spec = this.o.target.console;
    if (!spec) return;
    try {
      this.console = await openConsole(spec, {
        log: this.o.log,
        onLine: (line, time) =>
          this.o.emit({
            type: 'log',
            job: this.o.id,
            level: 'info',
            source: 'console',
            phase: this.phase,
            message: line,
            time,
          }),
      });
      this.o.log.info('console capture started', { console: this.o.target.console?.kind });
    } catch (err) {
      // A console is a nice-to-have unless the boot check reads it.
      if (check.kind === 'console') throw err;
      this.log('warn', `no console capture: ${(err as Error).message}`);
    }
  }

  /** The job's record beside the agent's state: the result and the console it saw. */
  private async keepRecord(result: JobResult): Promise<void> {
    if (!this.o.recordDir) return;
    try {
      await mkdir(this.o.recordDir, { recursive: true });
      await writeFile(
        path.join(this.o.recordDir, `${this.o.id}.json`),
        JSON.stringify({ ...result, finishedAt: new Date().toISOString(), console: this.console?.stats() }, null, 2) +
          '\n',
      );
      if (this.console) await writeFile(path.join(this.o.recordDir, `${this.o.id}.console.log`), this.console.text());
    } catch (err) {
      this.o.log.warn('could not keep the job record', { error: (err as Error).message });
    }
  }

  private throwIfCancelled(): void {
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
  }

  private raceAbort<T>(work: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => reject(this.abort.signal.reason);
      if (this.abort.signal.aborted) return onAbort();
      this.abort.signal.addEventListener('abort', onAbort, { once: true });
      work.then(resolve, reject).finally(() => this.abort.signal.removeEventListener('abort', onAbort));
    });
  }

  private async stage(): Promise<void> {
    const { image, flash, target } = this.o;
    const plan = planParts(image.imageSize, flash.partSize);
    if (plan.length !== this.o.partCrcs.length)
      throw new Error(`part CRCs (${this.o.partCrcs.length}) do not match the plan (${plan.length} parts)`);
    const patches = (await this.o.planPatches?.()) ?? [];
    const view = new ImageView(image.path, image.imageSize, patches);
    const crcs = await view.partCrcs(plan, this.o.partCrcs);
    if (patches.length)
      this.log(
        'info',
        `layout ${this.o.layout}: ${patches.length} patch(es), ${patches.reduce((n, p) => n + p.data.length, 0)} bytes changed in ${plan.filter((p) => view.touches(p.imageOffset, p.servedSize)).length} part(s)`,
      );
    this.parts = plan.map((p, i) => ({
      ...p,
      file: partFile(target.mac, this.o.id, p.index),
      crc32: crcs[i]!,
      status: 'missing',
      retries: 0,
      served: 0,
    }));
    const script = generateStage2Script({
      jobId: this.o.id,
      mac: target.mac,
      parts: this.parts,
      retries: flash.retries,
      loadAddr: flash.loadAddr,
      crcAddr: flash.crcAddr,
      beaconAddr: flash.beaconAddr,
      mmcDev: flash.mmcDev,
      ...(flash.tftpBlockSize ? { tftpBlockSize: flash.tftpBlockSize } : {}),
      ...(flash.tftpWindowSize ? { tftpWindowSize: flash.tftpWindowSize } : {}),
    });
    const scriptImage = buildScriptImage(script, { name: `rpi-flash ${this.o.id}` });
    const files = new Map<string, StagedFile>([[FLASH_SCRIPT, { kind: 'buffer', data: scriptImage }]]);
    const prefix = `${this.macdir}/`;
    for (const p of this.parts) {
      files.set(p.file.slice(prefix.length), { kind: 'range', view, offset: p.imageOffset, size: p.servedSize });
    }
    const manifest = {
      job: this.o.id,
      target: target.name,
      sha256: image.sha256,
      imageSize: image.imageSize,
      parts: this.parts.map((p) => ({ file: p.file, offset: p.imageOffset, size: p.servedSize, crc32: hex8(p.crc32) })),
    };
    await this.o.files.stage(
      this.macdir,
      {
        jobId: this.o.id,
        targetIp: target.ip,
        files,
        beaconPrefix: reportPrefix(target.mac, this.o.id).slice(prefix.length),
        onRead: (rel, req) => this.onRead(rel, req),
        onProgress: (rel, done, size) => this.onProgress(rel, done, size),
        onBeacon: (message) => this.onBeacon(message),
        onTransferEnd: (rel, t) => this.onTransferEnd(rel, t),
      },
      { [FLASH_SCRIPT]: scriptImage, 'job.json': Buffer.from(JSON.stringify(manifest, null, 2) + '\n') },
    );
    this.log(
      'info',
      `staged ${this.parts.length} part(s) of ${formatBytes(image.imageSize)} for ${target.name} under ${this.macdir}/ (image ${image.sha256.slice(0, 12)}…)`,
    );
    this.throwIfCancelled();
  }

  /**
   * Layout seed (DESIGN §3.5): the seed card's own names — `<mac with :>/rpi_image_part_N`, the
   * whole image in 750 MiB pieces — and its report, a 4-byte `OK`/`FAILED` upload. No stage 2.
   */
  private async stageSeed(): Promise<void> {
    const { image, target } = this.o;
    const plan = planSeedParts(image.imageSize, { partBytes: this.o.flash.seedPartSize });
    const view = new ImageView(image.path, image.imageSize);
    const seed = { folder: seedFolder(target.mac), plan, reports: new SeedReports(), part0Fetched: false };
    this.seed = seed;
    const files = new Map<string, StagedFile>(
      plan.parts.map((p) => [p.name, { kind: 'range', view, offset: p.offset, size: p.size }]),
    );
    await this.o.files.stage(
      seed.folder,
      {
        jobId: this.o.id,
        targetIp: target.ip,
        files,
        onRead: (rel) => {
          if (rel === plan.parts[0]!.name && !seed.part0Fetched) {
            seed.part0Fetched = true;
            this.scriptFetched = true;
            this.log('info', `seed card fetched ${seed.folder}/${rel}`);
          }
          this.notify();
        },
        onProgress: () => (this.lastActivity = Date.now()),
        onBeacon: () => {},
        onWrite: (rel, req) => {
          const target = seed.reports.onWrite(rel, req);
          if (!target) return null;
          return {
            maxSize: target.maxSize,
            receive: async (data) => {
              await target.receive(data);
              // The card reboots after its report: the parts must be gone before it looks again.
              this.o.files.withdraw(seed.folder);
              this.done = { ok: rel === 'OK' };
              this.log(rel === 'OK' ? 'info' : 'error', `seed card reported ${rel} (${data.length} bytes)`, 'board');
              this.notify();
            },
          };
        },
      },
      {},
    );
    this.log(
      'info',
      `staged ${plan.parts.length} seed part(s) of ${formatBytes(image.imageSize)} for ${target.name} under ${seed.folder}/`,
    );
  }

  private async watchSeed(): Promise<void> {
    const seed = this.seed!;
    const { boardShow, stall } = this.o.timeouts;
    this.lastActivity = Date.now();
    this.log(
      'info',
      `waiting for the seed card of ${this.o.target.name} to fetch ${seed.folder}/${seed.plan.parts[0]!.name} (up to ${boardShow} s)`,
    );
    await this.waitFor(
      () => seed.part0Fetched,
      boardShow,
      () =>
        new JobFailure(
          'BOARD_NO_SHOW',
          interpretSeedResult(seed.plan, undefined, { part0Fetched: false, waitedMs: boardShow * 1000 }).message,
        ),
    );
    await this.waitFor(
      () => this.done !== undefined,
      stall,
      () =>
        new JobFailure(
          'BOARD_TIMEOUT',
          interpretSeedResult(seed.plan, undefined, { part0Fetched: true }).message + ` (quiet for ${stall} s)`,
        ),
    );
  }

  private verifySeed(): void {
    const seed = this.seed!;
    seed.outcome = interpretSeedResult(seed.plan, seed.reports.first, { part0Fetched: seed.part0Fetched });
    if (seed.outcome.code !== 'OK') throw new JobFailure(seed.outcome.code, seed.outcome.message);
    this.log('info', seed.outcome.message);
  }

  private notify(): void {
    this.lastActivity = Date.now();
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private onRead(rel: string, req: TftpRequest): void {
    if (rel === FLASH_SCRIPT) {
      if (!this.scriptFetched) this.log('info', `board fetched ${FLASH_SCRIPT} from ${req.peer.address}`);
      this.scriptFetched = true;
    } else {
      const part = this.parts.find((p) => p.file === `${this.macdir}/${rel}`);
      if (part) {
        const opts = Object.entries(req.options)
          .map(([k, v]) => `${k}=${v}`)
          .join(' ');
        this.log(
          'info',
          `part ${part.index}/${this.parts.length}: download started${opts ? ` (board asked ${opts})` : ''}`,
        );
      }
    }
    this.notify();
  }

  private onTransferEnd(rel: string, t: TransferEnd): void {
    const part = this.parts.find((p) => p.file === `${this.macdir}/${rel}`);
    if (!part) return;
    const options =
      Object.entries(t.options)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ') || 'none (plain RFC 1350)';
    if (t.ok) {
      this.tftpOptions = { ...t.options };
      const mbps = t.ms > 0 ? ` (${(t.bytes / 1e6 / (t.ms / 1000)).toFixed(1)} MB/s)` : '';
      this.log(
        'info',
        `part ${part.index}/${this.parts.length}: served ${t.bytes} bytes in ${(t.ms / 1000).toFixed(2)} s${mbps}; negotiated ${options}`,
      );
    } else {
      this.log(
        'warn',
        `part ${part.index}/${this.parts.length}: transfer ended early after ${t.bytes} bytes: ${t.error ?? 'unknown error'}; negotiated ${options}`,
      );
    }
    this.notify();
  }

  private lastProgressEmit = 0;

  private onProgress(rel: string, done: number, size: number): void {
    const part = this.parts.find((p) => p.file === `${this.macdir}/${rel}`);
    if (!part) return;
    part.served = done;
    this.lastActivity = Date.now();
    const now = Date.now();
    if (done < size && now - this.lastProgressEmit < 250) return;
    this.lastProgressEmit = now;
    const before = this.parts.filter((p) => p.index < part.index).reduce((s, p) => s + p.servedSize, 0);
    const total = this.parts.reduce((s, p) => s + p.servedSize, 0);
    this.o.emit({
      type: 'progress',
      job: this.o.id,
      phase: 'transfer',
      done: before + done,
      total,
      part: part.index,
      parts: this.parts.length,
    });
  }

  private onBeacon(message: string): void {
    const beacon = parseBeacon(message);
    if (!beacon) {
      this.log('warn', `board sent a report the agent does not understand: ${message}`, 'board');
      this.notify();
      return;
    }
    this.applyBeacon(beacon, message);
    this.notify();
  }

  private applyBeacon(b: Beacon, raw: string): void {
    const part = 'part' in b ? this.parts.find((p) => p.index === b.part) : undefined;
    switch (b.kind) {
      case 'start':
        this.log('info', 'stage 2 started on the board', 'board');
        break;
      case 'too-large': {
        // Only the board knows its card's size: its probe (reading the image's last block) failed
        // before anything was written. Hide the files now — the board reports done-failed and
        // resets next, and its stage 1 must find no flash.scr — and end the job with the code.
        this.o.files.withdraw(this.macdir);
        const size = this.o.image.imageSize;
        this.log(
          'error',
          `the card is smaller than the image: the board cannot read the image's last block (${size} bytes in)`,
          'board',
        );
        this.cancel(
          `the image (${formatBytes(size)}, ${size} bytes) is larger than ${this.o.target.name}'s card: the board could not read the image's last block; nothing was written`,
          'IMAGE_TOO_LARGE',
        );
        break;
      }
      case 'part-retry':
        if (part) part.retries += 1;
        this.log(
          'warn',
          `part ${b.part}: ${b.reason === 'crc' ? `CRC mismatch (board computed ${b.crc ?? '?'})` : 'download failed'}, retry ${b.attempt}`,
          'board',
        );
        break;
      case 'part-ok':
        if (part) {
          part.boardCrc = b.crc;
          part.status = 'ok';
        }
        this.log('info', `part ${b.part}/${this.parts.length}: written and read back, CRC ${b.crc}`, 'board');
        this.o.emit({
          type: 'progress',
          job: this.o.id,
          phase: 'verify',
          done: this.parts.filter((p) => p.status === 'ok').length,
          total: this.parts.length,
          part: b.part,
          parts: this.parts.length,
        });
        break;
      case 'part-failed':
        if (part) part.status = 'failed';
        this.boardFailures.push(`part ${b.part} failed at ${b.stage}${b.crc ? ` (CRC ${b.crc})` : ''}`);
        this.log(
          'error',
          `part ${b.part}: failed at ${b.stage}${b.crc ? ` (board computed CRC ${b.crc})` : ''}`,
          'board',
        );
        break;
      case 'done':
        // Withdraw the files before answering: the board resets right after this beacon and its
        // stage 1 must find no flash.scr, or it would flash again.
        this.o.files.withdraw(this.macdir);
        this.done = { ok: b.ok };
        // From here on, console lines are the new system's: only they may pass a console: check.
        this.consoleSince = this.console?.mark();
        this.log(b.ok ? 'info' : 'error', `board reports the flash ${b.ok ? 'succeeded' : 'failed'} (${raw})`, 'board');
        break;
    }
  }

  /** Wait until `ready()` holds, the board goes quiet for `quietSeconds`, or the job is aborted. */
  private async waitFor(ready: () => boolean, quietSeconds: number, onQuiet: () => JobFailure): Promise<void> {
    while (!ready()) {
      this.throwIfCancelled();
      const left = this.lastActivity + quietSeconds * 1000 - Date.now();
      if (left <= 0) throw onQuiet();
      await new Promise<void>((resolve) => {
        // Whichever comes first (board activity, the 1 s tick, abort) removes the other two.
        const done = () => {
          clearTimeout(timer);
          this.abort.signal.removeEventListener('abort', done);
          if (this.wake === done) this.wake = undefined;
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 1000));
        this.abort.signal.addEventListener('abort', done, { once: true });
        this.wake = done;
      });
    }
  }

  private async watchTransfer(): Promise<void> {
    const { boardShow, stall } = this.o.timeouts;
    this.lastActivity = Date.now();
    if (!this.scriptFetched)
      this.log(
        'info',
        `waiting for ${this.o.target.name} to fetch ${this.macdir}/${FLASH_SCRIPT} (up to ${boardShow} s)`,
      );
    await this.waitFor(
      () => this.scriptFetched,
      boardShow,
      () =>
        new JobFailure(
          'BOARD_NO_SHOW',
          `${this.o.target.name} did not fetch ${this.macdir}/${FLASH_SCRIPT} within ${boardShow} s of the reset (is it powered, wired, and running the recovery U-Boot?)`,
        ),
    );
    await this.waitFor(
      () => this.done !== undefined,
      stall,
      () => {
        const where = this.parts.find((p) => p.status === 'missing');
        return new JobFailure(
          'BOARD_TIMEOUT',
          `${this.o.target.name} went quiet for ${stall} s${where ? ` during part ${where.index}/${this.parts.length}` : ''}`,
        );
      },
    );
  }

  private verify(): void {
    if (!this.done?.ok || this.boardFailures.length) {
      throw new JobFailure(
        'BOARD_REPORTED_FAILURE',
        this.boardFailures.length ? this.boardFailures.join('; ') : 'the board reported failure',
      );
    }
    const problems: string[] = [];
    for (const p of this.parts) {
      if (p.status !== 'ok') problems.push(`part ${p.index} was never reported written`);
      else if (p.boardCrc?.toLowerCase() !== boardCrcText(p.crc32))
        problems.push(`part ${p.index}: board read back CRC ${p.boardCrc}, expected ${boardCrcText(p.crc32)}`);
    }
    if (problems.length) throw new JobFailure('VERIFY_MISMATCH', problems.join('; '));
    this.log('info', `all ${this.parts.length} part(s) written and verified by the board`);
  }
}

function parseBootCheckOrFail(text: string) {
  try {
    return parseBootCheck(text);
  } catch (err) {
    throw new JobFailure('BAD_REQUEST', `boot check: ${(err as Error).message}`);
  }
}

export function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
