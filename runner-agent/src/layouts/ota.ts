/**
 * Layout `ota`: the in-place update of a board that runs its system and answers SSH, with no
 * U-Boot, no spare partition and no reset wire (issue 12, DESIGN §9). The agent logs in with the
 * row's pinned host key (targets/ssh-session.ts), looks at the board (board/ota-probe.ts: refused
 * with BOARD_UNFIT before anything is touched), stages the image's parts as TFTP byte ranges under
 * the target's folder exactly as stage 2 gets them (part-plan.ts, the same names and CRCs), mounts
 * a tmpfs on the board and puts the agent's static busybox and the generated switch script in it
 * (board/ota-switch-script.ts), then — in watch(), after the job's (empty) reset — starts the script
 * detached. The script leaves the running system for RAM (the SSH session drops there: nothing
 * depends on it), fetches, checks, writes and reads back each part, reports with beacons in stage
 * 2's grammar and reboots.
 *
 * Reports count only when earned, as in stage2-flash.ts: the beacon names carry the job's secret,
 * a part's success is believed only once the board has acknowledged that part in full, and reports
 * must come in order. The card's state follows what the board can have done: `untouched` until a
 * part it held in full may be on its way to the disk, `partial` from then until every part is
 * proven and the board says done; a failure after that point is CARD_PARTLY_WRITTEN.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { macDir, partFile, reportPrefix } from '../../../src/protocol/tftp-names.js';
import { formatBytes, hex8 } from '../../../src/protocol/units.js';
import { CodedError, type ErrorCode } from '../../../src/protocol/errors.js';
import type { PartReport } from '../../../src/protocol/messages.js';
import { boardCrcText } from '../board/beacons.js';
import {
  boardProblems,
  busyboxArchesFor,
  parseBoardProbe,
  PROBE_COMMAND,
  ramDir,
  rootDevice,
  type BoardProbe,
} from '../board/ota-probe.js';
import { parseOtaBeacon, type OtaBeacon } from '../board/ota-beacons.js';
import { generateOtaSwitchScript, SWITCH_LOG, SWITCH_SCRIPT } from '../board/ota-switch-script.js';
import { elfMachineOf, readElfInfo } from '../board/static-elf.js';
import type { PartPlan } from '../board/stage2-script.js';
import type { StagedFile } from '../staging/board-files.js';
import { ImageView } from '../staging/image-view.js';
import type { Target } from '../targets/database.js';
import { SshSession, type ExecResult } from '../targets/ssh-session.js';
import type { TftpProgress, TftpRequest, TransferEnd } from '../tftp/server.js';
import type { BoardWatch, FlashMethod, FlashOutcome, Layout, LayoutJob } from './layout.js';
import type { OtaArch } from './ota-settings.js';
import { planImageWrites } from './part-plan.js';
import { ServedParts, UNSERVED, type ServedPart } from './served-parts.js';

/** A shell on the board: SSH in the lab, the test machine's own sh in the dry-run tests. */
export interface BoardShell {
  exec(command: string, o: { stdin?: Buffer | string; timeoutMs: number }): Promise<ExecResult>;
  close(): void;
}

export interface OtaOptions {
  /** How the layout gets a shell on the board; default SSH with the row's pinned host key. */
  openShell?: (target: Target, o: { timeoutMs: number }) => Promise<BoardShell>;
  /**
   * Tests only: run the switch script without killing, pivoting or rebooting, writing `disk` (a
   * plain file) from `root` (a plain folder, no tmpfs), with whatever busybox the config names.
   */
  dryRun?: { disk: string; root: string };
}

/** RAM the script's tmpfs holds beyond the part and busybox: the script, its log, tftp's buffers. */
const RAM_ROOT_SLACK = 8 * 1024 ** 2;

export function otaLayout(options: OtaOptions = {}): Layout {
  return (job, board) => new OtaFlash(job, board, options);
}

export const ota: Layout = otaLayout();

async function sshShell(target: Target, o: { timeoutMs: number }): Promise<BoardShell> {
  if (!target.ssh)
    throw new CodedError('LAB_MISCONFIGURED', `${target.name}: layout ota needs the ssh, sshkey and hostkey columns`);
  return SshSession.connect(target.ip, target.ssh, o);
}

interface PartState extends PartPlan, ServedPart {
  file: string;
  crc32: number;
  status: PartReport['status'];
  retries: number;
  boardCrc?: string;
  /** Held in full with no report since that says it was not written: it may be on the disk. */
  mayBeWriting: boolean;
  /** The board said a write or read-back of it failed: the disk holds something of it. */
  diskTouched: boolean;
}

type Stage = 'staged' | 'started' | 'reported-start' | 'switched' | 'done';

class OtaFlash implements FlashMethod {
  private readonly macdir: string;
  private readonly secret = randomBytes(8).toString('hex');
  private parts: PartState[] = [];
  private shell?: BoardShell;
  private probe?: BoardProbe;
  private asRoot: (command: string) => string = (c) => c;
  /** The RAM root on the board, once mounted (it must go again if the script never starts). */
  private ramRoot?: string;
  private ramRootMounted = false;
  private script = '';
  private stage_: Stage = 'staged';
  private oldRoot?: 'ro' | 'frozen';
  private switchFailed?: string;
  private done?: { ok: boolean };
  private readonly boardFailures: string[] = [];
  private readonly refusedFrom = new Set<string>();
  /** What the board acknowledged of each part's downloads (served-parts.ts). */
  private readonly served: ServedParts<PartState>;

  constructor(
    private readonly job: LayoutJob,
    private readonly board: BoardWatch,
    private readonly options: OtaOptions,
  ) {
    this.macdir = macDir(job.target.mac);
    this.served = new ServedParts(board, {
      parts: () => this.parts,
      cardWriteRate: job.config.flash.cardWriteRate,
      onHeldInFull: (part) => (part.mayBeWriting = true),
    });
    board.redact(this.secret);
  }

  private get settings() {
    return this.job.config.ota;
  }

  private get ms() {
    return { connect: this.settings.connectTimeout * 1000, command: this.settings.commandTimeout * 1000 };
  }

  async stage(): Promise<void> {
    const { target, image, id } = this.job;
    const open = this.options.openShell ?? sshShell;
    this.board.log('info', `logging in to ${target.name} (${target.ip}) over SSH`);
    this.shell = await open(target, { timeoutMs: this.ms.connect });
    const probe = await this.runProbe();
    const { arch, busybox } = await this.pickBusybox(probe);
    const needed = this.settings.partSize + busybox.length + this.settings.ramMargin;
    const problems = boardProblems(probe, { ramBytes: needed, busyboxArches: Object.keys(this.settings.busybox) });
    if (problems.length)
      throw new CodedError('BOARD_UNFIT', `${target.name} cannot take the in-place update: ${problems.join('; ')}`);
    const root = rootDevice(probe);
    if (typeof root === 'string') throw new CodedError('BOARD_UNFIT', root);
    const server = this.settings.serverAddress ?? probe.sshClientAddress;
    if (!server)
      throw new CodedError(
        'LAB_MISCONFIGURED',
        `${target.name}'s sshd does not say where the agent connects from ($SSH_CONNECTION): set ota.serverAddress`,
      );
    this.asRoot = probe.uid === 0 ? (c) => c : (c) => `sudo -n sh -c ${shq(c)}`;
    this.board.log(
      'info',
      `${target.name}: ${probe.machine} (busybox ${arch}), root ${root.partition} (${root.fsType}) on ${root.disk}, ` +
        `${formatBytes(probe.memAvailable ?? 0)} RAM free, init ${probe.init || '?'}; parts come from ${server}`,
    );

    const view = new ImageView(image.path, image.imageSize, []);
    const { plan, crcs } = await planImageWrites(this.job, view, this.settings.partSize, (m) =>
      this.board.log('info', m),
    );
    this.parts = plan.map((p, i) => ({
      ...p,
      file: partFile(target.mac, id, p.index),
      crc32: crcs[i]!,
      status: 'missing',
      retries: 0,
      ...UNSERVED,
      wireSize: p.servedSize,
      mayBeWriting: false,
      diskTouched: false,
    }));
    const dry = this.options.dryRun;
    this.ramRoot = dry?.root ?? `${ramDir(probe)!}/rpi-flash-${id}`;
    this.script = generateOtaSwitchScript({
      jobId: id,
      root: this.ramRoot,
      disk: dry?.disk ?? root.disk,
      server,
      port: this.job.tftpPort,
      blockSize: this.settings.tftpBlockSize,
      retries: this.job.config.flash.retries,
      reportPrefix: reportPrefix(target.mac, id, this.secret),
      parts: this.parts,
      ...(dry ? { dryRun: true } : {}),
    });
    const files = new Map<string, StagedFile>();
    for (const p of this.parts)
      files.set(this.relative(p.file), { kind: 'range', view, offset: p.imageOffset, size: p.servedSize });
    const manifest = {
      job: id,
      target: target.name,
      layout: 'ota',
      sha256: image.sha256,
      imageSize: image.imageSize,
      disk: root.disk,
      parts: this.parts.map((p) => ({ file: p.file, offset: p.imageOffset, size: p.servedSize, crc32: hex8(p.crc32) })),
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
      },
      { [SWITCH_SCRIPT]: Buffer.from(this.script), 'job.json': Buffer.from(JSON.stringify(manifest, null, 2) + '\n') },
    );
    await this.prepareRamRoot(busybox, needed);
    this.board.log(
      'info',
      `staged ${this.parts.length} part(s) of ${formatBytes(image.imageSize)} for ${target.name} under ` +
        `${this.macdir}/; its RAM system is ready in ${this.ramRoot} (nothing on its card touched yet)`,
    );
  }

  private async runProbe(): Promise<BoardProbe> {
    const result = await this.shell!.exec(PROBE_COMMAND, { timeoutMs: this.ms.command });
    const probe = parseBoardProbe(result.stdout);
    if (!probe.complete)
      throw new CodedError(
        'BOARD_UNFIT',
        `${this.job.target.name}: the probe did not finish (status ${result.code}): ${tail(result.stderr)}`,
      );
    this.probe = probe;
    return probe;
  }

  /** The configured static busybox that runs on this board (best architecture first). */
  private async pickBusybox(probe: BoardProbe): Promise<{ arch: string; busybox: Buffer }> {
    const configured = this.settings.busybox;
    const arch = busyboxArchesFor(probe.machine).find((a) => configured[a as OtaArch] !== undefined) as
      OtaArch | undefined;
    // boardProblems says why no architecture fits; an empty binary keeps the RAM sum honest until then.
    if (!arch) return { arch: 'none', busybox: Buffer.alloc(0) };
    const file = configured[arch]!;
    let data: Buffer;
    try {
      data = await readFile(file);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new CodedError(
        'LAB_MISCONFIGURED',
        `cannot read ota.busybox.${arch} ${file}: ${why} (install Debian's busybox-static for ${arch})`,
      );
    }
    if (!this.options.dryRun) {
      const elf = await readElfInfo(file).catch((err: Error) => {
        throw new CodedError('LAB_MISCONFIGURED', `ota.busybox.${arch}: ${err.message}`);
      });
      if (elf.machine !== elfMachineOf(arch) || !elf.isStatic)
        throw new CodedError(
          'LAB_MISCONFIGURED',
          `ota.busybox.${arch} ${file} is ${elf.isStatic ? 'static' : 'dynamically linked'} for ${elf.machine}: ` +
            `the board's RAM system needs a static ${arch} busybox (Debian's busybox-static)`,
        );
    }
    return { arch, busybox: data };
  }

  /** A tmpfs on the board with busybox and the script in it; checks the upload by busybox's own CRC. */
  private async prepareRamRoot(busybox: Buffer, bytes: number): Promise<void> {
    const root = this.ramRoot!;
    const size = Math.ceil((bytes + RAM_ROOT_SLACK) / 4096) * 4096;
    if (this.options.dryRun) await this.run(`mkdir -p ${shq(root)}/bin`, 'make the RAM root');
    else {
      await this.run(
        `mkdir -p ${shq(root)} && mount -t tmpfs -o size=${size},mode=0700 rpi-flash ${shq(root)} && ` +
          `mkdir ${shq(root)}/bin`,
        'mount the RAM root',
      );
      this.ramRootMounted = true;
    }
    const bb = `${root}/bin/busybox`;
    await this.run(`cat > ${shq(bb)} && chmod 0755 ${shq(bb)}`, 'upload busybox', busybox);
    await this.run(`cat > ${shq(`${root}/${SWITCH_SCRIPT}`)}`, 'upload the switch script', this.script);
    const check = await this.run(`${shq(bb)} crc32 ${shq(bb)}`, 'run the uploaded busybox');
    const got = Number.parseInt(check.stdout.trim().split(/\s+/)[0] ?? '', 16);
    if (got !== crc32(busybox))
      throw new CodedError(
        'BOARD_UNFIT',
        `${this.job.target.name}: the uploaded busybox does not run or arrived damaged (crc32 printed ` +
          `"${tail(check.stdout)}", expected ${hex8(crc32(busybox))}); nothing was touched`,
      );
  }

  /** One command as root; a failure is SSH_FAILED naming the step (nothing written by then). */
  private async run(command: string, what: string, stdin?: Buffer | string): Promise<ExecResult> {
    const r = await this.shell!.exec(this.asRoot(command), {
      timeoutMs: this.ms.command,
      ...(stdin !== undefined ? { stdin } : {}),
    });
    if (r.code !== 0)
      throw new CodedError(
        r.dropped ? 'SSH_FAILED' : 'BOARD_UNFIT',
        `${this.job.target.name}: cannot ${what} (${r.dropped ? 'the session dropped' : `status ${r.code}`}): ` +
          `${tail(r.stderr || r.stdout)}; nothing on its card was touched`,
      );
    return r;
  }

  async watch(): Promise<void> {
    const { target, timeouts } = this.job;
    const root = this.ramRoot!;
    const bb = `${root}/bin/busybox`;
    // setsid: the script outlives the session, which it ends itself when it stops the board's sshd.
    await this.run(
      `${shq(bb)} setsid ${shq(bb)} sh ${shq(`${root}/${SWITCH_SCRIPT}`)} ` +
        `</dev/null >>${shq(`${root}/${SWITCH_LOG}`)} 2>&1 &`,
      'start the switch script',
    );
    this.stage_ = 'started';
    this.shell?.close();
    this.shell = undefined;
    this.board.log('info', `the switch script runs on ${target.name}; from here on SSH may drop`);
    const refused = this.refusedFrom.size
      ? () => ` (requests came from ${[...this.refusedFrom].join(', ')}, not ${target.ip})`
      : () => '';
    await this.board.until(
      () => this.stage_ !== 'started' || this.done !== undefined,
      timeouts.boardShow,
      () =>
        new CodedError(
          'BOARD_NO_SHOW',
          `${target.name}'s switch script did not report within ${timeouts.boardShow} s: it cannot reach the ` +
            `agent's TFTP server${refused()}; ` +
            `it leaves without touching anything (its log: ${root}/${SWITCH_LOG})`,
        ),
    );
    await this.board.until(
      () => this.done !== undefined || this.switchFailed !== undefined,
      timeouts.stall,
      () => {
        const where = this.parts.find((p) => p.status === 'missing');
        const during = where ? ` during part ${where.index}/${this.parts.length}` : '';
        const touched = this.touched();
        return new CodedError(
          touched ? 'CARD_PARTLY_WRITTEN' : 'BOARD_TIMEOUT',
          `${target.name} went quiet for ${timeouts.stall} s${during}` +
            (touched ? '' : this.stage_ === 'switched' ? ' (in its RAM system, nothing written)' : ''),
        );
      },
    );
    if (this.switchFailed)
      throw new CodedError(
        'BOARD_UNFIT',
        `${target.name} could not switch to its RAM system (${this.switchFailed} failed): nothing was written; ` +
          'it reboots into its old system',
      );
  }

  verify(): void {
    const name = this.job.target.name;
    if (!this.done?.ok || this.boardFailures.length) {
      const why = this.boardFailures.length ? this.boardFailures.join('; ') : 'the board reported failure';
      const code: ErrorCode = this.touched() ? 'CARD_PARTLY_WRITTEN' : 'BOARD_REPORTED_FAILURE';
      throw new CodedError(
        code,
        code === 'CARD_PARTLY_WRITTEN'
          ? `${name} failed after it began writing: ${why}; it reboots into a partly written card`
          : `${name}: ${why}; nothing was written, it reboots into its old system`,
      );
    }
    const problems: string[] = [];
    for (const p of this.parts) {
      const expected = boardCrcText(p.crc32);
      if (p.status !== 'ok') problems.push(`part ${p.index} was never reported written`);
      else if (p.boardCrc?.replace(/^0+(?=.)/, '') !== expected)
        problems.push(`part ${p.index}: board read back CRC ${p.boardCrc}, expected ${expected}`);
    }
    if (problems.length) throw new CodedError('VERIFY_MISMATCH', problems.join('; '));
    this.board.log('info', `all ${this.parts.length} part(s) written and verified by the board; it reboots`);
  }

  outcome(): FlashOutcome {
    const written = this.parts.filter((p) => p.status === 'ok').length;
    return {
      card:
        this.parts.length > 0 && written === this.parts.length && this.done?.ok
          ? 'written'
          : this.touched()
            ? 'partial'
            : 'untouched',
      bytesWritten: this.parts.filter((p) => p.status === 'ok').reduce((sum, p) => sum + p.size, 0),
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
    await this.job.files.unstage(this.macdir);
    const name = this.job.target.name;
    if (this.stage_ === 'staged' && this.shell && this.ramRoot) {
      // The script never started: take the RAM root away again, the board is as it was.
      const root = shq(this.ramRoot);
      const undo = this.ramRootMounted ? `umount ${root} && rmdir ${root}` : `rm -rf ${root}`;
      await this.shell
        .exec(this.asRoot(undo), { timeoutMs: this.ms.command })
        .catch((err: Error) => this.board.log('warn', `could not remove ${this.ramRoot} on ${name}: ${err.message}`));
    }
    this.shell?.close();
    this.shell = undefined;
    if (this.done || this.stage_ === 'staged' || this.switchFailed) return;
    const card = this.touched() ? 'a partly written card' : 'its untouched old system';
    this.board.log(
      'warn',
      this.stage_ === 'switched'
        ? `${name} is left in its RAM system (old root ${this.oldRoot}): its files are gone, so it fails its ` +
            `downloads and reboots by itself into ${card}`
        : this.stage_ === 'reported-start'
          ? `${name} was switching to its RAM system: it finds its files gone, and reboots into ${card}`
          : `${name}'s switch script finds its start report unanswered and leaves: nothing touched`,
    );
  }

  /** Something of the image may be on the disk. */
  private touched(): boolean {
    return this.parts.some((p) => p.status === 'ok' || p.diskTouched || p.mayBeWriting);
  }

  private relative(file: string): string {
    return file.slice(this.macdir.length + 1);
  }

  private partOf(rel: string): PartState | undefined {
    return this.parts.find((p) => this.relative(p.file) === rel);
  }

  private onRead(rel: string, req: TftpRequest): void {
    const part = this.partOf(rel);
    if (part) this.served.downloadStarted(part, req);
    this.board.activity();
  }

  private onRefused(_rel: string, req: TftpRequest): void {
    const from = req.peer.address.replace(/^::ffff:/, '');
    if (this.refusedFrom.has(from)) return;
    this.refusedFrom.add(from);
    this.board.log(
      'warn',
      `a request for ${this.macdir}/ came from ${from}, not ${this.job.target.name}'s ${this.job.target.ip}: ` +
        'refused (tftp.checkClientIp)',
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

  private onBeacon(message: string): void {
    const beacon = parseOtaBeacon(message);
    if (beacon) this.apply(beacon, message);
    else this.board.log('warn', `board sent a report the agent does not understand: ${message}`, 'board');
    this.board.activity();
  }

  /** Why a success report cannot be believed, or undefined. */
  private unearned(b: Extract<OtaBeacon, { kind: 'part-ok' | 'done' }>): string | undefined {
    if (b.kind === 'done') {
      if (!b.ok) return undefined;
      const open = this.parts.find((p) => p.status !== 'ok');
      return open && `the board reported done-ok before part ${open.index}/${this.parts.length} was reported written`;
    }
    const part = this.parts.find((p) => p.index === b.part);
    if (!part) return `the board reported part ${b.part}, which this job does not have`;
    if (this.stage_ !== 'switched') return `the board reported part ${b.part} before it reported its switch to RAM`;
    const earlier = this.parts.find((p) => p.index < part.index && p.status !== 'ok');
    if (earlier) return `the board reported part ${part.index} before part ${earlier.index} (out of order)`;
    if (!this.served.heldInFull(part))
      return (
        `the board reported part ${part.index} written, but acknowledged only ${part.acked} ` +
        `of its ${part.servedSize} bytes`
      );
    return undefined;
  }

  private apply(b: OtaBeacon, raw: string): void {
    const refused = b.kind === 'part-ok' || b.kind === 'done' ? this.unearned(b) : undefined;
    if (refused) {
      this.job.files.withdraw(this.macdir);
      this.board.log('error', `report refused: ${raw}: ${refused}`, 'board');
      this.board.fail('REPORT_REJECTED', refused);
      return;
    }
    const part = 'part' in b ? this.parts.find((p) => p.index === b.part) : undefined;
    const count = this.parts.length;
    switch (b.kind) {
      case 'start':
        if (this.stage_ === 'started') this.stage_ = 'reported-start';
        this.board.log('info', "the switch script reached the agent: stopping the board's processes", 'board');
        break;
      case 'stopped':
        this.board.log('info', 'the board stopped its other processes (its sshd too): switching to RAM', 'board');
        break;
      case 'switched':
        this.stage_ = 'switched';
        this.oldRoot = b.oldRoot;
        this.board.log(
          b.oldRoot === 'ro' ? 'info' : 'warn',
          b.oldRoot === 'ro'
            ? 'the board runs from RAM; its old root is read-only and detached'
            : 'the board runs from RAM; its old root stayed busy and is frozen (it writes nothing more)',
          'board',
        );
        break;
      case 'switch-failed':
        this.switchFailed = b.step;
        this.job.files.withdraw(this.macdir);
        this.board.log('error', `the switch to RAM failed at ${b.step}: the board reboots its old system`, 'board');
        break;
      case 'part-retry':
        if (part) {
          part.retries += 1;
          part.mayBeWriting = false;
        }
        {
          const why = b.reason === 'crc' ? `CRC mismatch (board computed ${b.crc ?? '?'})` : 'download failed';
          this.board.log('warn', `part ${b.part}: ${why}, retry ${b.attempt}`, 'board');
        }
        break;
      case 'part-ok':
        if (part) {
          part.boardCrc = b.crc;
          part.status = 'ok';
          part.mayBeWriting = false;
        }
        this.board.log('info', `part ${b.part}/${count}: written and read back, CRC ${b.crc}`, 'board');
        this.board.progress({
          phase: 'verify',
          done: this.parts.filter((p) => p.status === 'ok').length,
          total: count,
          part: b.part,
          parts: count,
        });
        break;
      case 'part-failed': {
        if (part) {
          part.status = 'failed';
          part.mayBeWriting = false;
          if (b.stage !== 'download') part.diskTouched = true;
        }
        const crc = b.crc ? ` (CRC ${b.crc})` : '';
        this.boardFailures.push(`part ${b.part} failed at ${b.stage}${crc}`);
        this.board.log('error', `part ${b.part}: failed at ${b.stage}${crc}`, 'board');
        break;
      }
      case 'done':
        this.job.files.withdraw(this.macdir);
        this.done = { ok: b.ok };
        this.stage_ = 'done';
        this.board.flashDone();
        this.board.log(b.ok ? 'info' : 'error', `board reports the update ${b.ok ? 'succeeded' : 'failed'}`, 'board');
        break;
    }
  }
}

function shq(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

function tail(text: string): string {
  return text.trim().slice(-300) || '(no output)';
}
