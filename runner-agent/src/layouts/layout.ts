/**
 * A layout is how one job's image reaches a board's card: which files the agent serves, what the
 * board is told, which of the board's reports mean what, and what proves the card holds the image.
 * The job (jobs/flash-job.ts) owns the phases, the reset, the boot check, cancel, timers and the
 * record; it asks its layout for the rest through this one interface. Each layout is one file in
 * this folder and one line in registry.ts (docs/architecture.md has the recipe).
 */
import type { CardState, LogEvent, PartReport, ProgressEvent } from '../../../src/protocol/messages.js';
import type { ErrorCode } from '../../../src/protocol/errors.js';
import type { AgentConfig } from '../config.js';
import type { Logger } from '../log.js';
import type { BoardFiles } from '../staging/board-files.js';
import type { StoredImage } from '../store/image-store.js';
import type { MappedRange } from '../store/mapped-ranges.js';
import type { Target } from '../targets/database.js';

/** What a layout knows of its job. */
export interface LayoutJob {
  id: string;
  target: Target;
  image: StoredImage;
  config: AgentConfig;
  /** Seconds the board may take to show up after its reset, and to stay quiet mid-flash. */
  timeouts: { boardShow: number; stall: number };
  /** Where a layout stages the files the board fetches; it must unstage them in `unstage`. */
  files: BoardFiles;
  /**
   * The port the agent's TFTP server is bound to (the configured `tftp.port`, or the one the system
   * gave for port 0): what a layout that tells the board where to fetch from must name.
   */
  tftpPort: number;
  /** The CRC32 of each `partSize` part of the image as stored (computed once per image and size). */
  storedPartCrcs(partSize: number): Promise<number[]>;
  /** The image's mapped ranges: what the board writes unless `flash.writeZeros` (cached with the image). */
  mappedRanges(): Promise<MappedRange[]>;
  /** The agent's log with the job's fields, for what a layout runs beside the board (an NBD server). */
  log: Logger;
}

/** What the job lends its layout while the board works: its log, its clock and its way to fail. */
export interface BoardWatch {
  log(level: LogEvent['level'], message: string, source?: LogEvent['source']): void;
  progress(event: Omit<ProgressEvent, 'type' | 'job' | 're'>): void;
  /** The board did something: restarts the quiet timer and wakes a pending `until`. */
  activity(): void;
  /**
   * The board will work in silence for up to `seconds` from now (writing and reading back a part):
   * the quiet timer starts only after that. `what` says why, in the job's log.
   */
  busyFor(seconds: number, what: string): void;
  /**
   * Resolves once `ready()` holds (checked after each `activity()` and every second); rejects with
   * `onQuiet()` when the board stays quiet for `quietSeconds` (beyond any `busyFor`), or with the
   * job's reason on cancel.
   */
  until(ready: () => boolean, quietSeconds: number, onQuiet: () => Error): Promise<void>;
  /** Ends the job at once with a code (a report that settles it, e.g. a card too small). */
  fail(code: ErrorCode, message: string): void;
  /** The board says it is done writing: from here on its console is the new system's. */
  flashDone(): void;
  /** Never show this text (a secret the board holds) in the job's log or console lines. */
  redact(secret: string): void;
}

/** One job's flash, as a layout runs it. Called in this order; `unstage` always, whatever failed. */
export interface FlashMethod {
  /** Make the board's files visible (never copying the image) and prepare what it is told. */
  stage(): Promise<void>;
  /** After the reset: follow the board's reports until it says it is done (or fails). */
  watch(): Promise<void>;
  /** Throw a CodedError unless the board's reports prove the card holds the image. */
  verify(): void;
  /** What the job result says of the card, at any point (also after a failure). */
  outcome(): FlashOutcome;
  /** Remove every file staged for this job. */
  unstage(): Promise<void>;
}

export interface FlashOutcome {
  card: CardState;
  /** Bytes the board wrote and verified (what it claimed, for a layout whose board only counts). */
  bytesWritten: number;
  /** Bytes the board was to write, and the bytes sent it for them (retries included). */
  mappedBytes?: number;
  wireBytes?: number;
  parts: PartReport[];
  /** The TFTP options negotiated for the last part served. */
  tftpOptions?: Record<string, string>;
}

export type Layout = (job: LayoutJob, board: BoardWatch) => FlashMethod;
