/**
 * The MBR partition table of a disk image: the four primary entries, checked against the image.
 * The Pi firmware boots from the first primary FAT partition; logical partitions inside an
 * extended one can never be that partition, so they are left alone (not parsed, never changed).
 */
import { InjectError } from './errors.js';

export const SECTOR = 512;

export interface MbrPartition {
  /** 1-based, as Linux (`/dev/mmcblk0p1`) and U-Boot (`mmc 0:1`) number it. */
  index: number;
  type: number;
  bootable: boolean;
  startLba: number;
  sectors: number;
  /** Byte offset and size in the image. */
  offset: number;
  size: number;
}

/** MBR partition types the Pi firmware reads as FAT (FAT12, FAT16 <32M, FAT16, FAT32 CHS/LBA, FAT16 LBA). */
export const FAT_PARTITION_TYPES: ReadonlySet<number> = new Set([0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e]);
const EXTENDED_TYPES: ReadonlySet<number> = new Set([0x05, 0x0f, 0x85]);
const GPT_PROTECTIVE = 0xee;

const MAGIC: Record<string, Buffer> = {
  'gzip-compressed': Buffer.from([0x1f, 0x8b]),
  'xz-compressed': Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
  'zstd-compressed': Buffer.from([0x28, 0xb5, 0x2f, 0xfd]),
  'a zip archive': Buffer.from('PK\x03\x04', 'latin1'),
};

function describeContent(sector0: Buffer): string {
  for (const [what, magic] of Object.entries(MAGIC))
    if (sector0.subarray(0, magic.length).equals(magic)) return ` (it looks ${what}: decompress it first)`;
  if (
    sector0.length >= 512 &&
    (sector0[0] === 0xeb || sector0[0] === 0xe9) &&
    /FAT/.test(sector0.subarray(0x36, 0x5a).toString('latin1'))
  ) {
    return ' (it is a bare FAT file system, not a disk image with a partition table)';
  }
  return '';
}

/**
 * Parses the primary partitions (non-empty ones, in table order) and checks them against an image
 * of `imageSize` bytes. Throws IMAGE_NOT_DISK, IMAGE_GPT_UNSUPPORTED or IMAGE_TRUNCATED.
 */
export function parseMbr(sector0: Buffer, imageSize: number): MbrPartition[] {
  if (imageSize < SECTOR || sector0.length < SECTOR) {
    throw new InjectError(
      'IMAGE_NOT_DISK',
      `the image is ${imageSize} bytes: too short to hold an MBR partition table (${SECTOR} bytes)` +
        describeContent(sector0),
    );
  }
  if (sector0[510] !== 0x55 || sector0[511] !== 0xaa) {
    throw new InjectError(
      'IMAGE_NOT_DISK',
      `no MBR signature (55 aa at byte 510): not a disk image${describeContent(sector0)}`,
    );
  }
  const partitions: MbrPartition[] = [];
  const problems: string[] = [];
  for (let i = 0; i < 4; i++) {
    const e = sector0.subarray(446 + 16 * i, 446 + 16 * (i + 1));
    const status = e[0]!;
    const type = e[4]!;
    const startLba = e.readUInt32LE(8);
    const sectors = e.readUInt32LE(12);
    if (status !== 0x00 && status !== 0x80)
      problems.push(`entry ${i + 1} has status byte 0x${status.toString(16)} (only 0x00 and 0x80 are valid)`);
    if (type === 0) continue;
    if (type === GPT_PROTECTIVE) {
      throw new InjectError(
        'IMAGE_GPT_UNSUPPORTED',
        'GPT images are not supported yet: the image has a protective MBR (partition type 0xEE); ' +
          'convert it to an MBR (DOS) partition table, as Raspberry Pi OS images use',
      );
    }
    if (sectors === 0 || startLba === 0) {
      problems.push(
        `entry ${i + 1} (type 0x${type.toString(16)}) starts at sector ${startLba} with ${sectors} sectors`,
      );
      continue;
    }
    partitions.push({
      index: i + 1,
      type,
      bootable: status === 0x80,
      startLba,
      sectors,
      offset: startLba * SECTOR,
      size: sectors * SECTOR,
    });
  }
  if (problems.length)
    throw new InjectError(
      'IMAGE_NOT_DISK',
      `sector 0 is not a valid MBR partition table: ${problems.join('; ')}${describeContent(sector0)}`,
    );
  if (partitions.length === 0)
    throw new InjectError(
      'IMAGE_NOT_DISK',
      `the MBR partition table is empty: no partitions${describeContent(sector0)}`,
    );
  const sorted = [...partitions].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.size) {
      throw new InjectError(
        'IMAGE_NOT_DISK',
        `partitions ${prev.index} and ${cur.index} overlap ` +
          `(sectors ${prev.startLba}+${prev.sectors} and ${cur.startLba}+${cur.sectors}): not a usable partition table`,
      );
    }
  }
  for (const p of partitions) {
    if (p.offset + p.size > imageSize) {
      throw new InjectError(
        'IMAGE_TRUNCATED',
        `partition ${p.index} (type 0x${p.type.toString(16).padStart(2, '0')}) ends at byte ${p.offset + p.size} ` +
          `but the image has only ${imageSize} bytes: the image is cut short`,
      );
    }
  }
  return partitions;
}

/** The partition the Pi firmware boots from: the first primary partition with a FAT type. */
export function findBootPartition(partitions: readonly MbrPartition[]): MbrPartition {
  const boot = partitions.find((p) => FAT_PARTITION_TYPES.has(p.type));
  if (!boot) {
    const seen = partitions
      .map(
        (p) =>
          `${p.index}: type 0x${p.type.toString(16).padStart(2, '0')}` +
          (EXTENDED_TYPES.has(p.type) ? ' (extended)' : ''),
      )
      .join(', ');
    throw new InjectError(
      'IMAGE_NO_BOOT_PARTITION',
      'no FAT boot partition: the Pi firmware boots from the first primary partition ' +
        `of type 0x01/0x04/0x06/0x0b/0x0c/0x0e, and this image has ${seen}`,
    );
  }
  return boot;
}
