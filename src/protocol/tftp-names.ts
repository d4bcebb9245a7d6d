/**
 * The TFTP file-name layout (DESIGN §3.4, §3.5): shared by the agent (which serves these names),
 * the stage-2 generator (which asks for them) and the simulated board.
 */

const MAC_PATTERN = /^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/i;

export function isMac(value: string): boolean {
  return MAC_PATTERN.test(value.trim());
}

/** Canonical MAC: lower case with ':' separators. Throws on anything that is not a MAC. */
export function normalizeMac(value: string): string {
  const mac = value.trim().toLowerCase();
  if (!MAC_PATTERN.test(mac)) throw new Error(`not a MAC address: "${value}"`);
  return mac.replaceAll('-', ':');
}

/** The target's folder under the TFTP root: what U-Boot gets from `setexpr macdir gsub : - ${ethaddr}`. */
export function macDir(mac: string): string {
  return normalizeMac(mac).replaceAll(':', '-');
}

/** The seed system's folder name: the MAC with ':' (DESIGN §3.5, seed compatibility). */
export function seedMacDir(mac: string): string {
  return normalizeMac(mac);
}

export const FLASH_SCRIPT = 'flash.scr';

/** Job ids appear in TFTP paths: keep them short, lower-case and path-safe. */
export const JOB_ID_PATTERN = /^[a-z0-9]{6,32}$/;

/** `<macdir>/<job>/part-007`: part numbers are 1-based on the wire, zero-padded for sorting. */
export function partFile(mac: string, jobId: string, index: number): string {
  return `${macDir(mac)}/${jobId}/part-${String(index).padStart(3, '0')}`;
}

/** The per-job secret in report names (hex): only the job's `flash.scr` holds it. */
export const REPORT_SECRET_PATTERN = /^[0-9a-f]{16,64}$/;

/**
 * Prefix of every beacon a board reads to report: `<macdir>/<job>/<secret>/<message>`. A name
 * without the job's secret is no report, so no one who has not read the board's script can report.
 */
export function reportPrefix(mac: string, jobId: string, secret: string): string {
  if (!REPORT_SECRET_PATTERN.test(secret)) throw new Error('report secret must be 16 to 64 lower-case hex digits');
  return `${macDir(mac)}/${jobId}/${secret}/`;
}
