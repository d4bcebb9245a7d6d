/**
 * What a board carrying the seed system's recovery card speaks (DESIGN §3.5, seed compatibility):
 * its folder and part names, how it cuts the image, its `OK`/`FAILED` report and what each report
 * means. The card is never changed, so everything here follows it; the layout that drives a job
 * with it is `layouts/seed.ts`.
 *
 * What the seed card does (my reading of DESIGN §3.5 and of the seed system's own description:
 * its server script splits the image with `split -d -a 1 --bytes=786432000`, its card's U-Boot
 * script loads `${ethaddr}/rpi_image_part_0`, skips 0x400000 bytes of it, and writes with
 * `mmc write`):
 *
 * 1. The folder under the TFTP root is the MAC with `:` in lower case (`b8:27:eb:28:f6:6d`), what
 *    `${ethaddr}` expands to on the board (seedMacDir).
 * 2. The parts are the *whole* image cut into consecutive pieces of 750 MiB (786 432 000 bytes,
 *    the last one shorter), named `rpi_image_part_0`, `rpi_image_part_1`, … — numbered from 0,
 *    one decimal digit (split's `-a 1`), so at most 10 parts (7.5 GiB of image). The board fetches
 *    them in order until one is missing.
 * 3. "The first 4 MiB skipped on the board": the first 4 MiB of the image hold its partition
 *    table, and the card keeps its own (it has an extra U-Boot partition in front). So the board
 *    writes part 0 from byte 4 MiB on and every later part whole; image byte X (X ≥ 4 MiB) lands
 *    at the card's own fixed offset for the image's first partition plus (X − 4 MiB). The agent
 *    serves part 0 whole anyway — the card expects that name to hold the image from byte 0 — and
 *    needs to know nothing about where on the card the bytes go.
 * 4. The board then uploads (`tftpput`) a 4-byte file named `OK` or `FAILED` into the same folder,
 *    holding the number of bytes it wrote to the card as a little-endian 32-bit integer. For a
 *    complete flash that is image size − 4 MiB. A 32-bit count cannot hold more than 4 GiB − 1:
 *    for larger images the board's counter wraps, so counts are compared modulo 2^32.
 *
 * Outcomes → stable codes (src/protocol/errors.ts):
 *   OK with the expected count            → OK
 *   OK with another count, or a report
 *     that is not 4 bytes                  → VERIFY_MISMATCH
 *   FAILED (any count; it says how far)    → BOARD_REPORTED_FAILURE
 *   no report before the deadline          → BOARD_NO_SHOW if part 0 was never fetched, else BOARD_TIMEOUT
 */
import { CodedError, type ErrorCode } from '../../../src/protocol/errors.js';
import { seedMacDir } from '../../../src/protocol/tftp-names.js';
import type { TftpRequest, TftpWriteTarget } from '../tftp/server.js';

/** The seed system's split size: `split --bytes=786432000`, 750 MiB. */
export const SEED_PART_BYTES = 750 * 1024 * 1024;
/** What the board skips of part 0 (the image's partition table area). */
export const SEED_SKIP_BYTES = 4 * 1024 * 1024;
/** `split -d -a 1`: one decimal digit of suffix. */
export const SEED_MAX_PARTS = 10;
/** The report: a 32-bit little-endian byte count. */
export const SEED_REPORT_BYTES = 4;
export const SEED_REPORT_NAMES = ['OK', 'FAILED'] as const;
export type SeedReportName = (typeof SEED_REPORT_NAMES)[number];

/** The folder the seed card looks in: the MAC with `:`. */
export function seedFolder(mac: string): string {
  return seedMacDir(mac);
}

export function seedPartName(index: number): string {
  if (!Number.isInteger(index) || index < 0 || index >= SEED_MAX_PARTS)
    throw new Error(`seed part index ${index} is outside 0–${SEED_MAX_PARTS - 1}`);
  return `rpi_image_part_${index}`;
}

export interface SeedPart {
  index: number;
  /** `rpi_image_part_<index>`, relative to the seed folder. */
  name: string;
  /** The part is image bytes [offset, offset + size). */
  offset: number;
  size: number;
  /** Of those, the bytes the board writes to its card (part 0 minus the skipped 4 MiB). */
  written: number;
}

export interface SeedPlan {
  imageSize: number;
  parts: SeedPart[];
  /** What an `OK` report must carry: image size − 4 MiB, modulo 2^32. */
  expectedCount: number;
  /** Bytes the board writes in all (image size − 4 MiB), before the 32-bit wrap. */
  writtenBytes: number;
}

/**
 * Cuts an image into the parts the seed card fetches. `partBytes` is for tests (QEMU writes
 * slowly, so they use small parts); a real seed card needs the default 750 MiB.
 */
export function planSeedParts(imageSize: number, o: { partBytes?: number } = {}): SeedPlan {
  const partBytes = o.partBytes ?? SEED_PART_BYTES;
  if (!Number.isSafeInteger(partBytes) || partBytes <= SEED_SKIP_BYTES || partBytes % 512 !== 0) {
    throw new Error(`seed part size ${partBytes} must be a multiple of 512 larger than ${SEED_SKIP_BYTES}`);
  }
  if (!Number.isSafeInteger(imageSize) || imageSize <= SEED_SKIP_BYTES) {
    throw new CodedError(
      'BAD_REQUEST',
      `a seed card skips the image's first ${SEED_SKIP_BYTES} bytes (its partition table), ` +
        `so an image of ${imageSize} bytes leaves nothing to write`,
    );
  }
  const count = Math.ceil(imageSize / partBytes);
  if (count > SEED_MAX_PARTS) {
    throw new CodedError(
      'IMAGE_TOO_LARGE',
      `a seed card takes at most ${SEED_MAX_PARTS} parts of ${partBytes} bytes ` +
        `(${SEED_MAX_PARTS * partBytes} bytes); the image has ${imageSize}`,
    );
  }
  const parts: SeedPart[] = [];
  for (let index = 0; index < count; index++) {
    const offset = index * partBytes;
    const size = Math.min(partBytes, imageSize - offset);
    parts.push({
      index,
      name: seedPartName(index),
      offset,
      size,
      written: index === 0 ? size - SEED_SKIP_BYTES : size,
    });
  }
  const writtenBytes = imageSize - SEED_SKIP_BYTES;
  return { imageSize, parts, writtenBytes, expectedCount: writtenBytes % 2 ** 32 };
}

export interface SeedReport {
  name: SeedReportName;
  /** The count, when the upload held exactly 4 bytes. */
  count?: number;
  /** The upload as received. */
  data: Buffer;
  peer: string;
  /** Arrival (epoch ms). */
  time: number;
}

/**
 * Collects the board's report: its `onWrite` is the staged job's write hook (BoardFiles'
 * StagedJob.onWrite). Only `OK` and `FAILED` directly in the seed folder are accepted, at most 4
 * bytes each (the TFTP server refuses a larger upload with "disk full"). The first report
 * counts; later ones (a board retrying its upload) are kept in `all` for the record.
 */
export class SeedReports {
  readonly all: SeedReport[] = [];
  private readonly waiters = new Set<(r: SeedReport) => void>();

  /** For StagedJob.onWrite: `relPath` is relative to the seed folder. */
  onWrite = (relPath: string, req: TftpRequest): TftpWriteTarget | null => {
    if (!(SEED_REPORT_NAMES as readonly string[]).includes(relPath)) return null;
    const name = relPath as SeedReportName;
    return {
      maxSize: SEED_REPORT_BYTES,
      // Recording a report takes no waiting; the promise is what the TFTP server's interface asks for.
      receive: (data) => {
        const report: SeedReport = {
          name,
          data: Buffer.from(data),
          peer: req.peer.address,
          time: Date.now(),
          ...(data.length === SEED_REPORT_BYTES ? { count: data.readUInt32LE(0) } : {}),
        };
        this.all.push(report);
        if (this.all.length === 1) for (const w of [...this.waiters]) w(report);
        return Promise.resolve();
      },
    };
  };

  get first(): SeedReport | undefined {
    return this.all[0];
  }

  /**
   * The first report: at once if it is there, else when it arrives; null when `timeoutMs` passes.
   * Rejects with `signal.reason` on abort.
   */
  wait(o: { timeoutMs: number; signal?: AbortSignal }): Promise<SeedReport | null> {
    o.signal?.throwIfAborted();
    if (this.first) return Promise.resolve(this.first);
    return new Promise((resolve, reject) => {
      const done = (settle: () => void) => {
        clearTimeout(timer);
        this.waiters.delete(onReport);
        o.signal?.removeEventListener('abort', onAbort);
        settle();
      };
      const onReport = (r: SeedReport) => done(() => resolve(r));
      const onAbort = () => done(() => reject(o.signal?.reason));
      const timer = setTimeout(() => done(() => resolve(null)), o.timeoutMs);
      this.waiters.add(onReport);
      o.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

export interface SeedOutcome {
  code: ErrorCode;
  message: string;
  /** The count the board reported, when it sent one. */
  reportedCount?: number;
}

/**
 * What a seed job's end means. `report` is the first report, or undefined when none came before
 * the deadline; `part0Fetched` tells a board that never started from one that stopped.
 */
export function interpretSeedResult(
  plan: SeedPlan,
  report: SeedReport | undefined,
  o: { part0Fetched: boolean; waitedMs?: number },
): SeedOutcome {
  if (!report) {
    const waited = o.waitedMs !== undefined ? ` within ${Math.round(o.waitedMs / 1000)} s` : '';
    return o.part0Fetched
      ? {
          code: 'BOARD_TIMEOUT',
          message: `the seed card fetched its image but uploaded no OK or FAILED report${waited}`,
        }
      : {
          code: 'BOARD_NO_SHOW',
          message:
            `the seed card never fetched ${seedPartName(0)}${waited} ` +
            '(is the board carrying the seed recovery card, and was it reset?)',
        };
  }
  if (report.count === undefined) {
    return {
      code: 'VERIFY_MISMATCH',
      message:
        `the seed card uploaded ${report.name} with ${report.data.length} ` +
        `byte${report.data.length === 1 ? '' : 's'}, not the ${SEED_REPORT_BYTES}-byte count it should hold`,
    };
  }
  const count = report.count;
  if (report.name === 'FAILED') {
    return {
      code: 'BOARD_REPORTED_FAILURE',
      message: `the seed card reported FAILED after writing ${count} of ${plan.writtenBytes} bytes`,
      reportedCount: count,
    };
  }
  if (count !== plan.expectedCount) {
    return {
      code: 'VERIFY_MISMATCH',
      message:
        `the seed card reported OK with ${count} bytes written, expected ${plan.expectedCount} ` +
        `(image of ${plan.imageSize} bytes less the skipped ${SEED_SKIP_BYTES})`,
      reportedCount: count,
    };
  }
  return {
    code: 'OK',
    message: `the seed card wrote ${plan.writtenBytes} bytes and reported OK`,
    reportedCount: count,
  };
}
