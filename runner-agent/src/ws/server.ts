/**
 * The agent's WebSocket endpoint: authentication at the HTTP upgrade (no WebSocket exists for a
 * client without the token), the versioned hello, heartbeats both ways, and framing. What the
 * messages mean is the AgentService's business; this module only moves them.
 *
 * Nothing a peer sends may stop the agent: every handler on a socket catches its own failures and
 * answers or drops that peer only, an HTTP request must be complete within a headers timeout (a
 * slow sender is dropped), and what a client can make the agent buffer is bounded (read-gate.ts).
 */
import http from 'node:http';
import https from 'node:https';
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import { CodedError, codeOf, messageOf } from '../../../src/protocol/errors.js';
import { parseClientMessage } from '../../../src/protocol/guards.js';
import {
  DEFAULT_CHUNK_SIZE,
  MAX_PAYLOAD_MARGIN,
  PROTOCOL_VERSION,
  WS_PATH,
  type AgentMessage,
  type ClientMessage,
} from '../../../src/protocol/messages.js';
import type { Logger } from '../log.js';
import { ReadGate } from './read-gate.js';

export const AGENT_VERSION = '0.1.0';

/** Unread replies one client may leave queued before the agent stops reading from it (listen.maxSendBuffer). */
export const DEFAULT_MAX_SEND_BUFFER = 8 * 1024 * 1024;
/** How long a new connection may take to send its whole HTTP request head. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
/** Request-targets are the peer's text: this much of one goes into a log line. */
const LOGGED_TARGET_CHARS = 200;

/** What the service sees of one client connection. */
export interface ClientConnection {
  readonly id: string;
  readonly remote: string;
  readonly client: string;
  send(message: AgentMessage): void;
  /** Bytes queued in the socket, for senders that want to pace themselves. */
  bufferedAmount(): number;
  /** Stop reading from the client until resume(): backpressure for work the handler queued. */
  pause(): void;
  resume(): void;
  close(code?: number, reason?: string): void;
}

export interface ConnectionHandler {
  onMessage(conn: ClientConnection, message: ClientMessage): void | Promise<void>;
  onBinary(conn: ClientConnection, data: Buffer): void;
  /** `silent` is true when the agent hung up because the client stopped answering heartbeats. */
  onClose(conn: ClientConnection, silent: boolean): void;
}

export interface WsServerOptions {
  host: string;
  port: number;
  tls?: { cert: string; key: string };
  token: string;
  log: Logger;
  handler: ConnectionHandler;
  /** A client that sends nothing and answers no ping for this long is cut off. */
  graceMs: number;
  /** The agent's name told in `welcome` (config `name`). */
  agentName?: string;
  chunkSize?: number;
  /** Unread bytes queued for one client past which reading from it stops; twice this drops it. */
  maxSendBuffer?: number;
  /** A connection whose HTTP request head is not complete after this long is answered 408 and dropped. */
  headersTimeoutMs?: number;
  /** Plain HTTP requests (not upgrades) by path: the dashboard, /metrics. None = every request is refused. */
  routes?: (path: string) => HttpRoute | undefined;
}

/**
 * One plain-HTTP endpoint beside the WebSocket. The server checks what every route needs the same
 * way — a parsable path, an allowed method, a bounded body read whole before `handle` runs — and
 * answers 400/404/405/413/500 itself; authentication is the route's (tokenMatches, bearerToken).
 */
export interface HttpRoute {
  /** The methods answered (HEAD is answered wherever GET is); any other gets 405 with Allow. */
  methods: ReadonlyArray<'GET' | 'POST'>;
  /** The largest request body accepted, in bytes; 0 (the default) refuses any body. */
  maxBody?: number;
  handle(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): void | Promise<void>;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Constant-time token check: compare fixed-length digests so length differences leak nothing. */
export function tokenMatches(presented: string | undefined, expected: string): boolean {
  if (presented === undefined) return false;
  return timingSafeEqual(digest(presented), digest(expected));
}

/** The token of an `Authorization: Bearer <token>` header. */
export function bearerToken(header: string | undefined): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m?.[1];
}

/** The path of a request-target; undefined for one `new URL()` cannot parse (`//[`, `//a:b`). */
export function requestPath(target: string | undefined): string | undefined {
  try {
    return new URL(target ?? '/', 'http://agent').pathname;
  } catch {
    return undefined;
  }
}

function logged(text: string): string {
  return text.length > LOGGED_TARGET_CHARS ? `${text.slice(0, LOGGED_TARGET_CHARS)}… (${text.length} chars)` : text;
}

function stackOf(err: unknown): string {
  return (err instanceof Error ? err.stack : undefined) ?? String(err);
}

function httpAnswer(status: number, reason: string, body: string): string {
  const head = [`HTTP/1.1 ${status} ${reason}`, 'Connection: close', 'Content-Type: text/plain'];
  return `${[...head, `Content-Length: ${Buffer.byteLength(body)}`].join('\r\n')}\r\n\r\n${body}`;
}

function refuse(socket: Duplex, status: number, reason: string, body: string): void {
  if (socket.writable) socket.end(httpAnswer(status, reason, body));
  else socket.destroy();
}

/** What the agent answers HTTP it cannot parse (Node's clientError), by the parser's error code. */
function clientErrorAnswer(code: string | undefined, headersTimeoutMs: number): string {
  if (code === 'HPE_HEADER_OVERFLOW')
    return httpAnswer(431, 'Request Header Fields Too Large', 'BAD_REQUEST: request headers too large\n');
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT')
    return httpAnswer(
      408,
      'Request Timeout',
      `BAD_REQUEST: request headers not complete within ${headersTimeoutMs / 1000} s\n`,
    );
  return httpAnswer(400, 'Bad Request', 'BAD_REQUEST: malformed HTTP request\n');
}

/** A short text/plain answer. */
export function plain(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'X-Content-Type-Options': 'nosniff',
  });
  res.end(text);
}

/** The whole request body, or undefined when it is (or announces itself) larger than `max` bytes. */
async function readBody(req: http.IncomingMessage, max: number): Promise<Buffer | undefined> {
  const announced = Number(req.headers['content-length'] ?? 0);
  if (!(announced <= max)) return undefined;
  if (announced === 0 && req.headers['transfer-encoding'] === undefined) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

let connectionCounter = 0;

export class WsServer {
  private readonly server: http.Server | https.Server;
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<WebSocket>();
  /** Every TCP connection, whatever state it is in: close() leaves none behind to hold the listener open. */
  private readonly connections = new Set<Duplex>();
  private heartbeat?: NodeJS.Timeout;

  static async create(o: WsServerOptions): Promise<WsServer> {
    const tls = o.tls ? { cert: await readFile(o.tls.cert), key: await readFile(o.tls.key) } : undefined;
    return new WsServer(o, tls);
  }

  private constructor(
    private readonly o: WsServerOptions,
    tls: { cert: Buffer; key: Buffer } | undefined,
  ) {
    const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const headersTimeout = o.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS;
    // Node checks the headers timeout every connectionsCheckingInterval (30 s by default): check
    // often enough that a slow-loris connection goes close to its deadline.
    const http1 = {
      headersTimeout,
      requestTimeout: Math.max(headersTimeout, 60_000),
      connectionsCheckingInterval: Math.min(1000, headersTimeout / 2),
    };
    this.server = tls ? https.createServer({ ...tls, ...http1 }) : http.createServer(http1);
    this.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.request(req, res).catch((err: unknown) => {
        o.log.error('HTTP request failed', { path: logged(req.url ?? ''), error: stackOf(err) });
        if (!res.headersSent) plain(res, 500, 'INTERNAL: the agent could not answer this request\n');
        else res.destroy();
      });
    });
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      // HTTP the parser refuses (garbage, headers too large, too slow): answer that peer and drop it.
      socket.on('error', () => {});
      const code = err.code;
      if (code === 'ECONNRESET' || code === 'EPIPE') return socket.destroy();
      o.log.warn('bad HTTP request refused', { code, error: logged(err.message) });
      if (socket.writable) socket.write(clientErrorAnswer(code, headersTimeout));
      socket.destroy();
    });
    this.server.on('connection', (socket: Duplex) => {
      this.connections.add(socket);
      socket.once('close', () => this.connections.delete(socket));
    });
    // Accept can fail (EMFILE); the listener's error must not become an uncaught exception.
    this.server.on('error', (err) => o.log.error('listener error', { error: stackOf(err) }));
    this.wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: chunkSize + MAX_PAYLOAD_MARGIN,
    });
    this.server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
      // From 'upgrade' on Node no longer listens for the socket's errors: until ws owns it (or the
      // refusal is written), a reset by the peer would be an uncaught 'error'.
      socket.on('error', (err) => o.log.debug('upgrade connection error', { remote, error: err.message }));
      try {
        this.upgrade(req, socket, head, remote, chunkSize);
      } catch (err) {
        o.log.error('upgrade failed', { remote, error: stackOf(err) });
        socket.destroy();
      }
    });
  }

  /** A plain HTTP request: the route table's, or refused. */
  private async request(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    req.on('error', () => {});
    const path = requestPath(req.url);
    if (path === undefined) return plain(res, 400, 'BAD_REQUEST: the request-target is not a valid path\n');
    const route = this.o.routes?.(path);
    if (!route) {
      if (path === WS_PATH) {
        res.writeHead(426, { 'Content-Type': 'text/plain', Upgrade: 'websocket' });
        res.end(`rpi-flash agent ${AGENT_VERSION}: connect with a WebSocket to ${WS_PATH}\n`);
        return;
      }
      return plain(res, 404, `nothing at ${logged(path)}\n`);
    }
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    if (!route.methods.some((m) => m === method)) {
      res.setHeader('Allow', [...route.methods, ...(route.methods.includes('GET') ? ['HEAD'] : [])].join(', '));
      return plain(res, 405, `${req.method} is not allowed here\n`);
    }
    const body = await readBody(req, route.maxBody ?? 0);
    if (body === undefined) {
      // The rest of an oversized body is not read: the connection goes with the answer.
      res.setHeader('Connection', 'close');
      plain(res, 413, `BAD_REQUEST: the body is larger than the ${route.maxBody ?? 0} bytes allowed here\n`);
      req.socket.end();
      return;
    }
    await route.handle(req, res, body);
  }

  private upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer, remote: string, chunkSize: number): void {
    const { log } = this.o;
    const path = requestPath(req.url);
    if (path === undefined) {
      log.warn('upgrade refused: malformed request-target', { remote, target: logged(req.url ?? '') });
      return refuse(socket, 400, 'Bad Request', 'BAD_REQUEST: the request-target is not a valid path\n');
    }
    if (path !== WS_PATH) {
      log.warn('upgrade refused: unknown path', { remote, path: logged(path) });
      return refuse(socket, 404, 'Not Found', `no WebSocket endpoint at ${logged(path)}; use ${WS_PATH}\n`);
    }
    if (!tokenMatches(bearerToken(req.headers.authorization), this.o.token)) {
      log.warn('upgrade refused: bad or missing token', { remote });
      return refuse(socket, 401, 'Unauthorized', 'AUTH_FAILED: missing or wrong token\n');
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      try {
        this.accept(ws, remote, chunkSize);
      } catch (err) {
        log.error('cannot set up the connection', { remote, error: stackOf(err) });
        ws.terminate();
      }
    });
  }

  async listen(): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.o.port, this.o.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const interval = Math.max(200, Math.min(10_000, this.o.graceMs / 3));
    this.heartbeat = setInterval(() => this.beat(), interval);
    this.heartbeat.unref();
    return this.server.address() as AddressInfo;
  }

  private readonly lastSeen = new WeakMap<WebSocket, number>();
  private readonly silent = new WeakSet<WebSocket>();
  private readonly gates = new WeakMap<WebSocket, ReadGate>();

  private beat(): void {
    const now = Date.now();
    for (const ws of this.sockets) {
      // Not reading because the agent's own writes lag (an upload) is not the client's silence.
      if (this.gates.get(ws)?.has('handler')) this.lastSeen.set(ws, now);
      if (now - (this.lastSeen.get(ws) ?? now) > this.o.graceMs) {
        this.silent.add(ws);
        ws.terminate();
      } else if (ws.readyState === WebSocket.OPEN) {
        ws.ping();
      }
    }
  }

  private accept(ws: WebSocket, remote: string, chunkSize: number): void {
    const id = `c${++connectionCounter}`;
    const log = this.o.log.child({ conn: id });
    const seen = () => this.lastSeen.set(ws, Date.now());
    const gate = new ReadGate(ws, this.o.maxSendBuffer ?? DEFAULT_MAX_SEND_BUFFER, log.child({ remote }), seen);
    this.sockets.add(ws);
    this.gates.set(ws, gate);
    seen();
    let hello = false;
    let clientName = 'unknown';
    const conn: ClientConnection = {
      id,
      remote,
      get client() {
        return clientName;
      },
      send: (message) => {
        if (ws.readyState === WebSocket.OPEN) gate.send(JSON.stringify(message));
      },
      bufferedAmount: () => ws.bufferedAmount,
      pause: () => gate.hold('handler'),
      resume: () => gate.release('handler'),
      close: (code = 1000, reason = '') => ws.close(code, reason),
    };
    ws.on('pong', seen);
    ws.on('ping', seen);
    const helloTimer = setTimeout(() => {
      if (!hello) {
        conn.send({ type: 'error', code: 'BAD_MESSAGE', message: 'no hello within 10 s', fatal: true });
        ws.close(1002, 'no hello');
      }
    }, 10_000);

    /** A request the handler failed: the client gets the code; anything uncoded is logged with its stack. */
    const answerFailure = (err: unknown, type: string, re: string) => {
      const e = err instanceof CodedError ? err : new CodedError('INTERNAL', messageOf(err));
      if (e.code === 'INTERNAL') log.error('request failed', { type, error: stackOf(err) });
      conn.send({ type: 'error', re, code: e.code, message: e.message });
    };

    const onText = (text: string) => {
      let message: ClientMessage;
      try {
        message = parseClientMessage(text);
      } catch (err) {
        const e = err instanceof CodedError ? err : new CodedError('BAD_MESSAGE', messageOf(err));
        log.warn('bad message from client', { code: e.code, error: e.message });
        // A garbage frame before the handshake is fatal; after it, the client is told and may go on.
        if (!hello) return this.fatal(conn, ws, e);
        return conn.send({ type: 'error', code: e.code, message: e.message });
      }
      if (!hello) {
        if (message.type !== 'hello')
          return this.fatal(
            conn,
            ws,
            new CodedError('BAD_MESSAGE', `the first message must be "hello", got "${message.type}"`),
            message.id,
          );
        if (message.protocol !== PROTOCOL_VERSION) {
          return this.fatal(
            conn,
            ws,
            new CodedError(
              'PROTOCOL_VERSION_MISMATCH',
              `client speaks protocol version ${message.protocol}, this agent (${AGENT_VERSION}) speaks version ` +
                `${PROTOCOL_VERSION}; update the ${message.protocol < PROTOCOL_VERSION ? 'action' : 'agent'}`,
            ),
            message.id,
          );
        }
        hello = true;
        clearTimeout(helloTimer);
        clientName = message.client ?? 'unknown';
        log.info('client connected', { remote, client: clientName });
        conn.send({
          type: 'welcome',
          re: message.id,
          protocol: PROTOCOL_VERSION,
          agent: AGENT_VERSION,
          ...(this.o.agentName ? { name: this.o.agentName } : {}),
          chunkSize,
          maxPayload: chunkSize + MAX_PAYLOAD_MARGIN,
        });
        return;
      }
      if (message.type === 'hello')
        return conn.send({ type: 'error', re: message.id, code: 'BAD_REQUEST', message: 'hello was already done' });
      // A handler that throws before its first await fails its request like one that rejects.
      let handled: void | Promise<void>;
      try {
        handled = this.o.handler.onMessage(conn, message);
      } catch (err) {
        return answerFailure(err, message.type, message.id);
      }
      Promise.resolve(handled).catch((err: unknown) => answerFailure(err, message.type, message.id));
    };

    ws.on('message', (data: RawData, isBinary: boolean) => {
      seen();
      try {
        const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
        if (!isBinary) return onText(buf.toString('utf8'));
        if (!hello) return this.fatal(conn, ws, new CodedError('BAD_MESSAGE', 'binary data before hello'));
        this.o.handler.onBinary(conn, buf);
      } catch (err) {
        // A frame nothing else caught: this client is dropped, the agent goes on.
        log.error('frame handling failed; connection dropped', { remote, binary: isBinary, error: stackOf(err) });
        conn.send({ type: 'error', code: codeOf(err), message: messageOf(err), fatal: true });
        ws.terminate();
      }
    });
    ws.on('error', (err) => log.warn('websocket error', { error: err.message }));
    ws.on('close', (code) => {
      clearTimeout(helloTimer);
      gate.close();
      this.sockets.delete(ws);
      const silent = this.silent.has(ws);
      log.info(silent ? 'client went silent; connection dropped' : 'client disconnected', { code });
      try {
        if (hello) this.o.handler.onClose(conn, silent);
      } catch (err) {
        log.error('cleanup after a disconnect failed', { error: stackOf(err) });
      }
    });
  }

  private fatal(conn: ClientConnection, ws: WebSocket, err: CodedError, re?: string): void {
    conn.send({ type: 'error', ...(re ? { re } : {}), code: err.code, message: err.message, fatal: true });
    ws.close(1008, err.code);
  }

  /** Stop accepting connections. */
  stopListening(): void {
    this.server.close();
  }

  /** Cut every live connection (wss.close() alone leaves them open) and close the listener. */
  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const ws of this.sockets) {
      ws.close(1001, 'agent stopping');
    }
    await new Promise((r) => setTimeout(r, 50));
    for (const ws of this.sockets) ws.terminate();
    this.wss.close();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections?.();
      // Upgrades still in progress or refused ones a peer left half-open are not HTTP connections
      // any more: closeAllConnections() does not see them.
      for (const socket of this.connections) socket.destroy();
    });
  }
}
