/**
 * The flash method of every layout whose board runs stage 1 (uboot/boot.cmd): the agent serves a
 * per-job stage-2 script (`flash.scr`) and the image's parts as byte ranges of the stored image,
 * and the board reports each step by reading beacons (board/beacons.ts). Layouts differ only in
 * what they change in the image on the way (patches) and which parts they have written; they build
 * this method with their choices (whole.ts, inject.ts).
 *
 * A report counts only when the board earned it: beacon names carry a per-job secret that only
 * the board's flash.scr holds (and the folder is served to the board's address only), a part's
 * success is believed only once the board has acknowledged that part's download in full (all
 * but the last window: U-Boot does not resend a lost final ACK), and reports must come in order.
 * Anything else fails the job with REPORT_REJECTED.
 *
 * Compressed parts (`flash.compress` auto): a board whose model's Debian U-Boot has `unzip` is
 * asked once to prove it (the script's probe, beacon `caps-unzip`, recorded per target by
 * staging/board-caps.ts); from its next job on, each part travels as a gzip stream that the board
 * inflates into its load buffer and checks by the part's own CRC. "Served in full" is then the
 * compressed file served in full.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { FLASH_SCRIPT, macDir, partFile, reportPrefix } from '../../../src/protocol/tftp-names.js';
import { formatBytes, hex8 } from '../../../src/protocol/units.js';
import { CodedError } from '../../../src/protocol/errors.js';
import type { PartReport } from '../../../src/protocol/messages.js';
import { boardCrcText, parseBeacon, type Beacon } from '../board/beacons.js';
import { generateStage2Script, ramTopNeeded, type PartPlan, type Stage2Part } from '../board/stage2-script.js';
import { buildScriptImage } from '../board/uimage.js';
import type { Patch } from '../image/disk.js';
import type { FirmwareFiles, StagedFile } from '../staging/board-files.js';
import { BoardCapsStore, modelHasUnzip } from '../staging/board-caps.js';
import { addMeasurement, chooseWindow, jobRate, WindowRatesStore } from '../staging/window-tuning.js';
import { compressParts, sweepCompressedCache } from '../staging/compressed-parts.js';
import { getPiModel } from '../image/models.js';
import { ImageView } from '../staging/image-view.js';
import type { TftpProgress, TftpRequest, TransferEnd } from '../tftp/server.js';
import type { BoardWatch, FlashMethod, FlashOutcome, LayoutJob } from './layout.js';
import { planImageWrites } from './part-plan.js';
import { ServedParts, UNSERVED, type ServedPart } from './served-parts.js';

export interface Stage2Choices {
  /** The layout's name, for the job's log. */
  layout: string;
  /** What the layout changes in the image (e.g. U-Boot injected into the boot partition); none = as stored. */
  patches?: () => Promise<Patch[]>;
  /** Which of the image's parts the board writes; all unless given. */
  selectParts?: (plan: readonly PartPlan[]) => PartPlan[];
  /**
   * What the board's own firmware fetches over the network before stage 1 runs (layout
   * `netflash`): staged with the job's files, out of the (patched) image's boot partition.
   */
  firmware?: (view: ImageView) => Promise<Omit<FirmwareFiles, 'onRequest' | 'onProgress' | 'onTransferEnd'>>;
}

interface PartState extends Stage2Part, Omit<ServedPart, 'index' | 'servedSize' | 'zip'> {
  status: PartReport['status'];
  retries: number;
  boardCrc?: string;
  /** Read-compare: the board found the part on its card already and neither downloaded nor wrote it. */
  sameOnCard?: boolean;
}

/** Builds the stage-2 flash method of one job with a layout's choices. */
export function stage2Flash(job: LayoutJob, board: BoardWatch, choices: Stage2Choices): FlashMethod {
  return new Stage2Flash(job, board, choices);
}

class Stage2Flash implements FlashMethod {
  private readonly macdir: string;
  private parts: PartState[] = [];
  private scriptFetched = false;
  /** Addresses whose requests for flash.scr were refused (not the target's IP: tftp.checkClientIp). */
  private readonly refusedFrom = new Set<string>();
  private done?: { ok: boolean };
  private readonly boardFailures: string[] = [];
  /** What the board acknowledged of each part's downloads (served-parts.ts). */
  private readonly served: ServedParts<PartState>;
  /** The top of RAM below which the board's RAM probe refuses the job (stage2-script.ts). */
  private ramTopNeeded = 0;
  /** This job asked the board whether it can unzip, and what it answered (undefined: not yet). */
  private probingUnzip = false;
  private probeAnswered = false;
  private readonly caps: BoardCapsStore;
  private readonly windowRates: WindowRatesStore;
  /** The window this job measures for the board (`flash.tftpWindowSize: auto`), else undefined. */
  private measuredWindow?: number;
  /** In every report name; known to the agent and the board's flash.scr only. */
  private readonly secret = randomBytes(8).toString('hex');

  constructor(
    private readonly job: LayoutJob,
    private readonly board: BoardWatch,
    private readonly choices: Stage2Choices,
  ) {
    this.macdir = macDir(job.target.mac);
    this.caps = new BoardCapsStore(path.join(job.config.stateDir, 'boards'));
    this.windowRates = new WindowRatesStore(path.join(job.config.stateDir, 'boards'));
    this.served = new ServedParts(board, { parts: () => this.parts, cardWriteRate: job.config.flash.cardWriteRate });
    board.redact(this.secret);
  }

  async stage(): Promise<void> {
    const { image, target, config, id } = this.job;
    const { tftpWindowSize: configuredWindow, ...flash } = config.flash;
    const patches = (await this.choices.patches?.()) ?? [];
    const view = new ImageView(image.path, image.imageSize, patches);
    const { plan, crcs: planCrcs } = await planImageWrites(this.job, view, flash.partSize, (m) =>
      this.board.log('info', m),
    );
    const selected = this.choices.selectParts?.(plan) ?? plan;
    const crcs = selected.map((p) => planCrcs[p.index - 1]!);
    if (patches.length) {
      const changed = patches.reduce((n, p) => n + p.data.length, 0);
      const touched = selected.filter((p) => view.touches(p.imageOffset, p.servedSize)).length;
      this.board.log(
        'info',
        `layout ${this.choices.layout}: ${patches.length} patch(es), ${changed} bytes changed in ${touched} part(s)`,
      );
    }
    this.parts = selected.map((p) => ({
      ...p,
      file: partFile(target.mac, id, p.index),
      crc32: crcs[p.index - 1]!,
      status: 'missing',
      retries: 0,
      ...UNSERVED,
      wireSize: p.servedSize,
    }));
    const transfer = await this.chooseTransfer();
    const zipped = transfer === 'gzip' ? await this.compress(view) : undefined;
    this.probingUnzip = transfer === 'probe';
    const scriptOptions = {
      ...flash,
      jobId: id,
      mac: target.mac,
      reportSecret: this.secret,
      parts: this.parts,
      imageSize: image.imageSize,
      ...(zipped ? { unzip: { zipAddr: flash.zipAddr } } : {}),
      probeUnzip: this.probingUnzip,
      readCompare: flash.readCompare,
      ...(await this.chooseWindow(configuredWindow)),
    };
    const script = generateStage2Script(scriptOptions);
    this.ramTopNeeded = ramTopNeeded(scriptOptions);
    const scriptImage = buildScriptImage(script, { name: `rpi-flash ${id}` });
    const firmware = await this.choices.firmware?.(view);
    const files = new Map<string, StagedFile>([[FLASH_SCRIPT, { kind: 'buffer', data: scriptImage }]]);
    for (const p of this.parts) {
      const zip = zipped?.[p.index - 1];
      if (zip && p.zip) files.set(this.relative(p.zip.file), zip);
      else files.set(this.relative(p.file), { kind: 'range', view, offset: p.imageOffset, size: p.servedSize });
    }
    const manifest = {
      job: id,
      target: target.name,
      layout: this.choices.layout,
      sha256: image.sha256,
      imageSize: image.imageSize,
      parts: this.parts.map((p) => ({
        file: p.zip?.file ?? p.file,
        offset: p.imageOffset,
        size: p.servedSize,
        crc32: hex8(p.crc32),
        ...(p.zip ? { gzipSize: p.zip.size } : {}),
      })),
    };
    await this.job.files.stage(
      this.macdir,
      {
        jobId: id,
        targetIp: target.ip,
        files,
        beaconPrefix: this.relative(reportPrefix(target.mac, id, this.secret)),
        onRead: (rel, req) => this.onRead(rel, req),
        onProgress: (rel, p) => this.onProgress(rel, p),
        onBeacon: (message) => this.onBeacon(message),
        onTransferEnd: (rel, t) => this.onTransferEnd(rel, t),
        onRefused: (rel, req) => this.onRefused(rel, req),
        // The firmware's fetches show the board coming: each one restarts the wait for flash.scr.
        ...(firmware && {
          firmware: {
            ...firmware,
            onRequest: () => this.board.activity(),
            onProgress: () => this.board.activity(),
          },
        }),
      },
      { [FLASH_SCRIPT]: scriptImage, 'job.json': Buffer.from(JSON.stringify(manifest, null, 2) + '\n') },
    );
    this.board.log(
      'info',
      `staged ${this.parts.length} part(s) of ${formatBytes(image.imageSize)} for ${target.name} ` +
        `under ${this.macdir}/ (image ${image.sha256.slice(0, 12)}…)`,
    );
  }

  /**
   * Raw or gzip'd parts for this board. gzip only when `flash.compress` is auto, the model's
   * Debian build has `unzip` and the board has shown it can (an earlier job's probe); a board of
   * such a model not probed yet is asked in this job (`probe`), which still travels raw.
   */
  private async chooseTransfer(): Promise<'raw' | 'probe' | 'gzip'> {
    const { target, config } = this.job;
    if (config.flash.compress === 'off') return 'raw';
    let hasUnzip: boolean;
    try {
      hasUnzip = modelHasUnzip(getPiModel(target.model ?? config.uboot.defaultModel));
    } catch {
      return 'raw'; // a model the agent does not know: never guess
    }
    if (!hasUnzip) return 'raw';
    const caps = await this.caps.read(target.name);
    if (caps === undefined) return 'probe';
    return caps.unzip ? 'gzip' : 'raw';
  }

  /** The board's own window (its targets row) over the agent's; `auto` picks from what the board measured. */
  private async chooseWindow(configured: number | 'auto' | undefined): Promise<{ tftpWindowSize?: number }> {
    const { target } = this.job;
    if (target.tftpWindowSize !== undefined) return { tftpWindowSize: target.tftpWindowSize };
    if (configured !== 'auto') return configured === undefined ? {} : { tftpWindowSize: configured };
    const choice = chooseWindow(await this.windowRates.read(target.name));
    this.measuredWindow = choice.window;
    this.board.log('info', `TFTP window ${choice.window} (flash.tftpWindowSize auto): ${choice.reason}`);
    return { tftpWindowSize: choice.window };
  }

  /** Folds this job's download rate into the board's record; a failure to write it only costs a measurement. */
  private async recordWindowRate(): Promise<void> {
    const { target, id } = this.job;
    const window = this.measuredWindow;
    const mbps = jobRate(this.served.downloads);
    if (window === undefined || mbps === undefined) return;
    try {
      const rates = await this.windowRates.read(target.name);
      const seen = new Date().toISOString();
      await this.windowRates.record(target.name, addMeasurement(rates, { window, mbps, job: id, seen }));
      this.board.log('info', `window ${window} measured ${mbps.toFixed(1)} MB/s on ${target.name}: recorded`);
    } catch (err) {
      this.board.log('warn', `could not record ${target.name}'s TFTP rates: ${(err as Error).message}`);
    }
  }

  /** gzip every part (unpatched ones through the image's cache); logs what it cost. */
  private async compress(view: ImageView): Promise<StagedFile[]> {
    const { image, config, target, id } = this.job;
    const cacheRoot = path.join(config.stateDir, 'zparts');
    const swept = await sweepCompressedCache(cacheRoot, path.dirname(image.path)).catch(() => []);
    if (swept.length) this.board.log('info', `removed the compressed parts of ${swept.length} evicted image(s)`);
    const { parts, stats } = await compressParts(view, this.parts, { cacheDir: path.join(cacheRoot, image.sha256) });
    this.parts.forEach((p, i) => {
      const z = parts[i]!;
      p.zip = { file: `${partFile(target.mac, id, p.index)}.gz`, size: z.size };
      p.wireSize = z.size;
    });
    const mb = stats.compressedRawBytes / 1e6;
    const cost = stats.compressedParts
      ? `; compressed ${stats.compressedParts} part(s) (${formatBytes(stats.compressedRawBytes)}) in ` +
        `${(stats.wallMs / 1000).toFixed(2)} s, ${Math.round(stats.cpuMs)} ms CPU ` +
        `(${(stats.cpuMs / mb).toFixed(1)} ms/MB)`
      : '';
    this.board.log(
      'info',
      `gzip'd parts: ${formatBytes(stats.rawBytes)} travel as ${formatBytes(stats.zipBytes)} ` +
        `(${((100 * stats.zipBytes) / stats.rawBytes).toFixed(1)}%), ` +
        `${parts.filter((p) => p.cached).length} of ${parts.length} from the image's cache${cost}`,
    );
    return parts.map((p) => p.file);
  }

  /** Records what the board showed of its U-Boot; a failure to write it only costs a probe again. */
  private recordUnzip(unzip: boolean): void {
    const { target, id } = this.job;
    this.caps
      .record(target.name, { unzip, seen: new Date().toISOString(), job: id })
      .catch((err: unknown) =>
        this.board.log('warn', `could not record ${target.name}'s U-Boot capabilities: ${(err as Error).message}`),
      );
  }

  async watch(): Promise<void> {
    const { boardShow, stall } = this.job.timeouts;
    const name = this.job.target.name;
    if (!this.scriptFetched)
      this.board.log('info', `waiting for ${name} to fetch ${this.macdir}/${FLASH_SCRIPT} (up to ${boardShow} s)`);
    await this.board.until(
      () => this.scriptFetched,
      boardShow,
      () =>
        this.refusedFrom.size
          ? new CodedError(
              'BOARD_IP_MISMATCH',
              `${name} did not fetch ${this.macdir}/${FLASH_SCRIPT} within ${boardShow} s of the reset from its ` +
                `address ${this.job.target.ip}; requests for it came from ${[...this.refusedFrom].join(', ')} and ` +
                "were refused (tftp.checkClientIp): give the board its row's IP by DHCP, or correct the row",
            )
          : new CodedError(
              'BOARD_NO_SHOW',
              `${name} did not fetch ${this.macdir}/${FLASH_SCRIPT} within ${boardShow} s of the reset ` +
                '(is it powered, wired, and running the recovery U-Boot?)',
            ),
    );
    await this.board.until(
      () => this.done !== undefined,
      stall,
      () => {
        const where = this.parts.find((p) => p.status === 'missing');
        const during = where ? ` during part ${where.index}/${this.parts.length}` : '';
        return new CodedError('BOARD_TIMEOUT', `${name} went quiet for ${stall} s${during}`);
      },
    );
  }

  verify(): void {
    if (!this.done?.ok || this.boardFailures.length) {
      const why = this.boardFailures.length ? this.boardFailures.join('; ') : 'the board reported failure';
      throw new CodedError('BOARD_REPORTED_FAILURE', why);
    }
    const problems: string[] = [];
    for (const p of this.parts) {
      const expected = boardCrcText(p.crc32);
      if (p.status !== 'ok') problems.push(`part ${p.index} was never reported written`);
      else if (p.boardCrc?.toLowerCase() !== expected)
        problems.push(`part ${p.index}: board read back CRC ${p.boardCrc}, expected ${expected}`);
    }
    if (problems.length) throw new CodedError('VERIFY_MISMATCH', problems.join('; '));
    const same = this.parts.filter((p) => p.sameOnCard).length;
    this.board.log(
      'info',
      `all ${this.parts.length} part(s) written and verified by the board` +
        (same ? ` (${same} of them already on the card: read and checked there, not written)` : ''),
    );
  }

  outcome(): FlashOutcome {
    const written = this.parts.filter((p) => p.status === 'ok').length;
    // A part the board holds in full may be on its way to the card even before its report.
    const touched = written > 0 || this.parts.some((p) => this.served.heldInFull(p));
    return {
      card: written === this.parts.length && this.done?.ok ? 'written' : touched ? 'partial' : 'untouched',
      bytesWritten: this.parts.filter((p) => p.status === 'ok' && !p.sameOnCard).reduce((sum, p) => sum + p.size, 0),
      mappedBytes: this.parts.reduce((sum, p) => sum + p.size, 0),
      wireBytes: this.served.wireBytes,
      parts: this.parts.map((p) => ({
        part: p.index,
        offset: p.imageOffset,
        size: p.size,
        crc32: hex8(p.crc32),
        status: p.status,
        retries: p.retries,
      })),
      ...(this.served.tftpOptions ? { tftpOptions: this.served.tftpOptions } : {}),
    };
  }

  async unstage(): Promise<void> {
    await this.recordWindowRate();
    await this.job.files.unstage(this.macdir);
  }

  /** A TFTP path under the target's folder, relative to it. */
  private relative(file: string): string {
    return file.slice(this.macdir.length + 1);
  }

  private partOf(rel: string): PartState | undefined {
    return this.parts.find((p) => this.relative(p.zip?.file ?? p.file) === rel);
  }

  private onRead(rel: string, req: TftpRequest): void {
    if (rel === FLASH_SCRIPT) {
      if (!this.scriptFetched) this.board.log('info', `board fetched ${FLASH_SCRIPT} from ${req.peer.address}`);
      this.scriptFetched = true;
    } else {
      const part = this.partOf(rel);
      if (part) this.served.downloadStarted(part, req);
    }
    this.board.activity();
  }

  /**
   * A request for the folder from another address was refused. Most likely the board itself, with
   * a DHCP address its row does not have; but any host may ask, so it does not end the job: it
   * names the cause if the board never shows from its own address.
   */
  private onRefused(rel: string, req: TftpRequest): void {
    if (rel !== FLASH_SCRIPT || this.scriptFetched) return;
    const from = req.peer.address.replace(/^::ffff:/, '');
    if (this.refusedFrom.has(from)) return;
    this.refusedFrom.add(from);
    this.board.log(
      'warn',
      `a request for ${this.macdir}/${FLASH_SCRIPT} came from ${from}, not ${this.job.target.name}'s ` +
        `${this.job.target.ip}: refused (tftp.checkClientIp)`,
    );
  }

  private onTransferEnd(rel: string, t: TransferEnd): void {
    const part = this.partOf(rel);
    if (part) this.served.transferEnded(part, t);
  }

  private onProgress(rel: string, p: TftpProgress): void {
    const part = this.partOf(rel);
    if (part) this.served.progress(part, p);
  }

  /** Why a success report cannot be believed (not served in full, or out of order), or undefined. */
  private unearned(b: Extract<Beacon, { kind: 'part-ok' | 'part-same' | 'done' }>): string | undefined {
    if (b.kind === 'done') {
      if (!b.ok) return undefined;
      const open = this.parts.find((p) => p.status !== 'ok');
      return open && `the board reported done-ok before part ${open.index}/${this.parts.length} was reported written`;
    }
    const part = this.parts.find((p) => p.index === b.part);
    if (!part) return `the board reported part ${b.part}, which this job does not have`;
    const earlier = this.parts.find((p) => p.index < part.index && p.status !== 'ok');
    if (earlier) return `the board reported part ${part.index} before part ${earlier.index} (out of order)`;
    // Read-compare serves nothing: only the board's reading of its own card speaks for the part.
    if (b.kind === 'part-same') return this.job.config.flash.readCompare ? undefined : 'read-compare is off';
    if (!this.served.heldInFull(part))
      return (
        `the board reported part ${part.index} written, but acknowledged only ${part.acked} of its ` +
        `${part.wireSize} bytes (the agent had not served it in full to ${this.job.target.ip})`
      );
    return undefined;
  }

  /** The verify phase's progress after part `part` was proven on the card. */
  private verifiedProgress(part: number): void {
    const count = this.parts.length;
    this.board.progress({
      phase: 'verify',
      done: this.parts.filter((p) => p.status === 'ok').length,
      total: count,
      part,
      parts: count,
    });
  }

  private onBeacon(message: string): void {
    const beacon = parseBeacon(message);
    if (beacon) this.apply(beacon, message);
    else this.board.log('warn', `board sent a report the agent does not understand: ${message}`, 'board');
    this.board.activity();
  }

  private apply(b: Beacon, raw: string): void {
    if (this.probingUnzip && !this.probeAnswered && b.kind !== 'start') {
      // The probe runs right after start: any other report next means the board could not unzip.
      this.probeAnswered = true;
      const can = b.kind === 'caps-unzip';
      this.recordUnzip(can);
      this.board.log(
        'info',
        can
          ? "the board's U-Boot can unzip: parts travel gzip'd from its next job on"
          : "the board's U-Boot cannot unzip (its probe failed): parts keep travelling raw",
        'board',
      );
    }
    const part = 'part' in b ? this.parts.find((p) => p.index === b.part) : undefined;
    const count = this.parts.length;
    const refused = b.kind === 'part-ok' || b.kind === 'part-same' || b.kind === 'done' ? this.unearned(b) : undefined;
    if (refused) {
      // A success nobody earned: the card may hold anything. Hide the files so nothing more is
      // fetched, and end the job with the code that says so.
      this.job.files.withdraw(this.macdir);
      this.board.log('error', `report refused: ${raw}: ${refused}`, 'board');
      this.board.fail('REPORT_REJECTED', refused);
      return;
    }
    switch (b.kind) {
      case 'start':
        this.board.log('info', 'stage 2 started on the board', 'board');
        break;
      case 'too-large': {
        // Only the board knows its card's size: its probe (reading the image's last block) failed
        // before anything was written. Hide the files now — the board reports done-failed and
        // resets next, and its stage 1 must find no flash.scr — and end the job with the code.
        this.job.files.withdraw(this.macdir);
        const size = this.job.image.imageSize;
        this.board.log(
          'error',
          `the card is smaller than the image: the board cannot read the image's last block (${size} bytes in)`,
          'board',
        );
        this.board.fail(
          'IMAGE_TOO_LARGE',
          `the image (${formatBytes(size)}, ${size} bytes) is larger than ${this.job.target.name}'s card: ` +
            "the board could not read the image's last block; nothing was written",
        );
        break;
      }
      case 'no-room': {
        // The board's firmware says its RAM ends below what the buffers and U-Boot's reserve need
        // (gpu_mem, a smaller board than its row says): nothing was written. As for too-large, hide
        // the files before the board's done-failed and reset.
        this.job.files.withdraw(this.macdir);
        const top = Number.parseInt(b.top, 16);
        const { loadAddr, partSize } = this.job.config.flash;
        const message =
          `${this.job.target.name}'s RAM ends at 0x${b.top} (${formatBytes(top)}, as its firmware reports it), ` +
          `but stage 2 needs it to reach 0x${this.ramTopNeeded.toString(16)}: its buffers (flash.loadAddr ` +
          `0x${loadAddr.toString(16)} + parts of up to ${formatBytes(partSize)}) plus U-Boot's reserve; ` +
          "lower flash.partSize or flash.loadAddr, or the gpu_mem in the card's config.txt; nothing was written";
        this.board.log('error', message, 'board');
        this.board.fail('BOARD_RAM_TOO_SMALL', message);
        break;
      }
      case 'caps-unzip':
        break; // recorded above
      case 'no-unzip': {
        // Told to unzip, the board cannot (its U-Boot changed since it was probed): nothing was
        // written. Record it so the next job travels raw, and end this one.
        this.job.files.withdraw(this.macdir);
        this.recordUnzip(false);
        const message =
          `${this.job.target.name}'s U-Boot cannot unzip (the probe stream did not inflate), but this job's parts ` +
          "are gzip'd: nothing was written; the agent recorded it and the board's next job travels raw";
        this.board.log('error', message, 'board');
        this.boardFailures.push(message);
        this.board.fail('BOARD_REPORTED_FAILURE', message);
        break;
      }
      case 'part-retry': {
        if (part) part.retries += 1;
        const why =
          b.reason === 'crc'
            ? `CRC mismatch (board computed ${b.crc ?? '?'})`
            : b.reason === 'unzip'
              ? 'its gzip stream did not unzip on the board'
              : 'download failed';
        this.board.log('warn', `part ${b.part}: ${why}, retry ${b.attempt}`, 'board');
        break;
      }
      case 'part-ok':
        if (part) {
          part.boardCrc = b.crc;
          part.status = 'ok';
        }
        this.board.log('info', `part ${b.part}/${count}: written and read back, CRC ${b.crc}`, 'board');
        this.verifiedProgress(b.part);
        break;
      case 'part-same':
        if (part) {
          part.boardCrc = b.crc;
          part.status = 'ok';
          part.sameOnCard = true;
        }
        this.board.log(
          'info',
          `part ${b.part}/${count}: already on the card (the board read CRC ${b.crc} there): ` +
            'not downloaded, not written',
          'board',
        );
        this.verifiedProgress(b.part);
        break;
      case 'part-failed': {
        if (part) part.status = 'failed';
        const crc = b.crc ? ` (CRC ${b.crc})` : '';
        this.boardFailures.push(
          b.stage === 'unzip'
            ? `part ${b.part} failed at unzip (its gzip stream did not inflate on the board, every attempt; ` +
                'nothing of it was written)'
            : `part ${b.part} failed at ${b.stage}${crc}`,
        );
        this.board.log(
          'error',
          `part ${b.part}: failed at ${b.stage}${b.crc ? ` (board computed CRC ${b.crc})` : ''}`,
          'board',
        );
        break;
      }
      case 'done':
        // Withdraw the files before answering: the board resets right after this beacon and its
        // stage 1 must find no flash.scr, or it would flash again.
        this.job.files.withdraw(this.macdir);
        this.done = { ok: b.ok };
        this.board.flashDone();
        this.board.log(
          b.ok ? 'info' : 'error',
          `board reports the flash ${b.ok ? 'succeeded' : 'failed'} (${raw})`,
          'board',
        );
        break;
    }
  }
}
