/**
 * Beacons: how a stage-2 script reports without `tftpput` (DESIGN §3.5). The board reads
 * `<macdir>/<job>/<secret>/<message>` over TFTP (the secret is the job's, in its flash.scr only);
 * the agent answers with a tiny file and records the message. The grammar lives here once: the
 * generator builds its messages from `beaconText` (with U-Boot variable references in place of
 * numbers) and the agent parses them with `parseBeacon`.
 *
 * Messages (numbers decimal, CRCs lower-case hex without leading zeros — what U-Boot's setexpr
 * prints):
 *   start
 *   too-large                                  the card is smaller than the image: reading the
 *                                              image's last block failed while block 0 reads
 *                                              (only the board knows its card's size); the
 *                                              script then reports done-failed without writing
 *   no-room-<top>                              the board's RAM ends at <top> (hex, from the firmware's
 *                                              device tree): U-Boot's reserve below it leaves no room
 *                                              for the load buffer; done-failed follows, nothing written
 *   caps-unzip                                 the board's U-Boot inflated a known gzip stream with
 *                                              `unzip` (the agent asked it to probe; compressed
 *                                              parts from the next job on, stage2-flash.ts)
 *   no-unzip                                   a job with compressed parts, but the board's U-Boot
 *                                              cannot `unzip`: done-failed follows, nothing written
 *   part-<n>-retry-<attempt>-download          attempt <attempt> of part <n> failed in TFTP
 *   part-<n>-retry-<attempt>-unzip             … or its compressed data did not inflate to the part
 *   part-<n>-retry-<attempt>-crc-<crc>         … or downloaded data with CRC <crc>; trying again
 *   part-<n>-ok-<crc>                          written, read back, CRC of the read-back data
 *   part-<n>-same-<crc>                        read-compare: the card already held the part (CRC of
 *                                              what the board read there); not downloaded, not written
 *   part-<n>-failed-download                   last attempt failed in TFTP
 *   part-<n>-failed-download-<crc>             last attempt's data had CRC <crc>
 *   part-<n>-failed-unzip                      last attempt's compressed data did not inflate
 *   part-<n>-failed-write | part-<n>-failed-readback      `mmc write` / `mmc read` failed
 *   part-<n>-failed-verify-<crc>               the data read back from the card had CRC <crc>
 *   done-ok | done-failed
 * Every message is path-safe and has no ':' (U-Boot would take `a:b` as `serverip:file`).
 */

export type Beacon =
  | { kind: 'start' }
  | { kind: 'too-large' }
  | { kind: 'no-room'; top: string /* the board's top of RAM, hex */ }
  | { kind: 'caps-unzip' }
  | { kind: 'no-unzip' }
  | { kind: 'part-retry'; part: number; attempt: number; reason: 'download' | 'crc' | 'unzip'; crc?: string }
  | { kind: 'part-ok'; part: number; crc: string /* as the board computed it after read-back, hex */ }
  | { kind: 'part-same'; part: number; crc: string /* of what the board read from its card, hex */ }
  | { kind: 'part-failed'; part: number; stage: 'download' | 'unzip' | 'write' | 'readback' | 'verify'; crc?: string }
  | { kind: 'done'; ok: boolean };

/**
 * Message builders. Arguments are text so the generator can pass U-Boot variable references
 * (`${rpf_part}`) that the board expands at run time; `formatBeacon` passes real values.
 */
export const beaconText = {
  start: () => 'start',
  tooLarge: () => 'too-large',
  noRoom: (top: string) => `no-room-${top}`,
  capsUnzip: () => 'caps-unzip',
  noUnzip: () => 'no-unzip',
  /** `reason` is `download`, `unzip` or `crc-<crc>`: the script keeps it in one variable. */
  partRetry: (part: string, attempt: string, reason: string) => `part-${part}-retry-${attempt}-${reason}`,
  retryReasonCrc: (crc: string) => `crc-${crc}`,
  partOk: (part: string, crc: string) => `part-${part}-ok-${crc}`,
  partSame: (part: string, crc: string) => `part-${part}-same-${crc}`,
  /** `what` is `download`, `download-<crc>`, `unzip`, `write`, `readback` or `verify-<crc>`. */
  partFailed: (part: string, what: string) => `part-${part}-failed-${what}`,
  failedWithCrc: (stage: 'download' | 'verify', crc: string) => `${stage}-${crc}`,
  done: (ok: boolean) => (ok ? 'done-ok' : 'done-failed'),
};

export function formatBeacon(b: Beacon): string {
  switch (b.kind) {
    case 'start':
      return beaconText.start();
    case 'too-large':
      return beaconText.tooLarge();
    case 'no-room':
      return beaconText.noRoom(b.top);
    case 'caps-unzip':
      return beaconText.capsUnzip();
    case 'no-unzip':
      return beaconText.noUnzip();
    case 'part-retry':
      return beaconText.partRetry(
        String(b.part),
        String(b.attempt),
        b.reason === 'crc' ? beaconText.retryReasonCrc(b.crc ?? '0') : b.reason,
      );
    case 'part-ok':
      return beaconText.partOk(String(b.part), b.crc);
    case 'part-same':
      return beaconText.partSame(String(b.part), b.crc);
    case 'part-failed':
      if (b.stage === 'verify')
        return beaconText.partFailed(String(b.part), beaconText.failedWithCrc('verify', b.crc ?? '0'));
      if (b.stage === 'download' && b.crc !== undefined)
        return beaconText.partFailed(String(b.part), beaconText.failedWithCrc('download', b.crc));
      return beaconText.partFailed(String(b.part), b.stage);
    case 'done':
      return beaconText.done(b.ok);
  }
}

const N = '([1-9][0-9]{0,5})';
const CRC = '([0-9a-f]{1,8})';
/** A 32-bit address as setexpr prints it. */
const ADDR = CRC;
const PATTERNS: Array<[RegExp, (m: RegExpExecArray) => Beacon]> = [
  [/^start$/, () => ({ kind: 'start' })],
  [/^too-large$/, () => ({ kind: 'too-large' })],
  [new RegExp(`^no-room-${ADDR}$`), (m) => ({ kind: 'no-room', top: m[1]! })],
  [/^caps-unzip$/, () => ({ kind: 'caps-unzip' })],
  [/^no-unzip$/, () => ({ kind: 'no-unzip' })],
  [
    new RegExp(`^part-${N}-retry-${N}-(download|unzip)$`),
    (m) => ({
      kind: 'part-retry',
      part: Number(m[1]),
      attempt: Number(m[2]),
      reason: m[3] as 'download' | 'unzip',
    }),
  ],
  [
    new RegExp(`^part-${N}-retry-${N}-crc-${CRC}$`),
    (m) => ({ kind: 'part-retry', part: Number(m[1]), attempt: Number(m[2]), reason: 'crc', crc: m[3]! }),
  ],
  [new RegExp(`^part-${N}-ok-${CRC}$`), (m) => ({ kind: 'part-ok', part: Number(m[1]), crc: m[2]! })],
  [new RegExp(`^part-${N}-same-${CRC}$`), (m) => ({ kind: 'part-same', part: Number(m[1]), crc: m[2]! })],
  [
    new RegExp(`^part-${N}-failed-(download|unzip|write|readback)$`),
    (m) => ({ kind: 'part-failed', part: Number(m[1]), stage: m[2] as 'download' | 'unzip' | 'write' | 'readback' }),
  ],
  [
    new RegExp(`^part-${N}-failed-(download|verify)-${CRC}$`),
    (m) => ({ kind: 'part-failed', part: Number(m[1]), stage: m[2] as 'download' | 'verify', crc: m[3]! }),
  ],
  [/^done-(ok|failed)$/, (m) => ({ kind: 'done', ok: m[1] === 'ok' })],
];

/** The beacon a message names, or null for anything outside the grammar (the agent logs those). */
export function parseBeacon(message: string): Beacon | null {
  for (const [pattern, build] of PATTERNS) {
    const m = pattern.exec(message);
    if (m) return build(m);
  }
  return null;
}

/**
 * What the board reports for data whose real CRC32 is `crc32`: the stage-2 script normalises the
 * byte order of U-Boot's `crc32` result (see stage2-script.ts) and prints it with `setexpr`,
 * i.e. `%lx` — lower-case hex without leading zeros.
 */
export function boardCrcText(crc32: number): string {
  if (!Number.isInteger(crc32) || crc32 < 0 || crc32 > 0xffff_ffff) throw new RangeError(`not a CRC32 value: ${crc32}`);
  return crc32.toString(16);
}
