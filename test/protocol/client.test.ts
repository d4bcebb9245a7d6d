/**
 * The protocol client against a fake agent over a real WebSocket on loopback: what it does with
 * messages it cannot read (logs them, fails the request they answer with PROTOCOL_ERROR rather than
 * leaving it to wait), how it follows a running job after `job-running`, its `closed` promise, and
 * that a cancel stops an upload before it sends.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { connectAgent, type AgentConnection } from '../../src/protocol/client.js';
import { codeOf, messageOf } from '../../src/protocol/errors.js';
import {
  PROTOCOL_VERSION,
  WS_PATH,
  type AgentMessage,
  type ClientMessage,
  type JobResult,
} from '../../src/protocol/messages.js';

const SHA = 'a'.repeat(64);
const TARGET = { name: 'pi-a', mac: '02:00:00:00:00:01', ip: '127.0.0.1' };
const RESULT: JobResult = {
  ok: true,
  code: 'OK',
  message: 'done',
  job: 'job1',
  target: TARGET,
  sha256: SHA,
  bytesWritten: 1024,
  card: 'written',
  timings: { transfer: 1 },
  parts: [],
};

/** Answers a client message: with messages (objects are sent as JSON, strings as they are), or not at all. */
type Script = (m: ClientMessage, ws: WebSocket) => Array<object | string> | void;

interface FakeAgent {
  url: string;
  /** What the client sent, in order. */
  received: ClientMessage[];
  close(): Promise<void>;
}

const agents: FakeAgent[] = [];
const conns: AgentConnection[] = [];
afterEach(async () => {
  for (const c of conns.splice(0)) c.close();
  for (const a of agents.splice(0)) await a.close();
});

/** An agent that does the hello (`welcome` overrides its answer) and answers the rest by `script`. */
async function fakeAgent(script: Script, welcome?: (hello: ClientMessage) => object): Promise<FakeAgent> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: WS_PATH });
  await new Promise<void>((resolve) => wss.once('listening', resolve));
  const received: ClientMessage[] = [];
  wss.on('connection', (ws) => {
    ws.on('message', (data) => {
      const m = JSON.parse((data as Buffer).toString('utf8')) as ClientMessage;
      received.push(m);
      const answers =
        m.type === 'hello'
          ? [
              welcome?.(m) ?? {
                type: 'welcome',
                re: m.id,
                protocol: PROTOCOL_VERSION,
                agent: 'fake',
                chunkSize: 65536,
                maxPayload: 131072,
              },
            ]
          : script(m, ws);
      for (const a of answers ?? []) ws.send(typeof a === 'string' ? a : JSON.stringify(a));
    });
  });
  const agent: FakeAgent = {
    url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close(() => resolve());
      }),
  };
  agents.push(agent);
  return agent;
}

async function connect(agent: FakeAgent, events: AgentMessage[] = [], log: string[] = []): Promise<AgentConnection> {
  const conn = await connectAgent({
    url: agent.url,
    token: 't',
    onEvent: (m) => events.push(m),
    log: (line) => log.push(line),
  });
  conns.push(conn);
  return conn;
}

/** The code and message a promise rejects with, or fails the test after `ms` (the hang this guards against). */
async function failure(promise: Promise<unknown>, ms = 5_000): Promise<{ code: string; message: string }> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still waiting after ${ms} ms: the request hangs`)), ms);
  });
  try {
    await Promise.race([promise, hang]);
  } catch (err) {
    if (messageOf(err).startsWith('still waiting')) throw err;
    return { code: codeOf(err), message: messageOf(err) };
  } finally {
    clearTimeout(timer);
  }
  throw new Error('the request succeeded');
}

describe('an agent message the client cannot read', () => {
  it('of an unknown type, answering an open request, fails it with PROTOCOL_ERROR and is logged', async () => {
    const agent = await fakeAgent((m) => [{ type: 'lease-granted', re: m.id, lease: 'l1' }]);
    const log: string[] = [];
    const conn = await connect(agent, [], log);
    const err = await failure(conn.lease('pi-a'));
    expect(err.code).toBe('PROTOCOL_ERROR');
    expect(err.message).toContain('unknown message type "lease-granted"');
    expect(err.message).toContain('different versions of the protocol');
    expect(log).toEqual([
      `unreadable message from the agent (unknown message type "lease-granted"): ` +
        JSON.stringify({ type: 'lease-granted', re: agent.received[1]!.id, lease: 'l1' }),
    ]);
  });

  it('lacking a field the client reads fails the request it answers, naming the field', async () => {
    const agent = await fakeAgent((m) => [{ type: 'leased', re: m.id, lease: 'l1' }]);
    const conn = await connect(agent);
    const err = await failure(conn.lease('pi-a'));
    expect(err).toMatchObject({ code: 'PROTOCOL_ERROR' });
    expect(err.message).toContain('a "leased" message has no "target"');
  });

  it('fails a running job whose result is drifted, instead of waiting until job-timeout', async () => {
    const withoutParts: Partial<JobResult> = { ...RESULT };
    delete withoutParts.parts;
    const agent = await fakeAgent((m) =>
      m.type === 'flash'
        ? [
            { type: 'phase', re: m.id, job: 'job1', phase: 'transfer', state: 'start' },
            { type: 'result', re: m.id, ...withoutParts },
          ]
        : [],
    );
    const events: AgentMessage[] = [];
    const conn = await connect(agent, events);
    const err = await failure(conn.flash({ sha256: SHA }));
    expect(err.code).toBe('PROTOCOL_ERROR');
    expect(err.message).toContain('a "result" message has no "parts"');
    // What could be read still reached the caller.
    expect(events.map((e) => e.type)).toEqual(['welcome', 'phase']);
  });

  it('with a field of the wrong kind fails the request, saying what it got', async () => {
    const agent = await fakeAgent((m) => [{ type: 'upload-ready', re: m.id, offset: '0' }]);
    const conn = await connect(agent);
    const err = await failure(conn.upload({ path: '/dev/null', sha256: SHA, size: 1, compression: 'none' }));
    expect(err.code).toBe('PROTOCOL_ERROR');
    expect(err.message).toContain('"offset" in a "upload-ready" message is string, not integer');
  });

  it('that names no request (not JSON) fails every open request, and is logged shortened', async () => {
    const garbage = `<html>${'x'.repeat(1000)}</html>`;
    const agent = await fakeAgent((m) => (m.type === 'cancel' ? [garbage] : undefined));
    const log: string[] = [];
    const conn = await connect(agent, [], log);
    const leasing = failure(conn.lease('pi-a'));
    const err = await failure(conn.cancel());
    expect(err.code).toBe('PROTOCOL_ERROR');
    expect((await leasing).code).toBe('PROTOCOL_ERROR');
    expect(log).toHaveLength(1);
    expect(log[0]).toBe(
      `unreadable message from the agent (message is not valid JSON): ${garbage.slice(0, 300)}… (1013 characters)`,
    );
  });

  it('about a request no longer open is logged and fails nothing else', async () => {
    const agent = await fakeAgent((m) =>
      m.type === 'lease'
        ? [
            { type: 'leased', re: m.id, lease: 'l1', target: TARGET },
            { type: 'leased', re: m.id, lease: 'l1' },
          ]
        : [{ type: 'released', re: m.id, lease: 'l1' }],
    );
    const log: string[] = [];
    const conn = await connect(agent, [], log);
    await expect(conn.lease('pi-a')).resolves.toMatchObject({ lease: 'l1' });
    await expect(conn.cancel()).resolves.toBeUndefined();
    expect(log).toHaveLength(1);
    expect(log[0]).toContain('a "leased" message has no "target"');
  });

  it('of a known type that does not answer the request fails it', async () => {
    const agent = await fakeAgent((m) => [
      { type: 'upload-done', re: m.id, sha256: SHA, size: 1, imageSize: 1, skipped: true },
    ]);
    const conn = await connect(agent);
    const err = await failure(conn.cancel());
    expect(err.code).toBe('PROTOCOL_ERROR');
    expect(err.message).toContain('answered a "cancel" request with "upload-done"');
  });

  it('in the welcome fails the connect', async () => {
    const agent = await fakeAgent(
      () => [],
      (hello) => ({ type: 'welcome', re: hello.id, protocol: PROTOCOL_VERSION, agent: 'fake' }),
    );
    const err = await failure(connectAgent({ url: agent.url, token: 't', log: () => {} }));
    expect(err.code).toBe('PROTOCOL_ERROR');
    expect(err.message).toContain('a "welcome" message has no "chunkSize"');
  });
});

describe('a flash sent again while its job runs', () => {
  it("follows the job that runs: job-running, then the first request's events and result", async () => {
    const agent = await fakeAgent((m) =>
      m.type === 'flash'
        ? [
            { type: 'job-running', re: m.id, flash: 'r-first', job: 'job1' },
            { type: 'progress', re: 'r-first', job: 'job1', phase: 'transfer', done: 512, total: 1024 },
            { type: 'result', re: 'r-first', ...RESULT },
          ]
        : [],
    );
    const events: AgentMessage[] = [];
    const conn = await connect(agent, events);
    await expect(conn.flash({ sha256: SHA })).resolves.toEqual(RESULT);
    expect(events.map((e) => e.type)).toEqual(['welcome', 'job-running', 'progress', 'result']);
  });

  it('gets the error of the first request when its job fails to start', async () => {
    const agent = await fakeAgent((m) =>
      m.type === 'flash'
        ? [
            { type: 'job-running', re: m.id, flash: 'r-first' },
            { type: 'error', re: 'r-first', code: 'IMAGE_NOT_FOUND', message: 'no such image' },
          ]
        : [],
    );
    const conn = await connect(agent);
    expect(await failure(conn.flash({ sha256: SHA }))).toEqual({ code: 'IMAGE_NOT_FOUND', message: 'no such image' });
  });

  it('job-running answering anything but a flash is drift', async () => {
    const agent = await fakeAgent((m) => [{ type: 'job-running', re: m.id, flash: 'r-first' }]);
    const conn = await connect(agent);
    expect((await failure(conn.cancel())).code).toBe('PROTOCOL_ERROR');
  });
});

describe('closed', () => {
  it('resolves with CONNECTION_LOST when the agent goes, and fails what was open with it', async () => {
    const agent = await fakeAgent((_m, ws) => void ws.close(1011, 'agent restarting'));
    const conn = await connect(agent);
    expect(conn.isClosed).toBe(false);
    const leasing = failure(conn.lease('pi-a'));
    const reason = await conn.closed;
    expect(conn.isClosed).toBe(true);
    expect({ code: reason.code, message: reason.message }).toEqual({
      code: 'CONNECTION_LOST',
      message: 'connection to the agent closed (1011 agent restarting)',
    });
    expect(await leasing).toEqual({ code: reason.code, message: reason.message });
  });

  it('resolves when the client closes', async () => {
    const agent = await fakeAgent(() => []);
    const conn = await connect(agent);
    conn.close();
    expect((await conn.closed).message).toBe('connection closed by the client');
  });
});

describe('cancel during an upload', () => {
  /**
   * An agent that records the order of text and binary frames, answers upload-begin with
   * upload-ready (unless `holdBegin`), acknowledges every chunk so the upload never waits for its
   * window, and answers cancel with released.
   */
  async function recordingAgent(o: { holdBegin?: boolean } = {}) {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: WS_PATH });
    await new Promise<void>((resolve) => wss.once('listening', resolve));
    const frames: string[] = [];
    let received = 0;
    let beginId = '';
    const answerBegin = (ws: WebSocket) => ws.send(JSON.stringify({ type: 'upload-ready', re: beginId, offset: 0 }));
    const sockets: WebSocket[] = [];
    wss.on('connection', (ws) => {
      sockets.push(ws);
      ws.on('message', (data, isBinary) => {
        if (isBinary) {
          frames.push('binary');
          received += (data as Buffer).length;
          ws.send(JSON.stringify({ type: 'upload-progress', re: beginId, received }));
          return;
        }
        const m = JSON.parse((data as Buffer).toString('utf8')) as ClientMessage;
        frames.push(m.type);
        if (m.type === 'hello')
          ws.send(
            JSON.stringify({
              type: 'welcome',
              re: m.id,
              protocol: PROTOCOL_VERSION,
              agent: 'fake',
              chunkSize: 65536,
              maxPayload: 131072,
            }),
          );
        if (m.type === 'upload-begin') {
          beginId = m.id;
          if (!o.holdBegin) answerBegin(ws);
        }
        if (m.type === 'cancel') ws.send(JSON.stringify({ type: 'released', re: m.id, lease: 'l1' }));
      });
    });
    const agent: FakeAgent = {
      url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`,
      received: [],
      close: () =>
        new Promise<void>((resolve) => {
          for (const ws of wss.clients) ws.terminate();
          wss.close(() => resolve());
        }),
    };
    agents.push(agent);
    return { agent, frames, answerBegin: () => answerBegin(sockets[0]!) };
  }

  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });
  async function file(size: number): Promise<string> {
    dir = await mkdtemp(path.join(os.tmpdir(), 'client-cancel-'));
    const f = path.join(dir, 'image');
    await writeFile(f, Buffer.alloc(size, 7));
    return f;
  }

  it('stops the upload before the cancel is sent: not one chunk follows it', async () => {
    const { agent, frames } = await recordingAgent();
    const conn = await connect(agent);
    const size = 64 * 1024 * 1024;
    let cancelled: Promise<void> | undefined;
    const upload = conn.upload({
      path: await file(size),
      sha256: SHA,
      size,
      compression: 'none',
      onProgress: (received) => {
        if (received >= 4 * 1024 * 1024 && !cancelled) cancelled = conn.cancel({ reason: 'SIGTERM' });
      },
    });
    expect(await failure(upload)).toEqual({ code: 'CANCELLED', message: 'the upload stopped: cancelled (SIGTERM)' });
    await cancelled;
    expect(frames).toContain('cancel');
    expect(frames.slice(frames.indexOf('cancel') + 1)).toEqual([]);
    expect(frames.filter((f) => f === 'binary').length * 65536).toBeLessThan(size / 2);
    expect(frames).not.toContain('upload-end');
  });

  it('stops an upload whose begin is not answered yet: it fails at once and sends nothing later', async () => {
    const { agent, frames, answerBegin } = await recordingAgent({ holdBegin: true });
    const conn = await connect(agent);
    const size = 1024 * 1024;
    const upload = failure(conn.upload({ path: await file(size), sha256: SHA, size, compression: 'none' }));
    await new Promise((r) => setTimeout(r, 50));
    await conn.cancel();
    expect((await upload).code).toBe('CANCELLED');
    answerBegin(); // the agent's late answer finds nobody waiting
    await new Promise((r) => setTimeout(r, 100));
    expect(frames).toEqual(['hello', 'upload-begin', 'cancel']);
  });
});
