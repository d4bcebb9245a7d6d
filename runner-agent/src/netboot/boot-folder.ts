/**
 * The files a board's own firmware fetches when it boots from the network (DESIGN §8), straight
 * out of the FAT boot partition of a stored image: each file is served as the byte ranges its
 * clusters occupy in the image (through the layout's ImageView, so patches show), never extracted
 * or copied. What the job needs changed (`config.txt`, `cmdline.txt`, an added boot script) is
 * laid over the partition's files as buffers: virtual, the image stays as stored.
 *
 * Reading the partition costs its metadata only: the MBR, the boot sector, the FAT and the
 * directories; file contents are read when a board asks for them.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { CodedError } from '../../../src/protocol/errors.js';
import { SectorOverlay, type ImageReader } from '../image/disk.js';
import { InjectError } from '../image/errors.js';
import { ATTR_DIRECTORY, FatVolume, type Directory, type FatType } from '../image/fat.js';
import { findBootPartition, parseMbr, SECTOR } from '../image/mbr.js';
import { getPiModel } from '../image/models.js';
import type { FirmwareFiles, ImageExtent, StagedFile } from '../staging/board-files.js';
import type { ImageView } from '../staging/image-view.js';
import type { NetbootFolder, Target } from '../targets/database.js';

/** A file of the boot partition and where its bytes lie in the image. */
export interface BootFile {
  /** Its path as the partition spells it (`overlays/vc4-kms-v3d.dtbo`). */
  path: string;
  size: number;
  /** In file order; consecutive clusters merged; empty for an empty file. */
  extents: readonly ImageExtent[];
}

/** More would be no Pi boot partition: a bound on what a crafted image can make the agent hold. */
const MAX_FILES = 16384;
const MAX_DEPTH = 16;
/** What a text file the caller rewrites may hold (config.txt and cmdline.txt are a few KiB). */
const MAX_TEXT_BYTES = 1024 * 1024;
/** The Pi 3 boot ROM's TFTP block size; it asks for no options. */
export const ROM_BLKSIZE = 512;
/** The Pi 4/5 EEPROM's TFTP block size since 2022-10 (DESIGN §8). */
export const EEPROM_BLKSIZE = 1468;

function damaged(msg: string): InjectError {
  return new InjectError('IMAGE_NO_BOOT_PARTITION', `the boot partition's FAT file system is damaged: ${msg}`);
}

/** The boot partition of a stored image, read once: its files by lower-case path (FAT ignores case). */
export class BootPartition {
  private constructor(
    private readonly view: ImageView,
    readonly partition: { index: number; offset: number; size: number; fat: FatType },
    readonly files: ReadonlyMap<string, BootFile>,
  ) {}

  /**
   * Finds the partition the Pi firmware boots from (the first primary FAT partition) and lists
   * every file in it, subfolders included. Throws the image codes of image/mbr.ts and
   * image/fat.ts (IMAGE_NOT_DISK, IMAGE_NO_BOOT_PARTITION, IMAGE_TRUNCATED…).
   */
  static async read(view: ImageView): Promise<BootPartition> {
    const reader = await ViewReader.open(view);
    try {
      const sector0 = await reader.read(0, Math.min(SECTOR, view.size));
      const boot = findBootPartition(parseMbr(sector0, view.size));
      const vol = await FatVolume.open(new SectorOverlay(reader), boot.offset, boot.size);
      const dataStart = boot.offset + firstDataSector(await reader.read(boot.offset, 512)) * vol.bytesPerSector;
      const files = await listFiles(vol, dataStart);
      return new BootPartition(view, { index: boot.index, offset: boot.offset, size: boot.size, fat: vol.type }, files);
    } finally {
      await reader.close();
    }
  }

  /** A file by its path (any case, `/`-separated), or undefined. */
  get(path: string): BootFile | undefined {
    const key = fatKey(path);
    return key === undefined ? undefined : this.files.get(key);
  }

  /** A file's bytes as the view serves them (for the caller's rewrite of a text file); null when absent. */
  async readFile(path: string, maxBytes = MAX_TEXT_BYTES): Promise<Buffer | null> {
    const file = this.get(path);
    if (!file) return null;
    if (file.size > maxBytes)
      throw new InjectError(
        'BOOT_CONFIG_UNSUPPORTED',
        `${file.path} is ${file.size} bytes; more than ${maxBytes} is not a plausible boot configuration file`,
      );
    const handle = await open(this.view.path, 'r');
    try {
      const pieces: Buffer[] = [];
      for (const e of file.extents) pieces.push(await this.view.read(handle, e.offset, e.size));
      return Buffer.concat(pieces);
    } finally {
      await handle.close();
    }
  }

  async readText(path: string): Promise<string | null> {
    return (await this.readFile(path))?.toString('utf8') ?? null;
  }

  /**
   * Every file as the TFTP server serves it, by lower-case path: one range of the image where
   * the clusters are contiguous, extents where they are not, and `overrides` (by path, any case)
   * laid over them as buffers — replacing a file or adding one.
   */
  stagedFiles(overrides: Readonly<Record<string, Buffer>> = {}): Map<string, StagedFile> {
    const out = new Map<string, StagedFile>();
    for (const [key, f] of this.files) out.set(key, stagedFile(this.view, f));
    for (const [path, data] of Object.entries(overrides)) {
      const key = fatKey(path);
      if (key === undefined) throw new Error(`override "${path}" is not a relative path inside the boot partition`);
      out.set(key, { kind: 'buffer', data });
    }
    return out;
  }
}

export interface FirmwareFilesOptions {
  /** Files that replace or add to the partition's (config.txt, cmdline.txt, boot.scr.uimg…), by path. */
  overrides?: Readonly<Record<string, Buffer>>;
  /** Names served at the root to the target (default: board-files' ROOT_FIRMWARE_NAMES). */
  rootNames?: readonly string[];
}

/**
 * What a layout puts in `StagedJob.firmware` (hooks aside) for this target: its firmware's
 * folder, the partition's files with the overrides, and the block size its firmware uses.
 * Throws NETBOOT_TARGET_INCOMPLETE when the target's row does not say how its firmware names
 * its folder (no `netboot` cell), or says what its firmware cannot do.
 */
export function firmwareFiles(target: Target, boot: BootPartition, o: FirmwareFilesOptions = {}): FirmwareFiles {
  const netboot = firmwareFolderOf(target);
  return {
    folder: netboot.folder,
    files: boot.stagedFiles(o.overrides),
    blksize: firmwareBlksize(target.model),
    ...(o.rootNames ? { rootNames: o.rootNames } : {}),
  };
}

/** The target's firmware folder, or NETBOOT_TARGET_INCOMPLETE saying what its row lacks. */
export function firmwareFolderOf(target: Target): NetbootFolder {
  const netboot = target.netboot;
  const row = `${target.source.file}:${target.source.line}`;
  if (!netboot)
    throw new CodedError(
      'NETBOOT_TARGET_INCOMPLETE',
      `target ${target.name} has no netboot column (${row}): say how its firmware names its TFTP folder ` +
        '(serial, mac or prefix:<TFTP_PREFIX_STR>)',
    );
  if (netboot.prefixMode === 'serial' && !/^[0-9a-f]{8}$/.test(netboot.folder))
    throw new CodedError(
      'NETBOOT_TARGET_INCOMPLETE',
      `target ${target.name} boots by its serial but its folder "${netboot.folder}" is not 8 hex digits (${row})`,
    );
  if (netboot.prefixMode !== 'serial' && bootRomOnly(target.model))
    throw new CodedError(
      'NETBOOT_TARGET_INCOMPLETE',
      `target ${target.name} is a ${target.model}, whose boot ROM names its folder by the serial only: ` +
        `netboot ${netboot.prefixMode === 'mac' ? 'mac' : 'prefix:…'} is an EEPROM setting (Pi 4/5) (${row})`,
    );
  return netboot;
}

/**
 * The TFTP block size the board's firmware uses: 1468 for a Pi 4 (EEPROM), 512 for the Pi 3 ROM
 * and whatever the agent cannot tell — the smaller size makes more files warn, never fewer.
 */
export function firmwareBlksize(model: string | undefined): number {
  return model !== undefined && eepromModel(model) ? EEPROM_BLKSIZE : ROM_BLKSIZE;
}

function knownModel(model: string | undefined): ReturnType<typeof getPiModel> | undefined {
  if (model === undefined) return undefined;
  try {
    return getPiModel(model);
  } catch {
    return undefined; // free text the agent does not know: nothing is assumed
  }
}

function eepromModel(model: string): boolean {
  return knownModel(model)?.filters.includes('pi4') ?? false;
}

/** A model the agent knows whose network boot is the ROM's (Pi 3 family): serial folders only. */
function bootRomOnly(model: string | undefined): boolean {
  return knownModel(model)?.filters.includes('pi3') ?? false;
}

/** `Overlays//X.dtbo` → `overlays/x.dtbo`; undefined for what names nothing inside the partition. */
function fatKey(path: string): string | undefined {
  const segments = path.split('/').filter((s) => s !== '');
  if (!segments.length || segments.some((s) => s === '.' || s === '..')) return undefined;
  return segments.join('/').toLowerCase();
}

function stagedFile(view: ImageView, f: BootFile): StagedFile {
  if (f.extents.length === 0) return { kind: 'buffer', data: Buffer.alloc(0) };
  if (f.extents.length === 1) return { kind: 'range', view, offset: f.extents[0]!.offset, size: f.size };
  return { kind: 'extents', view, extents: f.extents, size: f.size };
}

/** The first sector of the data area (cluster 2), from a boot sector FatVolume.open has checked. */
function firstDataSector(bs: Buffer): number {
  const bps = bs.readUInt16LE(11);
  const reserved = bs.readUInt16LE(14);
  const numFats = bs[16]!;
  const rootEntries = bs.readUInt16LE(17);
  const fatSectors = bs.readUInt16LE(22) || bs.readUInt32LE(36);
  return reserved + numFats * fatSectors + Math.ceil((rootEntries * 32) / bps);
}

/** Every file under the root, depth-first, keyed by lower-case path; bounded in count and depth. */
async function listFiles(vol: FatVolume, dataStart: number): Promise<Map<string, BootFile>> {
  const files = new Map<string, BootFile>();
  const visited = new Set<number>();
  const walk = async (dir: Directory, prefix: string, depth: number): Promise<void> => {
    for (const e of vol.entries(dir)) {
      if (e.name === '.' || e.name === '..') continue;
      const path = prefix ? `${prefix}/${e.name}` : e.name;
      if (e.attr & ATTR_DIRECTORY) {
        // A directory entry that points back at one already walked would loop for ever.
        if (e.firstCluster < 2 || visited.has(e.firstCluster)) continue;
        if (depth >= MAX_DEPTH) throw damaged(`${path}: folders nest deeper than ${MAX_DEPTH}`);
        visited.add(e.firstCluster);
        const sub = await subdirectory(vol, path);
        if (sub) await walk(sub, path, depth + 1);
        continue;
      }
      if (files.size >= MAX_FILES) throw damaged(`more than ${MAX_FILES} files: no Pi boot partition holds that many`);
      const key = path.toLowerCase();
      if (!files.has(key)) files.set(key, { path, size: e.size, extents: fileExtents(vol, dataStart, path, e) });
    }
  };
  await walk(await vol.root(), '', 0);
  return files;
}

/**
 * A subdirectory's slots. FatVolume reads a directory only on the way to an entry in it; every
 * FAT subdirectory holds a `..` entry, so looking that up yields the directory itself.
 */
async function subdirectory(vol: FatVolume, path: string): Promise<Directory | undefined> {
  return (await vol.lookup(`${path}/..`))?.dir;
}

/** Where a file's bytes lie in the image: its cluster chain, consecutive clusters merged. */
function fileExtents(
  vol: FatVolume,
  dataStart: number,
  path: string,
  e: { firstCluster: number; size: number },
): ImageExtent[] {
  if (e.size === 0) return [];
  const clusterBytes = vol.clusterBytes;
  const need = Math.ceil(e.size / clusterBytes);
  const chain = vol.chain(e.firstCluster, path);
  if (chain.length < need)
    throw damaged(`${path} is ${e.size} bytes but its chain holds only ${chain.length} clusters`);
  const extents: ImageExtent[] = [];
  let left = e.size;
  for (const c of chain.slice(0, need)) {
    const offset = dataStart + (c - 2) * clusterBytes;
    const size = Math.min(left, clusterBytes);
    left -= size;
    const last = extents[extents.length - 1];
    if (last && last.offset + last.size === offset) last.size += size;
    else extents.push({ offset, size });
  }
  return extents;
}

/** Positioned reads through an ImageView (patches laid over), for the FAT reader. */
class ViewReader implements ImageReader {
  private constructor(
    private readonly view: ImageView,
    private readonly handle: FileHandle,
  ) {}

  static async open(view: ImageView): Promise<ViewReader> {
    return new ViewReader(view, await open(view.path, 'r'));
  }

  get size(): number {
    return this.view.size;
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.view.size)
      return Promise.reject(
        new InjectError(
          'IMAGE_TRUNCATED',
          `the image is ${this.view.size} bytes but bytes ${offset}..${offset + length} are needed: it is cut short`,
        ),
      );
    return this.view.read(this.handle, offset, length);
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
