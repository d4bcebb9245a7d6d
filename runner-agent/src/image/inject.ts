/**
 * Carrying U-Boot into a flashed image (layout `inject`): plan the changes that make an image's
 * boot partition start U-Boot and stage 1, as patches over the stored image.
 *
 * Only the MBR and the boot partition are read (its boot sector, FAT, root directory, config and
 * command-line files and the head of the kernel), so the time this takes follows the boot
 * partition, never the root file system. Nothing outside the boot partition's changed sectors
 * differs in the patched view: the partition table, PARTUUIDs and the other partitions stay as
 * they are, so the image's /etc/fstab and `root=PARTUUID=…` stay valid.
 */
import zlib from 'node:zlib';
import { parseScriptImageHeader } from '../board/uimage.js';
import { FileImageReader, SectorOverlay, type ImageReader, type Patch } from './disk.js';
import { InjectError } from './errors.js';
import { FatVolume, type FatType, type Directory } from './fat.js';
import { findBootPartition, parseMbr, SECTOR } from './mbr.js';
import { restoreConfigText, rewriteConfigText, selectBoot, type BootFiles } from './boot-config.js';
import { getPiModel, type PiModel } from './models.js';

export type { Patch } from './disk.js';
export { InjectError, type InjectErrorCode } from './errors.js';

export const UBOOT_FILE = 'u-boot.bin';
export const STAGE1_FILE = 'boot.scr';
export const DEFAULT_ENV_NAME = 'rpi-flash.env';
/** Version of the env file's keys; stage 1 may check `rpf_version`. */
export const ENV_VERSION = 1;

export interface InjectOptions {
  /** The lab's U-Boot build for the target's model (from the agent's config). */
  ubootBin: Buffer;
  /** Stage 1 as a U-Boot script image (uboot/boot.scr, built by the project). */
  bootScr: Buffer;
  /** Name of the env file stage 1 imports; default `rpi-flash.env`. */
  envName?: string;
  /**
   * The target's model (`pi4`, `pi3-32`…, see models.ts): decides config.txt's model sections and
   * the firmware's default kernel, and must match the U-Boot build's 32/64-bit mode. Without it,
   * model sections that choose the kernel are refused and the defaults follow the files present.
   */
  model?: string | PiModel;
  /** More `key=value` lines for stage 1 (e.g. static network settings); keys must be env names. */
  extraEnv?: Record<string, string>;
  /** Timestamp for the files written; default now. */
  now?: Date;
}

export interface InjectResult {
  /** Byte ranges of the image to replace: sorted, non-overlapping. */
  patches: Patch[];
  bootPartition: { index: number; offset: number; size: number; type: number; fat: FatType };
  /** Files written or replaced in the boot partition, in the order written. */
  files: string[];
  /** What the env file holds. */
  env: Record<string, string>;
  /** Image bytes read while planning (the MBR and parts of the boot partition). */
  bytesRead: number;
}

const MAX_CONFIG_BYTES = 1024 * 1024;
const KERNEL_HEAD_BYTES = 64 * 1024;

export async function planInjection(imagePath: string, imageSize: number, o: InjectOptions): Promise<InjectResult> {
  const reader = await FileImageReader.open(imagePath, imageSize);
  try {
    return await planInjectionFrom(reader, o);
  } finally {
    await reader.close();
  }
}

/** The same over any positioned reader (tests use one that records where it reads). */
export async function planInjectionFrom(image: ImageReader, o: InjectOptions): Promise<InjectResult> {
  let bytesRead = 0;
  const reader: ImageReader = {
    size: image.size,
    read: (offset, length) => {
      bytesRead += length;
      return image.read(offset, length);
    },
  };
  if (o.ubootBin.length === 0) throw new Error('the U-Boot binary is empty');
  parseScriptImageHeader(o.bootScr); // a broken stage 1 would leave every board unable to boot
  const envName = o.envName ?? DEFAULT_ENV_NAME;
  const model = typeof o.model === 'string' ? getPiModel(o.model) : o.model;
  const now = o.now ?? new Date();

  const sector0 = await reader.read(0, Math.min(SECTOR, reader.size));
  const partitions = parseMbr(sector0, reader.size);
  const boot = findBootPartition(partitions);
  const overlay = new SectorOverlay(reader);
  const vol = await FatVolume.open(overlay, boot.offset, boot.size);
  const root = await vol.root();

  const files: BootFiles = {
    exists: async (path) => (await vol.lookup(path)) !== undefined,
    readText: async (path) => {
      const found = await vol.lookup(path);
      if (!found) return null;
      return (await vol.readFile(found.entry, MAX_CONFIG_BYTES)).toString('utf8');
    },
  };
  const selection = await selectBoot(files, model);

  const kernelFound = (await vol.lookup(selection.kernel))!;
  const kernelInfo = identifyKernel(await vol.readHead(kernelFound.entry, KERNEL_HEAD_BYTES));
  const arm64 = kernelInfo.arm64 ?? selection.arm64;
  if (model && arm64 !== model.arm64) {
    throw new InjectError(
      'BOOT_CONFIG_UNSUPPORTED',
      `the image boots ${arm64 ? 'a 64-bit' : 'a 32-bit'} kernel ` +
        `(${selection.kernel}${kernelInfo.arm64 === undefined ? '' : `, ${kernelInfo.format}`}) ` +
        `but model ${model.name} uses the ${model.arm64 ? '64' : '32'}-bit U-Boot ${model.ubootBuild}, ` +
        'which cannot boot it' +
        ` (use model ${model.arm64 ? `${model.name}-32` : model.name.replace(/-32$/, '')} for this image)`,
    );
  }

  const cmdlineText = await files.readText(selection.cmdlineFile);
  // The firmware passes the file's first line; so does stage 1.
  const bootargs = (cmdlineText ?? '').split(/\r?\n/)[0]!.trim();

  const env: Record<string, string> = {
    rpf_version: String(ENV_VERSION),
    rpf_bootpart: boot.index.toString(16),
    rpf_kernel: selection.kernel,
    rpf_kernel_comp: kernelInfo.compression,
    rpf_initrd: selection.initramfs ?? '',
    rpf_arm64: arm64 ? '1' : '0',
    rpf_bootargs: bootargs,
  };
  for (const [key, value] of Object.entries(o.extraEnv ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key))
      throw new Error(`extra env key "${key}" is not a valid U-Boot variable name`);
    env[key] = value;
  }
  // An absent key is how stage 1 learns "none" (`env exists`); `key=` would mean the same to
  // `env import`, but leaving it out is plainer.
  for (const [key, value] of Object.entries(env)) if (value === '') delete env[key];

  const newFiles: { name: string; data: Buffer; dir: Directory }[] = [
    { name: UBOOT_FILE, data: o.ubootBin, dir: root },
    { name: STAGE1_FILE, data: o.bootScr, dir: root },
    { name: envName, data: Buffer.from(formatEnvFile(env), 'utf8'), dir: root },
  ];
  const mainConfig = (await files.readText('config.txt')) ?? '';
  newFiles.push({
    name: 'config.txt',
    data: Buffer.from(
      rewriteConfigText(restoreConfigText(mainConfig).text, {
        appendBlock: { arm64, enableUart: !selection.setsEnableUart, envName },
      }),
      'utf8',
    ),
    dir: root,
  });
  for (const included of selection.filesToRewrite) {
    if (included.toLowerCase() === 'config.txt') continue;
    const found = (await vol.lookup(included))!;
    const text = restoreConfigText((await vol.readFile(found.entry, MAX_CONFIG_BYTES)).toString('utf8')).text;
    newFiles.push({ name: found.entry.name, data: Buffer.from(rewriteConfigText(text, {}), 'utf8'), dir: found.dir });
  }

  const dirs = [...new Set(newFiles.map((f) => f.dir))];
  // All room is checked before anything is written, so the error names every file and the shortfall.
  if (dirs.length === 1) vol.checkRoom(root, newFiles);
  else
    for (const dir of dirs)
      vol.checkRoom(
        dir,
        newFiles.filter((f) => f.dir === dir),
      );
  for (const f of newFiles) vol.writeFile(f.dir, f.name, f.data, now);
  await vol.flush(dirs);

  return {
    patches: overlay.patches(),
    bootPartition: { index: boot.index, offset: boot.offset, size: boot.size, type: boot.type, fat: vol.type },
    files: newFiles.map((f) => (f.dir === root ? f.name : `${f.dir.path.replace(/\/$/, '')}/${f.name}`)),
    env,
    bytesRead,
  };
}

/**
 * The env file in the text form `env import -t ADDR SIZE` reads: `name=value` lines, `#` comments.
 * U-Boot's importer treats a backslash as an escape, so backslashes are doubled; a value never
 * holds a newline (the command line is one line).
 */
export function formatEnvFile(env: Record<string, string>): string {
  const lines = ['# rpi-flash: how stage 1 boots this image (read by U-Boot with env import -t)'];
  for (const [key, value] of Object.entries(env)) {
    if (/[\r\n]/.test(value)) throw new Error(`env value for ${key} holds a line break`);
    lines.push(`${key}=${value.replace(/\\/g, '\\\\')}`);
  }
  return lines.join('\n') + '\n';
}

export interface KernelInfo {
  /** 64-bit (arm64 Image), 32-bit (zImage), or undefined when the header is not recognised. */
  arm64: boolean | undefined;
  format: string;
  /** `gzip` when the file is a gzip-compressed kernel (Debian's vmlinuz on arm64), else `none`. */
  compression: 'none' | 'gzip';
}

/** Recognises a kernel by its header: arm64 Image ("ARMd" at 56), ARM zImage (magic at 0x24), gzip of either. */
export function identifyKernel(head: Buffer): KernelInfo {
  const plain = (buf: Buffer): { arm64: boolean; format: string } | undefined => {
    if (buf.length >= 64 && buf.readUInt32LE(56) === 0x644d5241) return { arm64: true, format: 'arm64 Image' };
    if (buf.length >= 0x28 && buf.readUInt32LE(0x24) === 0x016f2818) return { arm64: false, format: 'ARM zImage' };
    return undefined;
  };
  const direct = plain(head);
  if (direct) return { ...direct, compression: 'none' };
  if (head[0] === 0x1f && head[1] === 0x8b) {
    let inner: Buffer | undefined;
    try {
      inner = zlib.gunzipSync(head, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } catch {
      inner = undefined;
    }
    const found = inner && plain(inner);
    return found
      ? { arm64: found.arm64, format: `gzip-compressed ${found.format}`, compression: 'gzip' }
      : { arm64: undefined, format: 'gzip data', compression: 'gzip' };
  }
  return { arm64: undefined, format: 'unrecognised', compression: 'none' };
}
