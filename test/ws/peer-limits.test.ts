/**
 * Bounded resources per WebSocket peer, over real sockets on loopback:
 *
 * - a client that sends requests but reads none of the replies: once its unread replies pass
 *   `listen.maxSendBuffer` the agent stops reading from it (its own send buffer then grows, not the
 *   agent), resumes when it reads, and every request is still answered; a job on another board
 *   passes meanwhile;
 * - a client that reads nothing while the agent keeps sending on its own is dropped at twice the
 *   limit, with a log line naming it, and the next client is served;
 * - a client that ignores the upload's flow-control window (sends frames without waiting for
 *   `upload-progress`) makes the agent hold at most MAX_QUEUED_UPLOAD_BYTES and a frame: reading
 *   pauses until the store catches up, and the upload completes intact.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLab, type Lab } from '../support/lab.js';
import { WsServer, type ClientConnection } from '../../runner-agent/src/ws/server.js';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { MAX_QUEUED_UPLOAD_BYTES } from '../../runner-agent/src/agent-service.js';
import type { UploadSession } from '../../runner-agent/src/store/upload-session.js';
import { rawSession, WAIT_MS } from './raw-ws.js';

const MiB = 1024 * 1024;
let lab: Lab | undefined;
let server: WsServer | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
  await server?.close();
  server = undefined;
});

async function until(check: () => boolean, what: string, detail: () => string = () => ''): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`waited ${WAIT_MS} ms for ${what} ${detail()}`);
    await sleep(5);
  }
}

const logged = (logs: LogRecord[], msg: string) => logs.filter((r) => r.msg === msg);

describe('a WebSocket peer cannot grow the agent without bound', () => {
  it('a client that reads no replies is not read from past the limit, and is served once it reads', async () => {
    lab = await startLab({
      boards: [
        { name: 'victim', mac: '02:00:00:00:0a:01' },
        { name: 'spare', mac: '02:00:00:00:0a:02' },
      ],
      config: {
        listen: { host: '127.0.0.1', port: 0, maxSendBuffer: '1MiB' },
        // While reading from it is paused the agent hears no pongs: the client keeps its connection
        // for the grace period only (the next test), here longer than the job on the other board.
        timeouts: { boardShow: 30, stall: 30, boot: 30, leaseGrace: 30, shutdown: 5 },
      },
    });
    const img = await lab.image('v.img', 3 * MiB, 21);
    const conn = await lab.connect();
    await conn.lease('victim');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const job = conn.flash({ sha256: img.sha256 });

    const flood = await rawSession(lab.agent.url);
    // A request whose answer (UNKNOWN_TARGET, naming the target) is larger than itself.
    const request = (n: number) => ({ type: 'lease', id: `f${n}`, target: `no-such-board-${n}-`.padEnd(128, 'x') });
    flood.ws.pause(); // reads nothing from here on
    let sent = 0;
    const pausedLine = () => logged(lab!.logs, 'client does not read its replies; reading from it paused');
    const deadline = Date.now() + WAIT_MS;
    // The agent's replies fill the loopback buffers, then its own send buffer, until the limit.
    while (pausedLine().length === 0) {
      if (Date.now() > deadline)
        throw new Error(`the agent never stopped reading from a client that reads nothing (${sent} requests sent)`);
      for (let i = 0; i < 200; i++) flood.send(request(sent++));
      await sleep(1);
    }
    // From then on what the client sends stays on its side: the agent reads none of it.
    while (flood.ws.bufferedAmount < MiB) {
      if (Date.now() > deadline) throw new Error(`the client's requests did not pile up on its side (${sent} sent)`);
      for (let i = 0; i < 2000; i++) flood.send(request(sent++));
      await sleep(1);
    }
    const piled = flood.ws.bufferedAmount;
    await sleep(300);
    expect(flood.ws.bufferedAmount).toBe(piled);

    const result = await job;
    expect(result).toMatchObject({ ok: true, code: 'OK' });
    const paused = pausedLine();
    expect(paused).toHaveLength(1);
    expect(paused[0]!.level).toBe('warn');
    expect(paused[0]!.fields.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(logged(lab.logs, 'client reads none of its replies; connection dropped')).toEqual([]);

    // Reading again, the client gets an answer to every request it sent; the agent reads it again.
    flood.ws.resume();
    await until(
      () => flood.inbox.filter((m) => m.type === 'error' && m.code === 'UNKNOWN_TARGET').length === sent,
      `an answer to each of the flood's requests`,
      () =>
        `(${flood.inbox.length} of ${sent}) ${JSON.stringify(flood.inbox.slice(-2))} ${lab!.logs
          .filter((r) => /read|drop|disconn/.test(r.msg))
          .slice(-6)
          .map((r) => `${r.msg} ${JSON.stringify(r.fields)}`)
          .join('\n')}`,
    );
    await until(
      () => logged(lab!.logs, 'client read its replies; reading from it resumed').length >= 1,
      'reading to resume',
    );
    flood.ws.close();
  });

  it('a client that reads nothing while the agent sends on its own is dropped at twice the limit', async () => {
    const logs: LogRecord[] = [];
    const log = createLogger({ level: 'debug', sink: (r) => logs.push(r) });
    // A handler that answers one request with 16 MiB of errors: what a job's events do to a client
    // that reads nothing, only faster.
    const handler = {
      onMessage(conn: ClientConnection, m: { id: string }) {
        const big = m.id.startsWith('big');
        for (let i = 0; i < (big ? 1600 : 1); i++)
          conn.send({ type: 'error', re: m.id, code: 'INTERNAL', message: 'x'.repeat(big ? 10_000 : 1000) });
      },
      onBinary() {},
      onClose() {},
    };
    server = await WsServer.create({
      host: '127.0.0.1',
      port: 0,
      token: 'lab-test-token-0123456789',
      log,
      handler,
      graceMs: 1500,
      maxSendBuffer: MiB,
    });
    const { port } = await server.listen();
    const url = `ws://127.0.0.1:${port}`;
    const mute = await rawSession(url);
    mute.ws.pause();
    mute.send({ type: 'cancel', id: 'big1' });
    await until(() => logged(logs, 'client reads none of its replies; connection dropped').length === 1, 'the drop');
    const [dropped] = logged(logs, 'client reads none of its replies; connection dropped');
    expect(dropped!.level).toBe('warn');
    expect(dropped!.fields.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(dropped!.fields.buffered).toBeGreaterThan(2 * MiB);
    expect(dropped!.fields.buffered).toBeLessThan(2 * MiB + 64 * 1024);
    mute.ws.resume();
    expect(await mute.closed).toBe(1006);
    // One that reads nothing, paused by its small replies, goes silent once the grace period passes.
    const silent = await rawSession(url);
    silent.ws.pause();
    const pausedLines = () => logged(logs, 'client does not read its replies; reading from it paused').length;
    for (let i = 0; pausedLines() < 2;) {
      if (i > 1_000_000) throw new Error('the agent never paused the silent client');
      for (let k = 0; k < 200; k++) silent.send({ type: 'cancel', id: `s${i++}` });
      await sleep(1);
    }
    await until(() => logged(logs, 'client went silent; connection dropped').length === 1, 'the silent client cut off');
    // The next client is served.
    const next = await rawSession(url);
    next.send({ type: 'cancel', id: 'c2' });
    await next.next((m) => m.type === 'error' && m.re === 'c2', 'an answer to the next client');
    next.ws.close();
  });

  it('an upload that ignores the acks holds at most the queue limit in the agent, and completes intact', async () => {
    lab = await startLab({ boards: [{ name: 'up', mac: '02:00:00:00:0a:11' }] });
    // A slow disk (about 100 MiB/s): a client that does not wait for acks outruns it.
    let written = 0;
    const store = lab.agent.store;
    const begin = store.begin.bind(store);
    store.begin = async (o) => {
      const session: UploadSession = await begin(o);
      const write = session.write.bind(session);
      session.write = async (chunk) => {
        await sleep(10);
        await write(chunk);
        written += chunk.length;
      };
      return session;
    };
    const size = 96 * MiB;
    const chunk = Buffer.alloc(MiB);
    const hash = createHash('sha256');
    for (let i = 0; i < size / MiB; i++) {
      chunk.fill(i & 0xff);
      hash.update(chunk);
    }
    const sha256 = hash.digest('hex');
    const c = await rawSession(lab.agent.url);
    c.send({ type: 'lease', id: 'l', target: 'up' });
    await c.next((m) => m.type === 'leased', 'the lease');
    c.send({ type: 'upload-begin', id: 'u', sha256, size, compression: 'none' });
    await c.next((m) => m.type === 'upload-ready', 'upload-ready');
    // Every frame at once, as fast as the socket takes them: no window, no waiting for acks.
    let sent = 0;
    let worst = 0;
    const sample = () => {
      // Bytes that left this client and are not yet written hold in the loopback buffers (a few
      // MiB) and in the agent: that sum must stay near the agent's queue limit.
      const inFlight = sent - c.ws.bufferedAmount - written;
      worst = Math.max(worst, inFlight);
    };
    const sampler = setInterval(sample, 2);
    for (let i = 0; i < size / MiB; i++) {
      c.ws.send(Buffer.alloc(MiB, i & 0xff), { binary: true });
      sent += MiB;
      sample();
      if (i % 8 === 7) await sleep(0);
    }
    c.send({ type: 'upload-end', id: 'e' });
    const done = await c.next((m) => m.type === 'upload-done' || m.type === 'error', 'the end of the upload');
    clearInterval(sampler);
    expect(done).toMatchObject({ type: 'upload-done', sha256, size, skipped: false });
    const paused = logged(
      lab.logs,
      'client sends past its upload window; reading from it paused until the store catches up',
    );
    expect(paused.length).toBeGreaterThanOrEqual(1);
    expect(paused[0]!.fields.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    // The queue limit and a frame in the agent, plus what the kernel's loopback buffers hold.
    expect(worst, `worst ${worst} bytes in flight`).toBeLessThan(MAX_QUEUED_UPLOAD_BYTES + 2 * MiB + 16 * MiB);
    c.ws.close();
  });
});
