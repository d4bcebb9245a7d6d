/**
 * The client side of the agent protocol (DESIGN §3.6), used by the action, the demo and the tests.
 *
 * It offers the protocol's requests as promises and hands every event to `onEvent`. It does not
 * retry: reconnecting and resuming is the caller's policy (the action reconnects with backoff and
 * resumes the upload from the offset the agent reports).
 *
 * Every failure is a `CodedError`: CONNECTION_LOST when the socket goes (the caller may resume),
 * the agent's own code for its `error` answers, PROTOCOL_ERROR for an answer this client cannot read.
 */
import { open } from 'node:fs/promises';
import WebSocket from 'ws';
import { CodedError, isErrorCode, messageOf } from './errors.js';
import { parseAgentMessage, UnreadableAgentMessage } from './guards.js';
import {
  DEFAULT_CHUNK_SIZE,
  PROTOCOL_VERSION,
  WS_PATH,
  type AgentMessage,
  type BoardAction,
  type BoardStatusMessage,
  type ClientMessage,
  type Compression,
  type FlashRequest,
  type ErrorMessage,
  type JobResult,
  type LeasedMessage,
  type ResultMessage,
  type UploadDoneMessage,
  type WelcomeMessage,
} from './messages.js';

/** The connection broke (network, agent restart): the caller may reconnect and resume. */
const connectionLost = (message: string) => new CodedError('CONNECTION_LOST', message);

export interface ConnectOptions {
  /** ws:// or wss:// base URL of the agent; the protocol path is appended when absent. */
  url: string;
  token: string;
  /** Extra CA certificate (PEM) for an agent with a private TLS certificate. */
  ca?: string | Buffer;
  /** Free text for the agent's log. */
  client?: string;
  connectTimeoutMs?: number;
  /** Every message from the agent, after the request it answers saw it. */
  onEvent?: (message: AgentMessage) => void;
  /** Lines worth a human's eye, e.g. an agent message this client cannot read; stderr by default. */
  log?: (line: string) => void;
  /** Hang up when the agent answers no ping for this long. */
  silenceMs?: number;
}

export interface UploadOptions {
  path: string;
  sha256: string;
  size: number;
  compression: Compression;
  imageSize?: number;
  name?: string;
  /** Bytes the agent holds so far (called as acknowledgements arrive). */
  onProgress?: (received: number, total: number) => void;
  /** Max bytes sent but not yet acknowledged as written by the agent. */
  windowBytes?: number;
}

type AgentType = AgentMessage['type'];

/** An upload's brake: `reason` once stopped, and what wakes the upload to see it. */
interface UploadStop {
  reason?: CodedError;
  wake: () => void;
}

/** The answers a request expects, besides `error`: any other type about it is protocol drift. */
interface Expected {
  /** Types that end the request. */
  final: readonly AgentType[];
  /** Types that come while it is open. */
  events?: readonly AgentType[];
}

interface Pending extends Expected {
  /** What the request was, for messages about it. */
  type: ClientMessage['type'];
  resolve: (m: AgentMessage) => void;
  reject: (e: CodedError) => void;
}

const JOB_EVENTS: readonly AgentType[] = ['log', 'phase', 'progress'];
/** How much of an unreadable message goes into the log. */
const SHOWN_TEXT = 300;

let requestCounter = 0;
const nextId = () => `r${++requestCounter}`;

/** An agent's `error` answer as a thrown error; a code outside the table (a newer agent's) reads as INTERNAL. */
function agentError(m: ErrorMessage): CodedError {
  return new CodedError(isErrorCode(m.code) ? m.code : 'INTERNAL', m.message);
}

export function endpointUrl(base: string): string {
  const url = new URL(base);
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:')
    throw new CodedError('INPUT_INVALID', `agent URL must start with ws:// or wss://, got ${url.protocol}//`);
  if (url.pathname === '/' || url.pathname === '') url.pathname = WS_PATH;
  return url.toString();
}

export class AgentConnection {
  private readonly pending = new Map<string, Pending>();
  private closedError?: CodedError;
  private heartbeat?: NodeJS.Timeout;
  private readonly log: (line: string) => void;
  private markClosed!: (reason: CodedError) => void;
  /**
   * Settles once, when the connection ends for any reason (socket closed or failed, the agent silent,
   * or `close()`), with why: a CONNECTION_LOST error. It resolves rather than rejects, so nobody
   * has to listen to it.
   */
  readonly closed = new Promise<CodedError>((resolve) => (this.markClosed = resolve));
  private lastSeen = Date.now();
  /** Set by the agent's welcome. */
  chunkSize = DEFAULT_CHUNK_SIZE;
  agentVersion = '';
  /** The agent's name (config `name`, its host name by default); empty for an agent that does not say. */
  agentName = '';
  /** Bytes the agent confirmed written, per upload request. */
  private readonly uploadAcks = new Map<string, { received: number; wake?: () => void }>();
  /** Each upload in progress on this connection, for `cancel()` to stop before it sends. */
  private readonly uploadStops = new Set<UploadStop>();

  private constructor(
    private readonly ws: WebSocket,
    private readonly o: ConnectOptions,
  ) {
    this.log = o.log ?? ((line) => process.stderr.write(`${line}\n`));
    ws.on('message', (data, isBinary) => this.onFrame(data as Buffer, isBinary));
    ws.on('pong', () => (this.lastSeen = Date.now()));
    ws.on('close', (code, reason) =>
      this.onClosed(
        connectionLost(`connection to the agent closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`),
      ),
    );
    ws.on('error', (err) => this.onClosed(connectionLost(`connection to the agent failed: ${err.message}`)));
    const silenceMs = o.silenceMs ?? 45_000;
    this.heartbeat = setInterval(
      () => {
        if (Date.now() - this.lastSeen > silenceMs) {
          this.onClosed(connectionLost(`the agent answered no ping for ${Math.round(silenceMs / 1000)} s`));
          ws.terminate();
        } else if (ws.readyState === WebSocket.OPEN) ws.ping();
      },
      Math.max(100, Math.min(15_000, silenceMs / 3)),
    );
    this.heartbeat.unref();
  }

  /** Open the WebSocket (token at the upgrade) and do the versioned hello. */
  static async connect(o: ConnectOptions): Promise<AgentConnection> {
    const url = endpointUrl(o.url);
    const ws = new WebSocket(url, {
      headers: { Authorization: `Bearer ${o.token}` },
      perMessageDeflate: false,
      handshakeTimeout: o.connectTimeoutMs ?? 15_000,
      maxPayload: 16 * 1024 * 1024,
      ...(o.ca ? { ca: o.ca } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error) => {
        ws.removeAllListeners();
        ws.on('error', () => {});
        ws.terminate();
        reject(err);
      };
      ws.once('open', () => {
        ws.removeAllListeners();
        resolve();
      });
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => {
          if (res.statusCode === 401)
            fail(new CodedError('AUTH_FAILED', `the agent refused the token (HTTP 401): ${body.trim()}`));
          else fail(connectionLost(`the agent answered HTTP ${res.statusCode} at ${url}: ${body.trim()}`));
        });
      });
      ws.once('error', (err) => fail(connectionLost(`cannot connect to the agent at ${url}: ${err.message}`)));
    });
    const conn = new AgentConnection(ws, o);
    let welcome: WelcomeMessage;
    try {
      welcome = (await conn.request(
        { type: 'hello', id: nextId(), protocol: PROTOCOL_VERSION, client: o.client ?? 'rpi-flash-client' },
        { final: ['welcome'] },
      )) as WelcomeMessage;
    } catch (err) {
      // Nobody gets this connection: an agent that answered the hello badly must not keep it open.
      conn.close();
      throw err;
    }
    conn.chunkSize = welcome.chunkSize;
    conn.agentVersion = welcome.agent;
    conn.agentName = welcome.name ?? '';
    return conn;
  }

  private onFrame(data: Buffer, isBinary: boolean): void {
    this.lastSeen = Date.now();
    // The agent sends no binary frames: one is as unreadable as a text frame of another version.
    if (isBinary) return this.onUnreadable(`${data.length} bytes`, 'a binary frame', undefined);
    const text = data.toString('utf8');
    let m: AgentMessage;
    try {
      m = parseAgentMessage(text);
    } catch (err) {
      const shown = text.length > SHOWN_TEXT ? `${text.slice(0, SHOWN_TEXT)}… (${text.length} characters)` : text;
      return this.onUnreadable(shown, messageOf(err), err instanceof UnreadableAgentMessage ? err.re : undefined);
    }
    if (m.type === 'upload-progress') {
      const ack = this.uploadAcks.get(m.re);
      if (ack) {
        ack.received = m.received;
        ack.wake?.();
      }
    }
    this.o.onEvent?.(m);
    if (m.re === undefined) {
      // An error about no particular request: fail everything still waiting.
      if (m.type === 'error') this.failAll(agentError(m));
      return;
    }
    const p = this.pending.get(m.re);
    if (!p) return;
    if (m.type === 'error') {
      this.settle(m.re, p).reject(agentError(m));
    } else if (p.final.includes(m.type)) {
      this.settle(m.re, p).resolve(m);
    } else if (m.type === 'job-running' && p.type === 'flash') {
      // The job this flash asks for already runs: from now on this request waits for that job's
      // result, which comes with the first flash's id.
      this.pending.delete(m.re);
      this.pending.set(m.flash, p);
    } else if (!p.events?.includes(m.type)) {
      this.settle(m.re, p).reject(
        new CodedError(
          'PROTOCOL_ERROR',
          `the agent answered a "${p.type}" request with "${m.type}", which does not answer it: ` +
            'the agent and this client speak different versions of the protocol',
        ),
      );
    }
  }

  /**
   * A frame that does not parse is logged, never silently dropped. It fails the request it names,
   * which would otherwise wait for an answer that came and was not understood; one that names no
   * request fails them all (its answer may be any of them), and one about a request no longer open
   * fails nothing.
   */
  private onUnreadable(shown: string, why: string, re: string | undefined): void {
    this.log(`unreadable message from the agent (${why}): ${shown}`);
    const failure = new CodedError(
      'PROTOCOL_ERROR',
      `the agent sent a message this client cannot read (${why}): ` +
        'the agent and this client speak different versions of the protocol',
    );
    if (re === undefined) return this.failAll(failure);
    const p = this.pending.get(re);
    if (p) this.settle(re, p).reject(failure);
  }

  /** Takes the request off the open list, to resolve or reject it. */
  private settle(id: string, p: Pending): Pending {
    this.pending.delete(id);
    return p;
  }

  private failAll(err: CodedError): void {
    for (const [id, p] of this.pending) this.settle(id, p).reject(err);
  }

  private onClosed(err: CodedError): void {
    if (this.closedError) return;
    this.closedError = err;
    clearInterval(this.heartbeat);
    this.failAll(err);
    for (const ack of this.uploadAcks.values()) ack.wake?.();
    this.markClosed(err);
  }

  /** True once the connection ended (`closed` has settled). */
  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  private send(message: ClientMessage): void {
    if (this.closedError) throw this.closedError;
    this.ws.send(JSON.stringify(message));
  }

  private request(message: ClientMessage, expected: Expected): Promise<AgentMessage> {
    return new Promise<AgentMessage>((resolve, reject) => {
      if (this.closedError) return reject(this.closedError);
      this.pending.set(message.id, { ...expected, type: message.type, resolve, reject });
      try {
        this.send(message);
      } catch (err) {
        this.pending.delete(message.id);
        reject(err instanceof CodedError ? err : connectionLost(`sending to the agent failed: ${messageOf(err)}`));
      }
    });
  }

  /** Lease a target; resolves once granted (queued events go to onEvent meanwhile). */
  async lease(target: string, o: { holder?: string; lease?: string } = {}): Promise<LeasedMessage> {
    const m = await this.request(
      {
        type: 'lease',
        id: nextId(),
        target,
        ...(o.holder ? { holder: o.holder } : {}),
        ...(o.lease ? { lease: o.lease } : {}),
      },
      { final: ['leased'], events: ['queued'] },
    );
    return m as LeasedMessage;
  }

  /**
   * Upload a file, resuming from what the agent already holds, with flow control: never more than
   * `windowBytes` beyond what the agent wrote, and never more than a few chunks in the socket.
   *
   * The file is read in blocks of several chunks, one block ahead of the one being sent, into a
   * small pool of reused buffers: a fresh buffer per chunk cost a fifth of the client's time in GC,
   * and one read per chunk left the socket idle during each read. A buffer goes back to the pool
   * only when the send callbacks of all its chunks fired, since `ws` may still hold a slice until
   * then. The loop sleeps until something it waits for happens (an ack, a send completing, an error,
   * the connection closing) rather than polling, which left the socket drained for most of each poll.
   */
  async upload(o: UploadOptions): Promise<UploadDoneMessage> {
    // A cancel on this connection stops the upload at once, even before the agent answered the begin:
    // a chunk sent after the cancel would only queue ahead of the next message and be refused.
    const stop: UploadStop = { wake: () => {} };
    this.uploadStops.add(stop);
    try {
      return await this.uploadFile(o, stop);
    } finally {
      this.uploadStops.delete(stop);
    }
  }

  private async uploadFile(o: UploadOptions, stop: UploadStop): Promise<UploadDoneMessage> {
    const begin = nextId();
    const asked = this.request(
      {
        type: 'upload-begin',
        id: begin,
        sha256: o.sha256,
        size: o.size,
        compression: o.compression,
        ...(o.imageSize ? { imageSize: o.imageSize } : {}),
        ...(o.name ? { name: o.name } : {}),
      },
      { final: ['upload-ready', 'upload-done'] },
    );
    // A function, not an inline check: cancel() sets the reason while this method awaits.
    const throwIfStopped = () => {
      if (stop.reason) throw stop.reason;
    };
    const first = await new Promise<AgentMessage>((resolve, reject) => {
      // cancel() sets the reason before it wakes the upload.
      stop.wake = () => {
        if (stop.reason) reject(stop.reason);
      };
      asked.then(resolve, reject);
    });
    throwIfStopped();
    if (first.type === 'upload-done') return first;
    if (first.type !== 'upload-ready') throw new CodedError('INTERNAL', `not an expected answer: ${first.type}`);
    const windowBytes = o.windowBytes ?? 16 * 1024 * 1024;
    const chunkSize = this.chunkSize;
    const maxBufferedBytes = 4 * chunkSize;
    // 4 MiB reads: a quarter of the round trips to the thread pool, still small next to the window.
    const blockSize = chunkSize * Math.max(1, Math.floor((4 * 1024 * 1024) / chunkSize));
    // One block being sent, one read ahead, one whose last chunks may still sit in the socket.
    const poolSize = 3;

    // The loop's single sleeper, woken by anything that may let it continue.
    let sleeper: (() => void) | undefined;
    const wake = () => {
      const resolve = sleeper;
      sleeper = undefined;
      resolve?.();
    };
    const ack = { received: first.offset, wake };
    this.uploadAcks.set(begin, ack);
    stop.wake = wake;
    // Errors about this upload (e.g. NO_SPACE mid-way) arrive as `error{re: begin}`.
    let uploadError: CodedError | undefined;
    let sendError: CodedError | undefined;
    this.pending.set(begin, {
      type: 'upload-begin',
      final: [],
      events: ['upload-progress'],
      resolve: () => {},
      reject: (e) => {
        uploadError = e;
        wake();
      },
    });
    const failure = (): CodedError | undefined => stop.reason ?? this.closedError ?? uploadError ?? sendError;
    const waitUntil = async (ready: () => boolean): Promise<void> => {
      for (;;) {
        const err = failure();
        if (err) throw err;
        if (ready()) return;
        await new Promise<void>((resolve) => (sleeper = resolve));
      }
    };

    interface Block {
      buf: Buffer;
      /** File offset of buf[0]. */
      at: number;
      length: number;
      /** Bytes handed to `ws.send` so far. */
      sent: number;
      /** Sends whose callback has not fired yet. */
      unconfirmed: number;
    }
    const freeBuffers: Buffer[] = [];
    let buffersMade = 0;
    const bufferAvailable = () => freeBuffers.length > 0 || buffersMade < poolSize;
    const takeBuffer = (): Buffer => freeBuffers.pop() ?? (buffersMade++, Buffer.allocUnsafe(blockSize));

    const file = await open(o.path, 'r');
    let nextReadAt = first.offset;
    const readNextBlock = (): Promise<Block> => {
      const buf = takeBuffer();
      const at = nextReadAt;
      const length = Math.min(blockSize, o.size - at);
      nextReadAt += length;
      const read = file.read(buf, 0, length, at).then(({ bytesRead }): Block => {
        if (bytesRead !== length)
          throw new CodedError('IMAGE_INVALID', `${o.path} changed while uploading (short read at ${at + bytesRead})`);
        return { buf, at, length, sent: 0, unconfirmed: 0 };
      });
      // Awaited later, or dropped when the loop fails first: never an unhandled rejection.
      read.catch(() => {});
      return read;
    };
    let readAhead: Promise<Block> | undefined;
    try {
      let offset = first.offset;
      o.onProgress?.(offset, o.size);
      let block: Block | undefined;
      while (offset < o.size) {
        if (!block || block.sent === block.length) {
          if (!readAhead) {
            await waitUntil(bufferAvailable);
            readAhead = readNextBlock();
          }
          block = await readAhead;
          readAhead = undefined;
        }
        if (!readAhead && nextReadAt < o.size && bufferAvailable()) readAhead = readNextBlock();
        await waitUntil(() => offset - ack.received <= windowBytes && this.ws.bufferedAmount <= maxBufferedBytes);
        // Checked again right before the send: a cancel may have come between the wake-up and here.
        throwIfStopped();
        const sending = block;
        const start = sending.sent;
        const length = Math.min(chunkSize, sending.length - start);
        sending.sent += length;
        sending.unconfirmed++;
        this.ws.send(sending.buf.subarray(start, start + length), { binary: true }, (err) => {
          if (err) sendError ??= connectionLost(`sending to the agent failed: ${err.message}`);
          if (--sending.unconfirmed === 0 && sending.sent === sending.length) freeBuffers.push(sending.buf);
          wake();
        });
        offset += length;
        o.onProgress?.(ack.received, o.size);
      }
    } finally {
      // A read still in flight must end before its file handle closes.
      await readAhead?.catch(() => {});
      await file.close();
      this.pending.delete(begin);
      this.uploadAcks.delete(begin);
    }
    if (uploadError) throw uploadError;
    const done = await this.request({ type: 'upload-end', id: nextId() }, { final: ['upload-done'] });
    o.onProgress?.(o.size, o.size);
    return done as UploadDoneMessage;
  }

  /**
   * Flash a held image; resolves with the job's result (events go to onEvent meanwhile). Sent again
   * after a resume, it resolves with the result of the job the first one started, if that job runs
   * (the agent answers `job-running`, also given to onEvent).
   */
  async flash(o: Omit<FlashRequest, 'type' | 'id'>): Promise<JobResult> {
    const m = (await this.request(
      { type: 'flash', id: nextId(), ...o },
      { final: ['result'], events: [...JOB_EVENTS, 'job-running'] },
    )) as ResultMessage;
    // The result without its envelope, which callers have no use for.
    const result: JobResult & Partial<Pick<ResultMessage, 'type' | 're'>> = { ...m };
    delete result.type;
    delete result.re;
    return result;
  }

  /**
   * Cancel this connection's lease or job (or another lease by id, from a new connection). Any upload
   * on this connection stops first, before a chunk more is sent: the cancel then waits behind only
   * what the socket already holds, and the agent, which drops the upload, gets no chunk after it.
   */
  async cancel(o: { lease?: string; reason?: string } = {}): Promise<void> {
    const stopped = new CodedError('CANCELLED', `the upload stopped: cancelled${o.reason ? ` (${o.reason})` : ''}`);
    for (const stop of this.uploadStops) {
      stop.reason ??= stopped;
      stop.wake();
    }
    await this.request({ type: 'cancel', id: nextId(), ...o }, { final: ['released'] });
  }

  /**
   * The lab operator's request on a board (`rpi-flash-agent board`): its status after the action.
   * `health` resolves when the check ends, which may take as long as a job.
   */
  async board(o: { action: BoardAction; target?: string; reason?: string }): Promise<BoardStatusMessage> {
    const m = await this.request({ type: 'board', id: nextId(), ...o }, { final: ['board-status'] });
    return m as BoardStatusMessage;
  }

  close(): void {
    clearInterval(this.heartbeat);
    this.onClosed(connectionLost('connection closed by the client'));
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000);
    setTimeout(() => this.ws.terminate(), 1000).unref();
  }
}

export const connectAgent = (o: ConnectOptions) => AgentConnection.connect(o);
