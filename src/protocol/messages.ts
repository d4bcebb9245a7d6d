/**
 * The WebSocket protocol between the action (client) and the runner agent (DESIGN §3.6).
 *
 * Text frames carry one JSON message each. Binary frames carry upload bytes: each binary frame is
 * appended to the client's current upload, in order. Every request has a client-chosen `id`;
 * every answer and event about a request carries it back as `re`.
 *
 * Sequence of one job:
 *   hello → welcome
 *   lease → queued* → leased
 *   upload-begin → upload-ready{offset} → binary frames… → upload-end → upload-done
 *     (upload-begin answers upload-done{skipped:true} at once when the agent holds that sha256)
 *   flash → log* / progress* / phase* → result
 *   cancel (any time after lease) → result{code: CANCELLED}
 * The lab's operator (`rpi-flash-agent board`), on a connection of its own:
 *   hello → welcome → board{target, action} → board-status
 * After a lost connection the client resumes with `lease{lease}` and sends its flash again, since it
 * cannot know whether the first one arrived. When it did, the job runs on: the agent answers
 *   flash → job-running{flash} → the job's log* / progress* / phase* → result, all with re = flash
 * and starts no second job.
 * Errors come as `error{re, code, message}`; a fatal one is followed by the agent closing the socket.
 */
import type { ErrorCode } from './errors.js';

/**
 * Bumped on any incompatible change. The hello exchange refuses a mismatch naming both versions.
 * 2: a repeated flash on a lease whose job runs is answered with `job-running` (1 answered it with
 * error BAD_REQUEST, which a client had to read as "still running"); a client of version 1 would
 * not read the new message and wait for a result that never comes for its request.
 */
export const PROTOCOL_VERSION = 2;

/** Path of the WebSocket endpoint on the agent. */
export const WS_PATH = '/v1/ws';

/** Upload chunk size the agent advertises (and the client uses); `maxPayload` is this plus margin. */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
export const MAX_PAYLOAD_MARGIN = 64 * 1024;

export type Compression = 'none' | 'gz' | 'xz' | 'zst';
export const COMPRESSIONS: readonly Compression[] = ['none', 'gz', 'xz', 'zst'];

/** The phases of a job, in order. Phase names are shown as log groups by the action. */
export const PHASES = ['queue', 'upload', 'stage', 'reset', 'transfer', 'verify', 'boot'] as const;
export type Phase = (typeof PHASES)[number];

/** A board's state as the agent keeps it (runner-agent/src/lab/board-states.ts). */
export type BoardStateName = 'idle' | 'leased' | 'flashing' | 'booting' | 'unhealthy' | 'maintenance';

export interface BoardStatusInfo {
  name: string;
  state: BoardStateName;
  /** Milliseconds since the epoch when the board entered `state`. */
  since: number;
  reason?: string;
  /** Jobs in a row that failed for the board's own reasons. */
  consecutiveFailures: number;
  lastHealth?: { at: number; ok: boolean; code?: string };
}

export interface TargetInfo {
  name: string;
  mac: string;
  ip: string;
  model?: string;
}

// ---- client → agent -------------------------------------------------------------------------

export interface HelloRequest {
  type: 'hello';
  id: string;
  protocol: number;
  /** Free text for the agent's log, e.g. "rpi-flash-action/0.1.0 (owner/repo#123)". */
  client?: string;
}

export interface LeaseRequest {
  type: 'lease';
  id: string;
  /**
   * Name, MAC or IP from the agent's targets database, or `label:<label>`: the first free healthy
   * board whose `labels` cell has it (`leased.target` says which).
   */
  target: string;
  /** Who holds the lease, for the agent's log and for others waiting (e.g. "owner/repo run 42"). */
  holder?: string;
  /** Re-claim a lease after a reconnect (the id from an earlier `leased`). */
  lease?: string;
}

export interface UploadBeginRequest {
  type: 'upload-begin';
  id: string;
  /** sha256 (hex, lower case) of the bytes on the wire — the compressed file when compressed. */
  sha256: string;
  /** Bytes on the wire. */
  size: number;
  compression: Compression;
  /** Size after decompression, when the client knows it (used for the disk-space check). */
  imageSize?: number;
  /** The image's file name, for logs only. */
  name?: string;
}

export interface UploadEndRequest {
  type: 'upload-end';
  id: string;
}

/**
 * What a job does with the image: `flash` writes it to the board's card (the target's layout);
 * `netboot` boots the board from it over the network (kernel over TFTP, root over NBD) and writes nothing.
 */
export const JOB_METHODS = ['flash', 'netboot'] as const;
export type JobMethod = (typeof JOB_METHODS)[number];

export interface FlashRequest {
  type: 'flash';
  id: string;
  /** The image to flash: the sha256 of an upload that ended with `upload-done`. */
  sha256: string;
  /** `tcp:<port>`, `tcp:<host>:<port>` or `none`; the agent's default when absent. */
  bootCheck?: string;
  /** Per-job timeouts in seconds, each optional: the agent's defaults otherwise. */
  timeouts?: Partial<Record<'boardShow' | 'stall' | 'boot', number>>;
  /**
   * The image's block map (bmaptool's XML, at most BMAP_MAX_BYTES): the board writes its ranges
   * once the agent has checked them against the image. Absent: the agent derives the ranges.
   */
  bmap?: string;
  /** Write every byte of the image, zeros included; absent: the agent's `flash.writeZeros`. */
  writeZeros?: boolean;
  /** Absent: `flash`. */
  method?: JobMethod;
}

/** The largest block map a `flash` request may carry: some 5000 ranges with their sha256. */
export const BMAP_MAX_BYTES = 512 * 1024;

export interface CancelRequest {
  type: 'cancel';
  id: string;
  /** Cancel this lease (and its job) from another connection, e.g. the action's post step. */
  lease?: string;
  reason?: string;
}

/** What an operator may do to a board (`rpi-flash-agent board TARGET ACTION`). */
export const BOARD_ACTIONS = ['status', 'maintenance', 'resume', 'health'] as const;
export type BoardAction = (typeof BOARD_ACTIONS)[number];

/**
 * The lab operator's request: `status` (no target: every board), `maintenance` (refuse new jobs;
 * a running one finishes), `resume` (back to idle from maintenance or unhealthy), `health` (run a
 * health check now and answer when it ends).
 */
export interface BoardRequest {
  type: 'board';
  id: string;
  action: BoardAction;
  /** Name, MAC or IP; absent only for `status`. */
  target?: string;
  /** Why, for the board's status and the log (maintenance). */
  reason?: string;
}

export type ClientMessage =
  HelloRequest | LeaseRequest | UploadBeginRequest | UploadEndRequest | FlashRequest | CancelRequest | BoardRequest;

// ---- agent → client -------------------------------------------------------------------------

export interface WelcomeMessage {
  type: 'welcome';
  re: string;
  protocol: number;
  /** The agent's version. */
  agent: string;
  /** The agent's name (config `name`, default its host name): which agent runs the jobs. */
  name?: string;
  chunkSize: number;
  maxPayload: number;
}

export interface QueuedMessage {
  type: 'queued';
  re: string;
  /** 1 = next in line. */
  position: number;
  /** Who holds the target now, when known. */
  holder?: string;
}

export interface LeasedMessage {
  type: 'leased';
  re: string;
  lease: string;
  /** The board leased: for a `label:` request, the one the agent picked. */
  target: TargetInfo;
  /** The agent's name (as in `welcome`). */
  agent?: string;
}

export interface UploadReadyMessage {
  type: 'upload-ready';
  re: string;
  /** Bytes of this sha256 the agent already holds: the client sends from here on. */
  offset: number;
}

export interface UploadProgressMessage {
  type: 'upload-progress';
  re: string;
  /** Bytes the agent has written to disk so far. */
  received: number;
}

export interface UploadDoneMessage {
  type: 'upload-done';
  re: string;
  sha256: string;
  /** Bytes on the wire. */
  size: number;
  /** Bytes of the stored (decompressed) image. */
  imageSize: number;
  /** True when the agent already held this image and no bytes were sent. */
  skipped: boolean;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface LogEvent {
  type: 'log';
  re: string;
  job: string;
  level: LogLevel;
  /** `agent` for the agent's own lines, `board` for what the board reported, `console` for a serial console. */
  source: 'agent' | 'board' | 'console';
  phase?: Phase;
  message: string;
  /** Milliseconds since the epoch. */
  time: number;
}

export interface PhaseEvent {
  type: 'phase';
  re: string;
  job: string;
  phase: Phase;
  state: 'start' | 'end';
  /** On `end`: seconds spent in the phase. */
  seconds?: number;
}

export interface ProgressEvent {
  type: 'progress';
  re: string;
  job: string;
  phase: Phase;
  /** Bytes (or items) done and the total, when known. */
  done: number;
  total?: number;
  /** For `transfer`: the 1-based part number and how many parts there are. */
  part?: number;
  parts?: number;
}

export interface PartReport {
  part: number;
  offset: number;
  size: number;
  crc32: string;
  /** What the board reported: `ok` after write and read-back verified, else what failed. */
  status: 'ok' | 'failed' | 'missing';
  retries: number;
}

export type CardState = 'untouched' | 'partial' | 'written';

export interface JobResult {
  ok: boolean;
  code: ErrorCode;
  message: string;
  job: string;
  target: TargetInfo;
  sha256: string;
  /** What the job did with the image; absent from agents before network boot (they only flash). */
  method?: JobMethod;
  /** The image's size as stored (decompressed); absent from agents before the mapped writes. */
  imageSize?: number;
  /** Bytes the board was to write: the image's mapped ranges (all of it with write-zeros), when the layout knows. */
  mappedBytes?: number;
  /** Bytes the agent sent the board for its parts, retries included, when the layout knows. */
  wireBytes?: number;
  bytesWritten: number;
  /**
   * What the board's card holds now: `untouched` (nothing was written), `partial` (some of the
   * image: the board may not boot until it is flashed again) or `written` (all of it, verified).
   */
  card: CardState;
  /** Seconds per phase that ran. */
  timings: Partial<Record<Phase, number>>;
  parts: PartReport[];
  /** TFTP options the board negotiated, when seen (blksize, windowsize, tsize). */
  tftpOptions?: Record<string, string>;
}

export interface ResultMessage extends JobResult {
  type: 'result';
  re: string;
}

/**
 * Answer to a `flash` on a lease whose job is already running or being set up: a client that lost its
 * connection sends its flash again after the resume, and the first one may have arrived. No second
 * job starts; the running one goes on, and its events and its `result` keep coming with `re` = `flash`.
 */
export interface JobRunningMessage {
  type: 'job-running';
  /** The repeated `flash` request this answers. */
  re: string;
  /** The `id` of the flash request that started the job: the `re` of its events and its result. */
  flash: string;
  /** The job's id; absent while the job is still being set up (its first event names it). */
  job?: string;
}

/** Answer to `cancel` when the lease had no running job (a running job answers with its `result`). */
export interface ReleasedMessage {
  type: 'released';
  re: string;
  lease: string;
}

/** Answer to `board`: the board's status after the action (every board's for `status` without a target). */
export interface BoardStatusMessage {
  type: 'board-status';
  re: string;
  boards: BoardStatusInfo[];
  /** For `health`: the check's result. */
  health?: { ok: boolean; code: ErrorCode; message: string };
}

export interface ErrorMessage {
  type: 'error';
  /** The request this answers, when there is one. */
  re?: string;
  code: ErrorCode;
  message: string;
  /** True when the agent closes the connection after this message. */
  fatal?: boolean;
}

export type AgentMessage =
  | WelcomeMessage
  | QueuedMessage
  | LeasedMessage
  | UploadReadyMessage
  | UploadProgressMessage
  | UploadDoneMessage
  | LogEvent
  | PhaseEvent
  | ProgressEvent
  | JobRunningMessage
  | ResultMessage
  | ReleasedMessage
  | BoardStatusMessage
  | ErrorMessage;

export const SHA256_PATTERN = /^[0-9a-f]{64}$/;
