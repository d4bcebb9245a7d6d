/**
 * The agent's WebSocket endpoint: authentication at the HTTP upgrade (no WebSocket exists for a
 * client without the token), the versioned hello, heartbeats both ways, and framing. What the
 * messages mean is the AgentService's business; this module only moves them.
 */
import http from 'node:http';
import https from 'node:https';
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import { CodedError } from '../../../src/protocol/errors.js';
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

export const AGENT_VERSION = '0.1.0';

/** What the service sees of one client connection. */
export interface ClientConnection {
  readonly id: string;
  readonly remote: string;
  readonly client: string;
  send(message: AgentMessage): void;
  /** Bytes queued in the socket, for senders that want to pace themselves. */
  bufferedAmount(): number;
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
  chunkSize?: number;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Constant-time token check: compare fixed-length digests so length differences leak nothing. */
export function tokenMatches(presented: string | undefined, expected: string): boolean {
  if (presented === undefined) return false;
  return timingSafeEqual(digest(presented), digest(expected));
}

function bearer(header: string | undefined): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m?.[1];
}

function refuse(socket: Duplex, status: number, reason: string, body: string): void {
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

let connectionCounter = 0;

export class WsServer {
  private readonly server: http.Server | https.Server;
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<WebSocket>();
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
    this.server = tls ? https.createServer(tls) : http.createServer();
    this.server.on('request', (_req, res) => {
      res.writeHead(426, { 'Content-Type': 'text/plain', Upgrade: 'websocket' });
      res.end(`rpi-flash agent ${AGENT_VERSION}: connect with a WebSocket to ${WS_PATH}\n`);
    });
    this.wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: chunkSize + MAX_PAYLOAD_MARGIN,
    });
    this.server.on('upgrade', (req, socket, head) => {
      const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
      const url = new URL(req.url ?? '/', 'http://agent');
      if (url.pathname !== WS_PATH) {
        o.log.warn('upgrade refused: unknown path', { remote, path: url.pathname });
        return refuse(socket, 404, 'Not Found', `no WebSocket endpoint at ${url.pathname}; use ${WS_PATH}\n`);
      }
      if (!tokenMatches(bearer(req.headers.authorization), o.token)) {
        o.log.warn('upgrade refused: bad or missing token', { remote });
        return refuse(socket, 401, 'Unauthorized', 'AUTH_FAILED: missing or wrong token\n');
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, remote, chunkSize));
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

  private beat(): void {
    const now = Date.now();
    for (const ws of this.sockets) {
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
    this.sockets.add(ws);
    this.lastSeen.set(ws, Date.now());
    let hello = false;
    let clientName = 'unknown';
    const conn: ClientConnection = {
      id,
      remote,
      get client() {
        return clientName;
      },
      send: (message) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
      },
      bufferedAmount: () => ws.bufferedAmount,
      close: (code = 1000, reason = '') => ws.close(code, reason),
    };
    const seen = () => this.lastSeen.set(ws, Date.now());
    ws.on('pong', seen);
    ws.on('ping', seen);
    const helloTimer = setTimeout(() => {
      if (!hello) {
        conn.send({ type: 'error', code: 'BAD_MESSAGE', message: 'no hello within 10 s', fatal: true });
        ws.close(1002, 'no hello');
      }
    }, 10_000);
    ws.on('message', (data: RawData, isBinary: boolean) => {
      seen();
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      if (isBinary) {
        if (!hello) return this.fatal(conn, ws, new CodedError('BAD_MESSAGE', 'binary data before hello'));
        this.o.handler.onBinary(conn, buf);
        return;
      }
      let message: ClientMessage;
      try {
        message = parseClientMessage(buf.toString('utf8'));
      } catch (err) {
        const e = err instanceof CodedError ? err : new CodedError('BAD_MESSAGE', String(err));
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
              `client speaks protocol version ${message.protocol}, this agent (${AGENT_VERSION}) speaks version ${PROTOCOL_VERSION}; update the ${message.protocol < PROTOCOL_VERSION ? 'action' : 'agent'}`,
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
          chunkSize,
          maxPayload: chunkSize + MAX_PAYLOAD_MARGIN,
        });
        return;
      }
      if (message.type === 'hello')
        return conn.send({ type: 'error', re: message.id, code: 'BAD_REQUEST', message: 'hello was already done' });
      Promise.resolve(this.o.handler.onMessage(conn, message)).catch((err: unknown) => {
        const e = err instanceof CodedError ? err : new CodedError('INTERNAL', (err as Error)?.message ?? String(err));
        if (e.code === 'INTERNAL')
          log.error('request failed', { type: message.type, error: (err as Error)?.stack ?? String(err) });
        conn.send({ type: 'error', re: message.id, code: e.code, message: e.message });
      });
    });
    ws.on('error', (err) => log.warn('websocket error', { error: err.message }));
    ws.on('close', (code) => {
      clearTimeout(helloTimer);
      this.sockets.delete(ws);
      const silent = this.silent.has(ws);
      log.info(silent ? 'client went silent; connection dropped' : 'client disconnected', { code });
      if (hello) this.o.handler.onClose(conn, silent);
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
    });
  }
}
