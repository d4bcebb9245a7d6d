import { afterEach, describe, expect, it, vi } from 'vitest';
import * as crypto from 'node:crypto';
import WebSocket from 'ws';
import {
  WsServer,
  tokenMatches,
  type ClientConnection,
  type ConnectionHandler,
} from '../../runner-agent/src/ws/server.js';
import { silentLogger } from '../../runner-agent/src/log.js';
import { PROTOCOL_VERSION, WS_PATH, type AgentMessage, type ClientMessage } from '../../src/protocol/messages.js';
import { connectAgent } from '../../src/protocol/client.js';
import { waitUntil } from '../support/wait.js';

const token = 'token-for-the-ws-server-tests';

// The real timingSafeEqual, watched: the token test checks what the agent hands it.
vi.mock('node:crypto', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:crypto')>();
  return { ...real, timingSafeEqual: vi.fn(real.timingSafeEqual) };
});

class RecordingHandler implements ConnectionHandler {
  messages: ClientMessage[] = [];
  binary: Buffer[] = [];
  closes: boolean[] = [];
  onMessage(conn: ClientConnection, m: ClientMessage) {
    this.messages.push(m);
    if (m.type === 'lease')
      conn.send({
        type: 'leased',
        re: m.id,
        lease: 'l1',
        target: { name: m.target, mac: 'aa:bb:cc:dd:ee:ff', ip: '127.0.0.1' },
      });
  }
  onBinary(_conn: ClientConnection, data: Buffer) {
    this.binary.push(data);
  }
  onClose(_conn: ClientConnection, silent: boolean) {
    this.closes.push(silent);
  }
}

let server: WsServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function start(handler: ConnectionHandler, graceMs = 60_000) {
  server = await WsServer.create({ host: '127.0.0.1', port: 0, token, log: silentLogger, handler, graceMs });
  const addr = await server.listen();
  return `ws://127.0.0.1:${addr.port}`;
}

function openRaw(
  url: string,
  headers: Record<string, string>,
): Promise<{ ws?: WebSocket; status?: number; body?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url}${WS_PATH}`, { headers });
    ws.once('open', () => resolve({ ws }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    ws.once('error', () => {});
  });
}

function nextMessage(ws: WebSocket): Promise<AgentMessage> {
  return new Promise((resolve) =>
    ws.once('message', (d) => resolve(JSON.parse((d as Buffer).toString()) as AgentMessage)),
  );
}

describe('agent WebSocket server', () => {
  it('compares tokens in constant time: timingSafeEqual over SHA-256 digests, whatever the length', () => {
    const compare = vi.mocked(crypto.timingSafeEqual);
    const sha = (text: string) => crypto.createHash('sha256').update(text).digest();
    // A length check or an early exit on the first differing byte would tell an attacker how
    // much of a guess is right; every guess must go through one compare of two 32-byte digests.
    const guesses: Array<[string, boolean]> = [
      [token, true],
      ['', false],
      ['t', false],
      [token.slice(0, -1), false],
      [token + 'x', false],
      ['X' + token.slice(1), false],
      [token.slice(0, -1) + 'X', false],
      [token.repeat(40), false],
    ];
    for (const [guess, expected] of guesses) {
      compare.mockClear();
      expect(tokenMatches(guess, token), JSON.stringify(guess)).toBe(expected);
      expect(compare, JSON.stringify(guess)).toHaveBeenCalledTimes(1);
      const [a, b] = compare.mock.calls[0]! as [Buffer, Buffer];
      expect([a.length, b.length]).toEqual([32, 32]);
      expect(a.equals(sha(guess))).toBe(true);
      expect(b.equals(sha(token))).toBe(true);
      expect(compare).toHaveReturnedWith(expected);
    }
    // No token at all (no Authorization header) says nothing about the token.
    compare.mockClear();
    expect(tokenMatches(undefined, token)).toBe(false);
    expect(compare).not.toHaveBeenCalled();
  });

  it('refuses a wrong or missing token with 401 before any WebSocket exists', async () => {
    const handler = new RecordingHandler();
    const url = await start(handler);
    const wrong = await openRaw(url, { Authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    expect(wrong.body).toContain('AUTH_FAILED');
    const missing = await openRaw(url, {});
    expect(missing.status).toBe(401);
    await expect(connectAgent({ url, token: 'wrong-token' })).rejects.toMatchObject({ code: 'AUTH_FAILED' });
    expect(handler.messages).toHaveLength(0);
  });

  it('refuses another protocol version naming both versions, and closes', async () => {
    const url = await start(new RecordingHandler());
    const { ws } = await openRaw(url, { Authorization: `Bearer ${token}` });
    const answer = nextMessage(ws!);
    ws!.send(JSON.stringify({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION + 1 }));
    const m = await answer;
    expect(m).toMatchObject({ type: 'error', code: 'PROTOCOL_VERSION_MISMATCH', fatal: true });
    expect((m as { message: string }).message).toContain(`client speaks protocol version ${PROTOCOL_VERSION + 1}`);
    expect((m as { message: string }).message).toContain(`speaks version ${PROTOCOL_VERSION}`);
    await new Promise((r) => ws!.once('close', r));
  });

  it('answers garbage after the hello with BAD_MESSAGE and keeps serving', async () => {
    const handler = new RecordingHandler();
    const url = await start(handler);
    const conn = await connectAgent({ url, token });
    const { ws } = await openRaw(url, { Authorization: `Bearer ${token}` });
    const welcome = nextMessage(ws!);
    ws!.send(JSON.stringify({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION }));
    expect((await welcome).type).toBe('welcome');
    for (const garbage of [
      '{not json',
      '[]',
      JSON.stringify({ type: 'launch-missiles', id: 'x' }),
      JSON.stringify({ type: 'lease', id: 'y' }),
    ]) {
      const answer = nextMessage(ws!);
      ws!.send(garbage);
      expect(await answer).toMatchObject({ type: 'error', code: 'BAD_MESSAGE' });
    }
    // The well-behaved client on another connection is untouched.
    const leased = await conn.lease('pi4-03');
    expect(leased.target.name).toBe('pi4-03');
    conn.close();
    ws!.close();
  });

  it('refuses binary data before the hello and hangs up', async () => {
    const handler = new RecordingHandler();
    const url = await start(handler);
    const { ws } = await openRaw(url, { Authorization: `Bearer ${token}` });
    const answer = nextMessage(ws!);
    ws!.send(Buffer.from([1, 2, 3]));
    expect(await answer).toMatchObject({ type: 'error', code: 'BAD_MESSAGE', fatal: true });
    await new Promise((r) => ws!.once('close', r));
    expect(handler.binary).toHaveLength(0);
  });

  it('cuts off a client that stops answering pings and reports it as silent', async () => {
    const handler = new RecordingHandler();
    const url = await start(handler, 600);
    const { ws } = await openRaw(url, { Authorization: `Bearer ${token}` });
    const welcome = nextMessage(ws!);
    ws!.send(JSON.stringify({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION }));
    await welcome;
    // Stop answering pings: ws answers them automatically, so pause the socket instead.
    (ws as unknown as { _socket: { pause(): void } })._socket.pause();
    await waitUntil(() => handler.closes.length > 0, 'the server to cut off the silent client');
    expect(handler.closes).toEqual([true]);
    ws!.terminate();
  });
});
