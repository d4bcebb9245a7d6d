/**
 * The agent's side of the parts it serves over TFTP to a board that writes them itself — stage 2's
 * U-Boot script (stage2-flash.ts) and the in-place update's switch script (ota.ts): how much of
 * each part's latest download the board acknowledged, whether it holds that download in full (from
 * then it may be writing the part, silent, and the card is no longer untouched), the transfer
 * progress events, the bytes on the wire and the rates in the job's log.
 *
 * One per job. The layout finds the part a TFTP callback names and hands it here; what the board's
 * reports mean stays the layout's.
 */
import { formatBytes } from '../../../src/protocol/units.js';
import type { TftpProgress, TftpRequest, TransferEnd } from '../tftp/server.js';
import type { BoardWatch } from './layout.js';

/** What the bookkeeping keeps on a layout's part. */
export interface ServedPart {
  index: number;
  /** Bytes the board writes: the part padded to whole sectors. */
  servedSize: number;
  /** Bytes it downloads for them: the gzip stream's size when compressed, else servedSize. */
  wireSize: number;
  /** Set when the part is served compressed (the log's rates say so). */
  zip?: object;
  /** Of the part's latest download: bytes the board acknowledged, and the bytes of one window. */
  acked: number;
  windowBytes: number;
  /** Downloads of the part started, and the one whose silent write the job was told of. */
  downloads: number;
  writingExpected?: number;
}

/** The fields a new part starts with. */
export const UNSERVED = { acked: 0, windowBytes: 0, downloads: 0 } as const;

/** Milliseconds between two transfer progress events. */
const PROGRESS_EVERY_MS = 250;

export class ServedParts<P extends ServedPart> {
  /** Bytes the board acknowledged of its part downloads, retries included. */
  wireBytes = 0;
  /** Of every part download: the bytes of those that completed, and the time all of them took. */
  readonly downloads = { completedBytes: 0, ms: 0 };
  /** The TFTP options negotiated for the last part served in full. */
  tftpOptions: Record<string, string> | undefined;
  private lastProgressEmit = 0;

  constructor(
    private readonly board: BoardWatch,
    private readonly o: {
      /** Every part of the job, in order (the progress events count bytes over all of them). */
      parts: () => readonly P[];
      /** `flash.cardWriteRate`: how long the slowest card takes to write and read back a part. */
      cardWriteRate: number;
      /** Called each time a download of `part` is held in full (the board may be writing it). */
      onHeldInFull?: (part: P) => void;
    },
  ) {}

  /** The board acknowledged the part's latest download in full (all but a lost last window). */
  heldInFull(part: P): boolean {
    return part.acked > 0 && part.acked >= part.wireSize - part.windowBytes;
  }

  /** A new download of the part: what counts is what the board acknowledges of this one. */
  downloadStarted(part: P, req: TftpRequest): void {
    part.acked = 0;
    part.downloads += 1;
    const asked = optionsText(req.options);
    this.board.log(
      'info',
      `part ${part.index}/${this.count}: download started${asked ? ` (board asked ${asked})` : ''}`,
    );
    this.board.activity();
  }

  progress(part: P, p: TftpProgress): void {
    part.acked = Math.max(part.acked, p.sent);
    part.windowBytes = p.windowBytes;
    // Neither U-Boot nor busybox resends a lost final ACK: holding all but the last window, the board may be writing.
    if (this.heldInFull(part)) this.expectWriting(part);
    this.board.activity();
    const now = Date.now();
    if (p.sent < p.size && now - this.lastProgressEmit < PROGRESS_EVERY_MS) return;
    this.lastProgressEmit = now;
    const parts = this.o.parts();
    const before = parts.filter((q) => q.index < part.index).reduce((s, q) => s + q.wireSize, 0);
    const total = parts.reduce((s, q) => s + q.wireSize, 0);
    this.board.progress({ phase: 'transfer', done: before + p.sent, total, part: part.index, parts: parts.length });
  }

  transferEnded(part: P, t: TransferEnd): void {
    this.wireBytes += t.bytes;
    this.downloads.ms += t.ms;
    if (t.ok) this.downloads.completedBytes += t.bytes;
    const negotiated = optionsText(t.options) || 'none (plain RFC 1350)';
    const which = `part ${part.index}/${this.count}`;
    if (t.ok) {
      part.acked = part.wireSize;
      this.expectWriting(part);
      this.tftpOptions = { ...t.options };
      const secsF = t.ms / 1000;
      const rate =
        t.ms <= 0
          ? ''
          : part.zip
            ? ` (${(t.bytes / 1e6 / secsF).toFixed(1)} MB/s gzip'd, ` +
              `${(part.servedSize / 1e6 / secsF).toFixed(1)} MB/s of the part's ${part.servedSize} bytes)`
            : ` (${(t.bytes / 1e6 / secsF).toFixed(1)} MB/s)`;
      const secs = (t.ms / 1000).toFixed(2);
      this.board.log('info', `${which}: served ${t.bytes} bytes in ${secs} s${rate}; negotiated ${negotiated}`);
    } else {
      const why = t.error ?? 'unknown error';
      this.board.log('warn', `${which}: transfer ended early after ${t.bytes} bytes: ${why}; negotiated ${negotiated}`);
    }
    this.board.activity();
  }

  private get count(): number {
    return this.o.parts().length;
  }

  /**
   * The board now checks, writes and reads back the part, silent until its report: that is no
   * stall as long as a card at `flash.cardWriteRate` would still be at it. Told once per download.
   */
  private expectWriting(part: P): void {
    this.o.onHeldInFull?.(part);
    if (part.writingExpected === part.downloads) return;
    part.writingExpected = part.downloads;
    const rate = this.o.cardWriteRate;
    this.board.busyFor(
      (2 * part.servedSize) / rate,
      `part ${part.index}/${this.count}: the board writes and reads back ${formatBytes(part.servedSize)} ` +
        `(at ${formatBytes(rate)}/s, the slowest card)`,
    );
  }
}

/** TFTP options as `name=value …`; empty when there are none. */
export function optionsText(options: Record<string, string>): string {
  return Object.entries(options)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}
