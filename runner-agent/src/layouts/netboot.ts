/**
 * Layout `netboot` (a job's `method: netboot`): the board boots the image straight from the agent
 * and nothing is written to its card. Its own firmware (the Pi 3 ROM, the Pi 4/5 EEPROM) fetches
 * the boot partition's files over TFTP from the folder its targets row names — straight out of
 * the stored image, with `cmdline.txt` rewritten virtually to take the root file system from an
 * NBD export of the image's root partition; the export (netboot/nbd-export.ts) has a per-job
 * copy-on-write overlay, so the board may write while the stored image stays as uploaded and every
 * job starts from the same bytes. The export and its overlay end with the job (`unstage`).
 *
 * Everything the board needs is checked before the reset, so a refusal touches nothing: the
 * target's folder (NETBOOT_TARGET_INCOMPLETE), the kernel and the initramfs the firmware would load
 * (IMAGE_NO_KERNEL) and an NBD client in that initramfs (IMAGE_NO_NBD_CLIENT).
 */
import { CodedError } from '../../../src/protocol/errors.js';
import { formatBytes } from '../../../src/protocol/units.js';
import { selectBoot, type BootSelection } from '../image/boot-config.js';
import { parseMbr, SECTOR, type MbrPartition } from '../image/mbr.js';
import { getPiModel, type PiModel } from '../image/models.js';
import { BootPartition, firmwareFiles, firmwareFolderOf } from '../netboot/boot-folder.js';
import { requireNbdClient } from '../netboot/initramfs.js';
import { overlayDirFor, startNbdExport, type NbdExport } from '../netboot/nbd-export.js';
import { ImageView } from '../staging/image-view.js';
import type { FirmwareRequest, ImageExtent } from '../staging/board-files.js';
import type { TransferEnd } from '../tftp/server.js';
import type { BoardWatch, FlashMethod, FlashOutcome, Layout, LayoutJob } from './layout.js';
import { open } from 'node:fs/promises';

export const netboot: Layout = (job, board) => new NetbootMethod(job, board);

/** The export name the board's initramfs asks for (any name reaches the export; this one says whose). */
const EXPORT_NAME = 'rpi-flash';
/** The block device the kernel's NBD client makes: `root=` names it. */
const NBD_DEVICE = '/dev/nbd0';
/** cmdline.txt words the rewrite replaces (the root and how to reach it) or drops (a first-boot resize). */
const REPLACED_WORDS = /^(root|nbdroot|nbddev|ip)=/;
const FIRST_BOOT_INIT = /^init=.*init_resize\.sh$/;
/** How much of the initramfs is read at once while looking for its NBD client. */
const READ_CHUNK = 1024 * 1024;

class NetbootMethod implements FlashMethod {
  private readonly macdir: string;
  private nbd?: NbdExport;
  private boot?: BootSelection;
  /** Boot files the board's firmware has fetched in full, by lower-case name. */
  private readonly fetched = new Set<string>();
  private asked = false;
  private staged = false;

  constructor(
    private readonly job: LayoutJob,
    private readonly board: BoardWatch,
  ) {
    this.macdir = job.target.mac.toLowerCase().replace(/:/g, '-');
  }

  async stage(): Promise<void> {
    const { image, target, config, id } = this.job;
    // The target's row first: a board that cannot boot from the network needs no look at the image.
    firmwareFolderOf(target);
    const view = new ImageView(image.path, image.imageSize, []);
    const partition = await BootPartition.read(view);
    const model = modelOf(this.job);
    const boot = await selectBoot(
      { readText: (p) => partition.readText(p), exists: (p) => Promise.resolve(partition.get(p) !== undefined) },
      model,
    ).catch((err: Error) => {
      throw new CodedError('IMAGE_NO_KERNEL', `the image's boot partition: ${err.message}`, { cause: err });
    });
    const kernel = partition.get(boot.kernel);
    if (!kernel)
      throw new CodedError(
        'IMAGE_NO_KERNEL',
        `the boot partition has no ${boot.kernel}, the kernel the firmware loads`,
      );
    if (!boot.initramfs)
      throw new CodedError(
        'IMAGE_NO_KERNEL',
        'config.txt names no initramfs (`initramfs FILE followkernel`): the root file system comes over NBD, ' +
          'which needs an NBD client before the root is mounted',
      );
    const initrd = partition.get(boot.initramfs);
    if (!initrd)
      throw new CodedError('IMAGE_NO_KERNEL', `the boot partition has no ${boot.initramfs} (config.txt's initramfs)`);
    await this.checkNbdClient(view, initrd.extents, boot.initramfs);
    this.boot = boot;

    const cmdlineText = (await partition.readText(boot.cmdlineFile)) ?? '';
    const rootPartition = await rootPartitionOf(image.path, image.imageSize, cmdlineText);
    const server = serverAddress(this.job);
    this.nbd = await startNbdExport({
      image: image.path,
      partition: rootPartition.index,
      bindAddress: config.tftp.address,
      allowFrom: target.ip,
      overlayDir: overlayDirFor(config.stateDir, id),
      exportName: EXPORT_NAME,
      log: this.job.log,
    });
    this.nbd.exited.then(
      (exit) => {
        if (exit.failure) this.board.fail('NBD_SERVER_FAILED', exit.failure.message);
      },
      () => {},
    );
    const cmdline = rewriteCmdline(cmdlineText, `${server}:${this.nbd.port}/${EXPORT_NAME}`);
    const firmware = firmwareFiles(target, partition, { overrides: { [boot.cmdlineFile]: Buffer.from(cmdline) } });
    await this.job.files.stage(
      this.macdir,
      {
        jobId: id,
        targetIp: target.ip,
        files: new Map(),
        onRead: () => {},
        onProgress: () => this.board.activity(),
        onBeacon: () => {},
        firmware: {
          ...firmware,
          onRequest: (r) => this.onRequest(r),
          onProgress: () => this.board.activity(),
          onTransferEnd: (name, t, probe) => this.onTransferEnd(name, t, probe),
        },
      },
      {},
    );
    this.staged = true;
    this.board.log(
      'info',
      `netboot: serving ${target.name}'s firmware folder ${firmware.folder}/ from the image's boot partition ` +
        `(${boot.kernel}, ${boot.initramfs}); root: partition ${rootPartition.index} ` +
        `(${formatBytes(rootPartition.size)}) over NBD at ${server}:${this.nbd.port}, copy-on-write`,
    );
  }

  /** The initramfs must hold an NBD client: the kernel cannot mount an NBD root without one. */
  private async checkNbdClient(view: ImageView, extents: readonly ImageExtent[], name: string): Promise<void> {
    const handle = await open(view.path, 'r');
    try {
      // Read through the view, part by part: the initramfs is never copied out of the image.
      await requireNbdClient(
        async function* () {
          for (const e of extents)
            for (let at = 0; at < e.size; at += READ_CHUNK)
              yield await view.read(handle, e.offset + at, Math.min(READ_CHUNK, e.size - at));
        },
        { name },
      );
    } finally {
      await handle.close();
    }
  }

  private onRequest(r: FirmwareRequest): void {
    if (!this.asked) this.board.log('info', `netboot: the board's firmware asked for ${r.name}`);
    this.asked = true;
    this.board.activity();
  }

  private onTransferEnd(name: string, t: TransferEnd, probe: boolean): void {
    this.board.activity();
    if (probe || !t.ok) return;
    this.fetched.add(name.toLowerCase());
    if (
      name.toLowerCase() === this.boot?.kernel.toLowerCase() ||
      name.toLowerCase() === this.boot?.initramfs?.toLowerCase()
    )
      this.board.log('info', `netboot: ${name} served (${formatBytes(t.bytes)} in ${(t.ms / 1000).toFixed(1)} s)`);
  }

  private bootFilesFetched(): boolean {
    const boot = this.boot!;
    return this.fetched.has(boot.kernel.toLowerCase()) && this.fetched.has(boot.initramfs!.toLowerCase());
  }

  /** Until the firmware has fetched the kernel and the initramfs; the files stay served through the boot. */
  async watch(): Promise<void> {
    const { boardShow, stall } = this.job.timeouts;
    await this.board.until(
      () => this.asked,
      boardShow,
      () =>
        new CodedError(
          'BOARD_NO_NETBOOT',
          `the board's firmware asked the agent for nothing within ${boardShow} s of the reset ` +
            '(its boot order, the DHCP answer, or its netboot folder: see rpi-flash-agent eeprom-config)',
        ),
    );
    await this.board.until(
      () => this.bootFilesFetched(),
      stall,
      () =>
        new CodedError(
          'BOARD_NO_NETBOOT',
          "the board's firmware stopped before it had its kernel and initramfs " +
            `(${[...this.fetched].join(', ') || 'nothing'} fetched; quiet for ${stall} s)`,
        ),
    );
    this.board.flashDone();
  }

  verify(): void {}

  outcome(): FlashOutcome {
    return { card: 'untouched', bytesWritten: 0, parts: [] };
  }

  async unstage(): Promise<void> {
    if (this.staged) await this.job.files.unstage(this.macdir);
    await this.nbd?.stop();
  }
}

function modelOf(job: LayoutJob): PiModel | undefined {
  try {
    return getPiModel((job.target.model ?? job.config.uboot.defaultModel).toLowerCase());
  } catch {
    return undefined;
  }
}

/** The address the board reaches the agent at: where DHCP sends it, else the TFTP server's own address. */
function serverAddress(job: LayoutJob): string {
  const { dhcp, tftp } = job.config;
  if (dhcp.serverIp) return dhcp.serverIp;
  if (tftp.address !== '0.0.0.0' && tftp.address !== '::') return tftp.address;
  throw new CodedError(
    'LAB_MISCONFIGURED',
    'a network boot tells the board where its root is: set dhcp.serverIp (or tftp.address) to the lab address',
  );
}

/**
 * cmdline.txt with its root on the NBD export, in the grammar of Debian's initramfs script
 * (nbd-client's local-top/nbd: `nbdroot=<server>:<port>/<name>`, `root=/dev/nbd0`) and an address
 * from DHCP; every other word kept (console, rootfstype, rootwait…), a first-boot resize dropped.
 */
export function rewriteCmdline(text: string, nbdroot: string): string {
  const words = text.split(/\s+/).filter((w) => w !== '' && !REPLACED_WORDS.test(w) && !FIRST_BOOT_INIT.test(w));
  return [...words, `root=${NBD_DEVICE}`, `nbdroot=${nbdroot}`, 'ip=dhcp', 'rw'].join(' ') + '\n';
}

/**
 * The partition cmdline.txt's `root=` names (`PARTUUID=<disk id>-NN`, `/dev/mmcblk0pN`,
 * `/dev/sdaN`), else the first Linux partition after the boot partition.
 */
async function rootPartitionOf(imagePath: string, imageSize: number, cmdline: string): Promise<MbrPartition> {
  const handle = await open(imagePath, 'r');
  let sector0: Buffer;
  try {
    sector0 = Buffer.alloc(SECTOR);
    await handle.read(sector0, 0, SECTOR, 0);
  } finally {
    await handle.close();
  }
  const partitions = parseMbr(sector0, imageSize);
  const root = /(?:^|\s)root=(\S+)/.exec(cmdline)?.[1] ?? '';
  const n =
    /^PARTUUID=[0-9a-f]{8}-(\d{2})$/i.exec(root)?.[1] ??
    /^\/dev\/(?:mmcblk\d+p|sd[a-z]|nvme\d+n\d+p)(\d+)$/.exec(root)?.[1];
  const byNumber = n !== undefined ? partitions.find((p) => p.index === Number(n)) : undefined;
  const found = byNumber ?? partitions.find((p) => p.type === 0x83);
  if (!found)
    throw new CodedError('IMAGE_NO_KERNEL', `the image has no root partition (cmdline.txt's root=${root || '(none)'})`);
  return found;
}
