/**
 * TFTP option negotiation (RFC 2347 OACK, 2348 blksize, 2349 timeout/tsize, 7440 windowsize).
 * Pure: the server decides what it accepts from what the client asked and its own limits.
 */

export const DEFAULT_BLKSIZE = 512;
export const MIN_BLKSIZE = 8;
export const MAX_BLKSIZE = 65464;
export const MAX_WINDOWSIZE = 65535;

export interface OptionLimits {
  maxBlksize: number;
  maxWindowsize: number;
  /**
   * The largest window in bytes (blksize × windowsize): a window is held in memory while it is in
   * flight, so this bounds a transfer's memory whatever the client asks. Default: no bound.
   */
  maxWindowBytes?: number;
  /**
   * The largest `timeout` (seconds) accepted; a larger ask is left out of the OACK (RFC 2349 lets
   * the server only accept or ignore it) and the server's own timeout applies. Default 255.
   */
  maxTimeout?: number;
}

/** What of a request's options the server keeps: no option the server knows needs more. */
export const MAX_OPTIONS = 16;
export const MAX_OPTION_TEXT = 64;

/**
 * The first MAX_OPTIONS options whose name and value fit in MAX_OPTION_TEXT characters: a request
 * stuffed with options (65 KiB of them fit in a datagram) is held and handed on at a small size.
 */
export function boundedOptions(options: Record<string, string>): Record<string, string> {
  const kept: Record<string, string> = {};
  let count = 0;
  for (const [name, value] of Object.entries(options)) {
    if (count === MAX_OPTIONS) break;
    if (name.length > MAX_OPTION_TEXT || value.length > MAX_OPTION_TEXT) continue;
    kept[name] = value;
    count++;
  }
  return kept;
}

export interface Negotiated {
  /** What goes into the OACK (empty → no OACK: plain RFC 1350 transfer). */
  accepted: Record<string, string>;
  blksize: number;
  windowsize: number;
  /** The client's `timeout`, in ms, when it asked for one. */
  timeoutMs?: number;
  /** The size a WRQ announced with `tsize`. */
  uploadSize?: number;
}

function parseCount(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d{1,10}$/.test(value)) return undefined;
  return Number(value);
}

/**
 * Decides the options of a transfer. Unknown or malformed options are ignored (not acknowledged),
 * as RFC 2347 asks. A blksize below 8 is outside RFC 2348's range and ignored rather than raised,
 * since the server may only answer a value at or below the client's.
 * `fileSize` is the real size for a read request (its `tsize` is answered with it).
 */
export function negotiateOptions(
  kind: 'read' | 'write',
  requested: Record<string, string>,
  limits: OptionLimits,
  fileSize?: number,
): Negotiated {
  const accepted: Record<string, string> = {};
  const result: Negotiated = { accepted, blksize: DEFAULT_BLKSIZE, windowsize: 1 };

  const blksize = parseCount(requested.blksize);
  if (blksize !== undefined && blksize >= MIN_BLKSIZE) {
    result.blksize = Math.min(blksize, limits.maxBlksize, MAX_BLKSIZE);
    accepted.blksize = String(result.blksize);
  }
  const windowsize = parseCount(requested.windowsize);
  if (windowsize !== undefined && windowsize >= 1) {
    const byBytes = Math.max(1, Math.floor((limits.maxWindowBytes ?? Infinity) / result.blksize));
    result.windowsize = Math.min(windowsize, limits.maxWindowsize, MAX_WINDOWSIZE, byBytes);
    accepted.windowsize = String(result.windowsize);
  }
  const timeout = parseCount(requested.timeout);
  if (timeout !== undefined && timeout >= 1 && timeout <= Math.min(255, limits.maxTimeout ?? 255)) {
    result.timeoutMs = timeout * 1000;
    accepted.timeout = String(timeout);
  }
  const tsize = parseCount(requested.tsize);
  if (tsize !== undefined) {
    if (kind === 'read' && fileSize !== undefined) accepted.tsize = String(fileSize);
    if (kind === 'write') {
      result.uploadSize = tsize;
      accepted.tsize = String(tsize);
    }
  }
  return result;
}
