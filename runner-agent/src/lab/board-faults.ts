/**
 * Which job results are the board's fault: the one list the agent counts toward a board's health
 * (`health.afterFailures` of them in a row make it `unhealthy` and start a health check).
 *
 * A code is the board's when the board, its card, its wiring or its network failed while the
 * request itself was sound. A code is the user's (never counted) when the image, the upload or the
 * request was wrong (IMAGE_*, UPLOAD_*, SHA256_MISMATCH, BAD_REQUEST, BOOT_CONFIG_UNSUPPORTED…) or
 * the job was stopped from outside (CANCELLED, LEASE_LOST, SHUTTING_DOWN). A code the agent cannot
 * place (INTERNAL, LAB_MISCONFIGURED: the server's setup, not the board) is not counted either: a
 * board is taken out only on evidence against it.
 *
 * BOOT_TIMEOUT is the one that may be either: a user's image that does not boot looks the same as a
 * board that does not. It is counted because the health check arbitrates: a board that boots the
 * known-good image is back at once, so a broken image costs one health check, not the board.
 */
import type { ErrorCode } from '../../../src/protocol/errors.js';

export const BOARD_FAULT_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  // The reset line (relay, GPIO, QMP) could not be driven: the board's wiring.
  'RESET_FAILED',
  // The board never fetched its script after the reset: power, card, U-Boot or its network.
  'BOARD_NO_SHOW',
  // The board asked from another address than its row's: its network (DHCP, cabling) is wrong.
  'BOARD_IP_MISMATCH',
  // The board stopped mid-flash, or said that a download, write or read-back failed: card or network.
  'BOARD_TIMEOUT',
  'BOARD_REPORTED_FAILURE',
  // The card did not hold what was written (CRCs, missing parts): a failing card.
  'VERIFY_MISMATCH',
  // The board's console could not be opened though the boot check needs it: its serial wiring.
  'CONSOLE_UNAVAILABLE',
  // See above: the health check tells a broken image from a broken board.
  'BOOT_TIMEOUT',
]);

export function isBoardFault(code: ErrorCode): boolean {
  return BOARD_FAULT_CODES.has(code);
}
