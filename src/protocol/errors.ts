/**
 * The one table of stable result and error codes, shared by the agent and the action, and the one
 * coded-error class every layer throws. Code across process boundaries matches on `code`, never on
 * message text. The README's "Result codes" table is written by hand from this one (a test checks
 * that they agree, code for code and word for word).
 */

/** Codes the agent sends, in `error` messages and in job results. */
export const AgentCodes = {
  OK: 'The job finished: every part written and verified, and the boot check passed.',
  AUTH_FAILED: 'The token was missing or wrong (HTTP 401 at the WebSocket upgrade).',
  PROTOCOL_VERSION_MISMATCH: 'Client and agent speak different protocol versions.',
  BAD_MESSAGE: 'A message was not valid JSON, had an unknown type, or lacked a required field.',
  BAD_REQUEST: 'A request was valid JSON but not allowed now (e.g. upload before lease).',
  UNKNOWN_TARGET: "No target in the agent's database has that name, MAC or IP.",
  UNKNOWN_LABEL: "No target in the agent's database carries the label of a `label:` target.",
  BOARD_UNHEALTHY:
    'The board (or every board of the pool) is unhealthy: its health check failed, or too many jobs in a row ' +
    "failed for the board's own reasons; the agent refuses it until a health check passes.",
  BOARD_IN_MAINTENANCE:
    'The board (or every board of the pool) is in maintenance: an operator took it out of service ' +
    '(`rpi-flash-agent board TARGET resume` brings it back).',
  LEASE_LOST: 'The lease ended (client silent past the grace period, or the agent is stopping).',
  NOT_LEASED: 'The request needs a lease on a target first.',
  NO_SPACE: "The agent's state directory cannot hold the upload.",
  UPLOAD_TOO_LARGE: 'More bytes arrived than the upload declared, or the image is larger than allowed.',
  UPLOAD_IN_PROGRESS:
    'Another client is uploading the same image right now; wait and ask again (the upload is then skipped).',
  UPLOAD_TRUNCATED: 'The upload ended before the declared size was reached.',
  SHA256_MISMATCH: 'The bytes received do not hash to the declared sha256.',
  UNSUPPORTED_COMPRESSION: 'The image compression is not one of none, gz, xz, zst.',
  DECOMPRESS_FAILED: 'The compressed image could not be decompressed (corrupt or truncated).',
  IMAGE_NOT_FOUND: 'The agent does not hold an image with that sha256.',
  IMAGE_TOO_LARGE: "The image is larger than the target's card.",
  IMAGE_NOT_DISK:
    'The image has no MBR partition table: it is not a disk image ' +
    '(a bare file system, a compressed file, or other data).',
  IMAGE_GPT_UNSUPPORTED: 'The image uses a GPT partition table; only MBR images can carry U-Boot for now.',
  IMAGE_NO_BOOT_PARTITION:
    'The image has no FAT boot partition (the first primary FAT partition, as the Pi firmware picks it), ' +
    'or it holds no valid FAT file system.',
  BOOT_PARTITION_FULL:
    'The boot partition has no room for U-Boot, the stage-1 script and the env file ' +
    '(free space or root directory entries).',
  BOOT_CONFIG_UNSUPPORTED:
    "The image's config.txt chooses its kernel in a way that cannot be handed to U-Boot safely " +
    '(e.g. os_prefix, boot_partition, kernel_address), or names a kernel the boot partition lacks.',
  BMAP_INVALID:
    'The block map (bmaptool XML) is malformed or inconsistent: not XML, sizes that disagree, ' +
    'ranges out of order or past the image, or a file checksum that does not match; the message says which.',
  BMAP_UNSUPPORTED:
    'The block map is of a version or checksum type the agent does not read (it reads 2.x and 1.2–1.4).',
  BMAP_MISMATCH: "The block map belongs to another image: its image size or a range's checksum differs from the image.",
  IMAGE_TRUNCATED:
    'The partition table or the boot file system points past the end of the image: the image is cut short.',
  CONSOLE_UNAVAILABLE: "The target's console (console column) could not be opened, and the boot check needs it.",
  LAB_MISCONFIGURED:
    "The lab lacks something this job needs (e.g. the U-Boot build for the target's model); the message names it.",
  SHUTTING_DOWN: 'The agent is stopping and takes no new work.',
  RESET_FAILED: "The target's reset line could not be driven.",
  BOARD_NO_SHOW: 'The board never fetched its flash script after the reset.',
  BOARD_IP_MISMATCH:
    "The board asked for its flash script from an address other than its targets row's IP (tftp.checkClientIp): " +
    'the request was refused; the message names the address.',
  BOARD_RAM_TOO_SMALL:
    "The board's RAM, as its firmware reports it (after gpu_mem, less U-Boot's reserve), ends below stage 2's " +
    'buffers (flash.loadAddr + flash.partSize): nothing was written; the message names both addresses.',
  NETBOOT_TARGET_INCOMPLETE:
    "A network-boot job's target does not boot from the network (its targets row has no `netboot` folder, or its " +
    'model cannot): nothing was reset.',
  IMAGE_NO_KERNEL:
    "The image's boot partition has no kernel, device tree or initramfs that the target's model boots from the " +
    'network.',
  IMAGE_NO_NBD_CLIENT:
    "The image's initramfs holds no NBD client, so its root file system cannot come from the agent's NBD export: " +
    'nothing was reset.',
  NBD_SERVER_FAILED: "The agent could not start the job's NBD server (nbdkit), or it stopped during the job.",
  BOARD_NO_NETBOOT:
    "The board's firmware never asked the agent for its network boot (no DHCP request, or no boot file fetched) " +
    'after the reset.',
  SSH_HOST_KEY_MISMATCH:
    "The board's SSH host key is not the one its targets row pins (`hostkey`): the agent did not log in, " +
    'nothing was touched.',
  SSH_FAILED:
    'The agent could not reach the board over SSH or log in (refused, timed out, or its key was not ' +
    'accepted): nothing was touched.',
  BOARD_UNFIT:
    "The board's running system cannot take an in-place update (architecture, root device, free RAM, or " +
    'no way to run the RAM system): nothing was touched; the message names what.',
  CARD_PARTLY_WRITTEN:
    'The in-place update failed after it began writing: the card holds part of the new image and the ' +
    'board may not boot until it is flashed again.',
  BOARD_TIMEOUT: 'The board stopped making progress in the middle of the flash.',
  BOARD_REPORTED_FAILURE: 'The board reported that a step failed (download, write or read-back).',
  REPORT_REJECTED:
    "A board report was refused: it named a part the agent had not served in full to the board's address, " +
    'or came out of order; the card may hold anything.',
  VERIFY_MISMATCH: "The board's reports do not match what the agent expected (CRC, order, or missing parts).",
  BOOT_TIMEOUT: 'The new system did not pass the boot check in time.',
  CANCELLED: 'The client cancelled the job.',
  INTERNAL: 'An unexpected error in the agent; its log has the details.',
} as const;

/**
 * Codes the action gives for what goes wrong on the runner's side, before or around talking to the
 * agent. The agent never sends them.
 */
export const ActionCodes = {
  INPUT_INVALID: 'An input is missing or malformed (checked before connecting).',
  IMAGE_INVALID: 'The image could not be found, downloaded or read, or its compression is not supported.',
  CONNECT_FAILED: 'The agent could not be reached, refused the connection, or the connection was lost for good.',
  CONNECTION_LOST:
    'The connection to the agent dropped while a request was open ' +
    '(the action reconnects and resumes; it reports CONNECT_FAILED only when that fails).',
  PROTOCOL_ERROR: 'The agent sent a message the action cannot read: the two speak different versions of the protocol.',
  QUEUE_TIMEOUT: 'The target stayed busy past queue-timeout.',
  JOB_TIMEOUT: 'The job did not finish within job-timeout.',
  JOB_LOST:
    'The agent lost the job while it ran (the agent restarted, or the lease ran out while the action was away); ' +
    'the message says whether the card may be partly written.',
} as const;

export const ErrorCodes = { ...AgentCodes, ...ActionCodes } as const;

export type AgentCode = keyof typeof AgentCodes;
export type ActionCode = keyof typeof ActionCodes;
export type ErrorCode = keyof typeof ErrorCodes;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ErrorCodes, value);
}

export function isAgentCode(value: unknown): value is AgentCode {
  return typeof value === 'string' && Object.hasOwn(AgentCodes, value);
}

/**
 * An error that carries a stable code; what crosses the wire is `{ code, message }`. Every layer
 * throws this one class (or a subclass that adds data), so every handler reads the code one way.
 */
export class CodedError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'CodedError';
  }
}

/** The stable code of any thrown value: its own when it carries one from the table, else INTERNAL. */
export function codeOf(err: unknown): ErrorCode {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return isErrorCode(code) ? code : 'INTERNAL';
}

/** The message of any thrown value (a thrown string included). */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
