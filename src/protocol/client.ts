/**
 * The client side of the agent protocol (DESIGN §3.6), used by the action, the demo and the tests.
 *
 * It offers the protocol's requests as promises and hands every event to `onEvent`. It does not
 * retry: reconnecting and resuming is the caller's policy (the action reconnects with backoff and
 * resumes the upload from the offset the agent reports).
 */
import { open } from 'node:fs/promises';
import WebSocket from 'ws';
import { CodedError, isErrorCode } from './errors.js';
import { parseAgentMessage } from './guards.js';
import {
  DEFAULT_CHUNK_SIZE,
  PROTOCOL_VERSION,
  WS_PATH,
  type AgentMessage,
  type ClientMessage,
  type Compression,
  type FlashRequest,
  type JobResult,
  type LeasedMessage,
  type UploadDoneMessage,
} from './messages.js';

/** The connection broke (network, agent restart): the caller may reconnect and resume. */
export class ConnectionLostError extends Error {
  readonly code = 'CONNECTION_LOST';
  constructor(message: string) {
    super(message);
    this.name = 'ConnectionLostError';
  }
}

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

interface Pending {
  resolve: (m: AgentMessage) => void;
  reject: (e: unknown) => void;
  /** Decides whether a message ends the request (true) or is an intermediate event (false). */
  final: (m: AgentMessage) => boolean;
}

let requestCounter = 0;
const nextId = () => `r${++requestCounter}`;

export function endpointUrl(base: string): string {
  const url = new URL(base);
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:')
    throw new Error(`agent URL must start with ws:// or wss://, got ${url.protocol}//`);
  if (url.pathname === '/' || url.pathname === '') url.pathname = WS_PATH;
  return url.toString();
}

export class AgentConnection {
  private readonly pending = new Map<string, Pending>();
  private closedError?: Error;
  private heartbeat?: NodeJS.Timeout;
  private lastSeen = Date.now();
  /** Set by the agent's welcome. */
  chunkSize = DEFAULT_CHUNK_SIZE;
  agentVersion = '';
  /** Bytes the agent confirmed written, per upload request. */
  private readonly uploadAcks = new Map<string, { received: number; wake?: () => void }>();

  private constructor(
    private readonly ws: WebSocket,
    private readonly o: ConnectOptions,
  ) {
    ws.on('message', (data, isBinary) => this.onFrame(data as Buffer, isBinary));
    ws.on('pong', () => (this.lastSeen = Date.now()));
    ws.on('close', (code, reason) =>
      this.onClosed(
        new ConnectionLostError(
          `connection to the agent closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`,
        ),
      ),
    );
    ws.on('error', (err) => this.onClosed(new ConnectionLostError(`connection to the agent failed: ${err.message}`)));
    const silenceMs = o.silenceMs ?? 45_000;
    this.heartbeat = setInterval(
      () => {
        if (Date.now() - this.lastSeen > silenceMs) {
          this.onClosed(new ConnectionLostError(`the agent answered no ping for ${Math.round(silenceMs / 1000)} s`));
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
          else fail(new ConnectionLostError(`the agent answered HTTP ${res.statusCode} at ${url}: ${body.trim()}`));
        });
      });
      ws.once('error', (err) => fail(new ConnectionLostError(`cannot connect to the agent at ${url}: ${err.message}`)));
    });
    const conn = new AgentConnection(ws, o);
    const welcome = await conn.request(
      { type: 'hello', id: nextId(), protocol: PROTOCOL_VERSION, client: o.client ?? 'rpi-flash-client' },
      (m) => m.type === 'welcome',
    );
    if (welcome.type === 'welcome') {
      conn.chunkSize = welcome.chunkSize;
      conn.agentVersion = welcome.agent;
    }
    return conn;
  }

  private onFrame(data: Buffer, isBinary: boolean): void {
    this.lastSeen = Date.now();
    if (isBinary) return;
    let m: AgentMessage;
    try {
      m = parseAgentMessage(data.toString('utf8'));
    } catch {
      return;
    }
    if (m.type === 'upload-progress') {
      const ack = this.uploadAcks.get(m.re);
      if (ack) {
        ack.received = m.received;
        ack.wake?.();
      }
    }
    const re = 're' in m ? m.re : undefined;
    const p = re ? this.pending.get(re) : undefined;
    if (m.type === 'error' && (!p || m.fatal) && !re) {
      // An error about no particular request: fail everything still waiting.
      this.o.onEvent?.(m);
      for (const [id, q] of this.pending) {
        this.pending.delete(id);
        q.reject(new CodedError(isErrorCode(m.code) ? m.code : 'INTERNAL', m.message));
      }
      return;
    }
    this.o.onEvent?.(m);
    if (!p || !re) return;
    if (m.type === 'error') {
      this.pending.delete(re);
      p.reject(new CodedError(isErrorCode(m.code) ? m.code : 'INTERNAL', m.message));
      this.uploadAcks.get(re)?.wake?.();
    } else if (p.final(m)) {
      this.pending.delete(re);
      p.resolve(m);
    }
  }

  private onClosed(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    clearInterval(this.heartbeat);
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(err);
    }
    for (const ack of this.uploadAcks.values()) ack.wake?.();
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  private send(message: ClientMessage): void {
    if (this.closedError) throw this.closedError;
    this.ws.send(JSON.stringify(message));
  }

  private request(message: ClientMessage, final: (m: AgentMessage) => boolean): Promise<AgentMessage> {
    return new Promise<AgentMessage>((resolve, reject) => {
      if (this.closedError) return reject(this.closedError);
      this.pending.set(message.id, { resolve, reject, final });
      try {
        this.send(message);
      } catch (err) {
        this.pending.delete(message.id);
        reject(err);
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
      (x) => x.type === 'leased',
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
    const begin = nextId();
    const first = await this.request(
      {
        type: 'upload-begin',
        id: begin,
        sha256: o.sha256,
        size: o.size,
        compression: o.compression,
        ...(o.imageSize ? { imageSize: o.imageSize } : {}),
        ...(o.name ? { name: o.name } : {}),
      },
      (m) => m.type === 'upload-ready' || m.type === 'upload-done',
    );
    if (first.type === 'upload-done') return first;
    if (first.type !== 'upload-ready') throw new Error(`unexpected answer ${first.type}`);
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
    // Errors about this upload (e.g. NO_SPACE mid-way) arrive as `error{re: begin}`.
    let uploadError: unknown;
    let sendError: ConnectionLostError | undefined;
    this.pending.set(begin, {
      resolve: () => {},
      reject: (e) => {
        uploadError = e;
        wake();
      },
      final: () => false,
    });
    const failure = (): unknown => this.closedError ?? uploadError ?? sendError;
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
          throw new Error(`${o.path} changed while uploading (short read at ${at + bytesRead})`);
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
        const sending = block;
        const start = sending.sent;
        const length = Math.min(chunkSize, sending.length - start);
        sending.sent += length;
        sending.unconfirmed++;
        this.ws.send(sending.buf.subarray(start, start + length), { binary: true }, (err) => {
          if (err) sendError ??= new ConnectionLostError(`sending to the agent failed: ${err.message}`);
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
    const done = await this.request({ type: 'upload-end', id: nextId() }, (m) => m.type === 'upload-done');
    o.onProgress?.(o.size, o.size);
    return done as UploadDoneMessage;
  }

  /** Flash a held image; resolves with the job's result (events go to onEvent meanwhile). */
  async flash(o: Omit<FlashRequest, 'type' | 'id'>): Promise<JobResult> {
    const m = await this.request({ type: 'flash', id: nextId(), ...o }, (x) => x.type === 'result');
    if (m.type !== 'result') throw new Error(`unexpected answer ${m.type}`);
    const { type: _type, re: _re, ...result } = m;
    return result;
  }

  /** Cancel this connection's lease or job (or another lease by id, from a new connection). */
  async cancel(o: { lease?: string; reason?: string } = {}): Promise<void> {
    await this.request({ type: 'cancel', id: nextId(), ...o }, (m) => m.type === 'released');
  }

  close(): void {
    clearInterval(this.heartbeat);
    this.onClosed(new ConnectionLostError('connection closed by the client'));
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000);
    setTimeout(() => this.ws.terminate(), 1000).unref();
  }
}

export const connectAgent = (o: ConnectOptions) => AgentConnection.connect(o);
