/**
 * How both sides print sizes and CRCs, so a log line from the agent and one from the action name
 * the same number the same way.
 */

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;

/** `512 B`, `1.5 KiB`, `100.0 MiB`, `2.0 GiB`: binary units, one decimal above bytes. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${BYTE_UNITS[unit]}`;
}

/** A 32-bit value (a CRC32) as 8 lower-case hex digits, as the agent's records and U-Boot print it. */
export function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}
