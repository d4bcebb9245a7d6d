/**
 * What dashboard pages can make the agent hold: the live feed over real sockets on loopback, with
 * a page that stops reading (dropped once its unread bytes pass the limit, while a reading page
 * goes on) and one page too many (refused).
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { LabFeed, type LabSource } from '../../runner-agent/src/lab-view.js';
import { LiveFeed } from '../../runner-agent/src/dashboard/live-feed.js';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { waitUntil } from '../support/wait.js';

const closers: Array<() => unknown> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

/** A lab of `boards` boards: a snapshot of 2000 boards is ~300 KB of JSON. */
function source(boards: number): LabSource {
  const targets = Array.from({ length: boards }, (_, i) => ({
    name: `board-${i}`,
    mac: '02:00:00:00:00:01',
    ip: '127.0.0.1',
    labels: ['pi4'],
  }));
  return { targets: () => targets, leaseOf: () => undefined, queueLength: () => 0 };
}

async function serve(live: LiveFeed): Promise<string> {
  const server = http.createServer((req, res) => {
    if (!live.accept(req, res)) {
      res.writeHead(503);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(
    () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(r);
      }),
  );
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A raw page that sends its request and then reads nothing at all (its socket paused). */
async function silentPage(address: string): Promise<net.Socket> {
  const [host, port] = address.split(':');
  const socket = net.connect(Number(port), host);
  socket.on('error', () => {});
  await new Promise((r) => socket.once('connect', r));
  socket.write('GET /dashboard/events HTTP/1.1\r\nHost: agent\r\n\r\n');
  socket.pause();
  closers.push(() => socket.destroy());
  return socket;
}

/** A page that reads everything; resolves with a counter of the bytes read. */
function readingPage(address: string): Promise<{ bytes: number; status: number; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const page = { bytes: 0, status: 0, ended: false };
    const req = http.get(`http://${address}/dashboard/events`, (res) => {
      page.status = res.statusCode ?? 0;
      res.on('data', (c: Buffer) => (page.bytes += c.length));
      res.on('end', () => (page.ended = true));
      res.on('error', () => {});
      resolve(page);
    });
    req.on('error', reject);
    closers.push(() => req.destroy());
  });
}

describe('the live feed', () => {
  it('drops a page that stops reading, keeps the one that reads, and refuses one page too many', async () => {
    const logs: LogRecord[] = [];
    const log = createLogger({ level: 'debug', sink: (r) => logs.push(r) });
    const lab = new LabFeed(source(2000), log);
    const live = new LiveFeed({ lab, log, maxClients: 2, maxBuffered: 256 * 1024, intervalMs: 5 });
    closers.push(() => live.close());
    const address = await serve(live);
    const silent = await silentPage(address);
    const reader = await readingPage(address);
    expect(reader.status).toBe(200);
    await waitUntil(() => live.size === 2, 'two pages on the feed');
    // A third page is refused while two are open.
    expect((await readingPage(address)).status).toBe(503);

    // Changes keep coming: each tick is a fresh ~300 KB snapshot.
    const changes = setInterval(() => lab.changed(), 10);
    closers.push(() => clearInterval(changes));
    await waitUntil(() => live.slowDropped === 1, 'the silent page dropped', { detail: () => `${live.size} pages` });
    expect(live.size).toBe(1);
    // Its connection is gone: read on, it ends.
    const closed = new Promise((r) => silent.once('close', r));
    silent.resume();
    await closed;
    expect(logs.some((r) => r.level === 'warn' && /reads too slowly; dropped/.test(r.msg))).toBe(true);
    // The reading page goes on getting snapshots, and is never dropped.
    const before = reader.bytes;
    await waitUntil(() => reader.bytes > before + 1024 * 1024, 'the reading page reading on');
    expect(live.slowDropped).toBe(1);
    expect(reader.ended).toBe(false);
    // The dropped page's place is free again.
    expect((await readingPage(address)).status).toBe(200);
  });

  it('sends log lines in batches of at most maxLinesPerTick, counting the rest', async () => {
    const log = createLogger({ level: 'error', sink: () => {} });
    const lab = new LabFeed(source(1), log);
    const live = new LiveFeed({ lab, log, maxClients: 1, intervalMs: 50, maxLinesPerTick: 10 });
    closers.push(() => live.close());
    const address = await serve(live);
    const chunks: string[] = [];
    await new Promise<void>((resolve) => {
      const req = http.get(`http://${address}/dashboard/events`, (res) => {
        res.setEncoding('utf8');
        res.on('data', (t: string) => chunks.push(t));
        resolve();
      });
      closers.push(() => req.destroy());
    });
    await waitUntil(() => live.size === 1, 'the page on the feed');
    lab.jobStarted({ id: 'abc123', target: 'board-0', holder: 'test' });
    for (let i = 0; i < 25; i++)
      lab.jobEvent('abc123', {
        type: 'log',
        job: 'abc123',
        level: 'info',
        source: 'agent',
        message: `line ${i}`,
        time: i,
      });
    await waitUntil(() => chunks.join('').includes('event: log'), 'a log event');
    const data = /event: log\ndata: (.*)\n/.exec(chunks.join(''))![1]!;
    const batch = JSON.parse(data) as { lines: Array<{ message: string; job: string }>; dropped: number };
    expect(batch.lines.map((l) => l.message)).toEqual(Array.from({ length: 10 }, (_, i) => `line ${i}`));
    expect(batch.lines[0]!.job).toBe('abc123');
    expect(batch.dropped).toBe(15);
    // The job's tail keeps them all (bounded by LOG_TAIL_LINES) for a page that opens the job later.
    expect(lab.logTail('abc123')).toHaveLength(25);
  });
});
