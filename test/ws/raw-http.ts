/**
 * Raw TCP for tests that speak broken HTTP on purpose: what a WebSocket library would never send.
 * `exchange` writes the bytes (all at once, or a few at a time) and collects whatever comes back
 * until the agent closes the connection or a deadline passes.
 */
import net from 'node:net';

export interface Exchange {
  /** Everything the agent sent, as latin1 (an HTTP status line and headers are ASCII). */
  reply: string;
  /** The agent closed (or reset) the connection before the deadline. */
  closed: boolean;
  /** Milliseconds from connect to the close, or to the deadline. */
  ms: number;
}

export function hostPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(u.port) };
}

/**
 * Connect, send `bytes` (in pieces of `pieceBytes` every `pieceMs` when given), then wait for the
 * agent to close, at most `deadlineMs` from the connect. Never throws for a reset connection.
 */
export function exchange(
  url: string,
  bytes: Buffer,
  o: { pieceBytes?: number; pieceMs?: number; deadlineMs?: number; endAfterSend?: boolean } = {},
): Promise<Exchange> {
  const { host, port } = hostPort(url);
  const deadlineMs = o.deadlineMs ?? 5000;
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = net.connect({ host, port });
    const chunks: Buffer[] = [];
    let pieceTimer: NodeJS.Timeout | undefined;
    const finish = (closed: boolean) => {
      clearTimeout(deadline);
      clearTimeout(pieceTimer);
      socket.destroy();
      resolve({ reply: Buffer.concat(chunks).toString('latin1'), closed, ms: Math.round(performance.now() - started) });
    };
    const deadline = setTimeout(() => finish(false), deadlineMs);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.on('error', () => {});
    socket.on('close', () => finish(true));
    socket.once('connect', () => {
      if (!o.pieceBytes) {
        socket.write(bytes);
        if (o.endAfterSend) socket.end();
        return;
      }
      let at = 0;
      const step = () => {
        if (socket.destroyed || at >= bytes.length) {
          if (o.endAfterSend && !socket.destroyed) socket.end();
          return;
        }
        socket.write(bytes.subarray(at, at + o.pieceBytes!));
        at += o.pieceBytes!;
        pieceTimer = setTimeout(step, o.pieceMs ?? 0);
      };
      step();
    });
  });
}

/** An HTTP/1.1 upgrade request for a WebSocket, with whatever request-target and headers the test wants. */
export function upgradeRequest(
  target: string,
  o: { method?: string; token?: string; headers?: Record<string, string> } = {},
): Buffer {
  const lines = [
    `${o.method ?? 'GET'} ${target} HTTP/1.1`,
    'Host: agent',
    'Upgrade: websocket',
    'Connection: Upgrade',
    'Sec-WebSocket-Version: 13',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    ...(o.token ? [`Authorization: Bearer ${o.token}`] : []),
    ...Object.entries(o.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
  ];
  return Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
}

/** The status code of the first HTTP status line in `reply`, or undefined. */
export function statusOf(reply: string): number | undefined {
  const m = /^HTTP\/1\.1 (\d{3})/.exec(reply);
  return m ? Number(m[1]) : undefined;
}
