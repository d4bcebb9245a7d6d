import { CodedError, type ErrorCode } from '../../../src/protocol/errors.js';

/**
 * Why an image cannot carry U-Boot. Each code is one of the stable codes of src/protocol/errors.ts
 * (meanings there and in the README); the message names what is wrong in that image and, where
 * it helps, what to do about it.
 */
export type InjectErrorCode = Extract<
  ErrorCode,
  | 'IMAGE_NOT_DISK' // no MBR partition table (a bare file system, a compressed file, anything else)
  | 'IMAGE_GPT_UNSUPPORTED' // a GPT disk (protective MBR, type 0xEE): not supported yet
  | 'IMAGE_NO_BOOT_PARTITION' // no primary FAT partition, or the first one holds no valid FAT
  | 'BOOT_PARTITION_FULL' // no free clusters or directory entries for the new files
  | 'BOOT_CONFIG_UNSUPPORTED' // config.txt selects the kernel in a way the injection cannot follow
  | 'IMAGE_TRUNCATED' // the partition table or the file system points past the end of the image
>;

/** A coded error whose code is one of the injection's; `instanceof InjectError` tells the layer. */
export class InjectError extends CodedError {
  declare readonly code: InjectErrorCode;
  constructor(code: InjectErrorCode, message: string) {
    super(code, message);
    this.name = 'InjectError';
  }
}
