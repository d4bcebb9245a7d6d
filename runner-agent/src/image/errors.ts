/**
 * Why an image cannot carry U-Boot. Each code is stable (the agent and the action match on it);
 * the message names what is wrong in that image and, where it helps, what to do about it.
 */
export type InjectErrorCode =
  /** No MBR partition table (a bare file system, a compressed file, anything else). */
  | 'IMAGE_NOT_DISK'
  /** A GPT disk (protective MBR, type 0xEE): not supported yet. */
  | 'IMAGE_GPT_UNSUPPORTED'
  /** No primary FAT partition, or the first one holds no valid FAT file system. */
  | 'IMAGE_NO_BOOT_PARTITION'
  /** The boot partition lacks the free clusters or directory entries for the new files. */
  | 'BOOT_PARTITION_FULL'
  /** config.txt selects the kernel in a way the injection cannot follow safely. */
  | 'BOOT_CONFIG_UNSUPPORTED'
  /** The partition table or the file system points past the end of the image file. */
  | 'IMAGE_TRUNCATED';

export const INJECT_ERROR_CODES: Record<InjectErrorCode, string> = {
  IMAGE_NOT_DISK: 'The image has no MBR partition table: it is not a disk image (a bare file system, a compressed file, or other data).',
  IMAGE_GPT_UNSUPPORTED: 'The image uses a GPT partition table; only MBR images can carry U-Boot for now.',
  IMAGE_NO_BOOT_PARTITION: 'The image has no FAT boot partition (the first primary FAT partition, as the Pi firmware picks it), or it holds no valid FAT file system.',
  BOOT_PARTITION_FULL: 'The boot partition has no room for U-Boot, the stage-1 script and the env file (free space or root directory entries).',
  BOOT_CONFIG_UNSUPPORTED: "The image's config.txt chooses its kernel in a way that cannot be handed to U-Boot safely (e.g. os_prefix, boot_partition, kernel_address), or names a kernel the boot partition lacks.",
  IMAGE_TRUNCATED: 'The partition table or the boot file system points past the end of the image: the image is cut short.',
};

export class InjectError extends Error {
  constructor(
    readonly code: InjectErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'InjectError';
  }
}
