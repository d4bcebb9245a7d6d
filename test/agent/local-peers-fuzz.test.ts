/**
 * The agent's other inputs that are not the network: a board's console stream, QEMU's QMP socket
 * and the output of a reset command. Each is fed what a broken or hostile peer might send (seeded,
 * reproducible: FUZZ_SEED) over a real socket or pipe, and the reader must survive it: the console
 * capture still finds the line that follows the garbage, a QMP exchange fails at once with a
 * reason instead of hanging until its timeout, a command's output is kept to its tail.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { openConsole } from '../../runner-agent/src/console/capture.js';
import { parseConsoleSpec } from '../../runner-agent/src/console/spec.js';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { qmpExecute } from '../../runner-agent/src/reset/qmp.js';
import { runProcess } from '../../runner-agent/src/reset/run-process.js';
import { fuzzSeed, rng, type Rng } from '../ws/fuzz.js';

const seed = fuzzSeed();
let cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function serve(onConnection: (s: net.Socket) => void, where: { path?: string } = {}): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConnection(s);
  });
  await new Promise<void>((resolve) =>
    where.path ? server.listen(where.path, resolve) : server.listen(0, '127.0.0.1', resolve),
  );
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  const address = server.address();
  return typeof address === 'object' && address ? address.port : 0;
}

/** What a console at a wrong baud rate, a crashing board or a hostile ser2net might print. */
function consoleGarbage(r: Rng): Buffer {
  switch (r.int(8)) {
    case 0:
      return r.bytes(1 + r.int(64 * 1024));
    case 1:
      return Buffer.from('\r'.repeat(1 + r.int(10_000)));
    case 2:
      return Buffer.from('\x1b['.repeat(1 + r.int(5000)) + '\x1b]' + 'x'.repeat(r.int(20_000)));
    case 3:
      return Buffer.from('A'.repeat(100_000 + r.int(200_000))); // one line without an end
    case 4:
      return Buffer.from([0xf0, 0x9f, 0x98, 0xf0, 0x80, 0xc0, 0xff, 0xfe, 0x00, 0x9b]); // broken UTF-8, C1
    case 5:
      return Buffer.from('\x00'.repeat(1 + r.int(4096)));
    case 6:
      return Buffer.from('login: '.repeat(1 + r.int(100)).slice(0, -2)); // almost the pattern, never it
    default:
      return Buffer.from(`${r.text(r.int(200))}\r\n`);
  }
}

describe('hostile local peers', () => {
  it('a console stream of seeded garbage: the capture survives and finds the line after it', async () => {
    const r = rng(seed);
    const records: LogRecord[] = [];
    let sent = 0;
    const port = await serve((s) => {
      let i = 0;
      const step = () => {
        if (s.destroyed) return;
        if (i++ < 200) {
          const chunk = consoleGarbage(r);
          sent += chunk.length;
          // Some pieces split mid-sequence, as a serial adapter delivers them.
          if (r.bool(0.3)) {
            const cut = r.int(chunk.length);
            s.write(chunk.subarray(0, cut));
            s.write(chunk.subarray(cut));
          } else s.write(chunk);
          setImmediate(step);
        } else s.write('\r\nboard: all done\r\n');
      };
      step();
    });
    const capture = await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), {
      log: createLogger({ level: 'debug', sink: (rec) => records.push(rec) }),
      idleFlushMs: 20,
    });
    cleanups.push(() => capture.close());
    const match = await capture.waitFor(/^board: all done$/, { timeoutMs: 30_000, since: 0 });
    expect(match, `seed ${seed}`).not.toBeNull();
    expect(capture.stats().bytes).toBe(sent + '\r\nboard: all done\r\n'.length);
    // Bounded whatever came: lines cut at 4096 characters, the record at 1 MiB.
    expect(Math.max(...capture.lines().map((l) => l.length))).toBeLessThanOrEqual(4096);
    expect(Buffer.byteLength(capture.text(), 'latin1')).toBeLessThanOrEqual(2 * 1024 * 1024);
    expect(records.filter((rec) => rec.level === 'error')).toEqual([]);
  });

  it('a QMP peer sending null, a number, a list or an endless line fails the exchange at once', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'qmp-hostile-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const cases: Array<{ greeting: string; reason: RegExp }> = [
      { greeting: 'null\n', reason: /not a JSON object/ },
      { greeting: '5\n', reason: /not a JSON object/ },
      { greeting: '[{"QMP": {}}]\n', reason: /not a JSON object/ },
      { greeting: '{"QMP": {}}\nnull\n', reason: /not a JSON object/ },
      { greeting: 'x'.repeat(2 * 1024 * 1024), reason: /without a line end/ },
      { greeting: '{"QMP"\n', reason: /not JSON/ },
    ];
    for (const [i, c] of cases.entries()) {
      const socketPath = path.join(dir, `qmp-${i}.sock`);
      await serve(
        (s) => {
          s.write(c.greeting);
          // Answer capabilities the same way: the second case line is the answer to it.
          s.on('data', () => {});
        },
        { path: socketPath },
      );
      const started = performance.now();
      // The timeout is long: a reader that waits for it instead of failing shows as slow here.
      await expect(qmpExecute(socketPath, ['system_reset'], 20_000), `case ${i}`).rejects.toThrow(c.reason);
      expect(performance.now() - started, `case ${i}`).toBeLessThan(10_000);
    }
  });

  it("a reset command's flood of binary output is kept to its tail and the outcome is reported", async () => {
    const result = await runProcess(
      '/bin/sh',
      ['-c', 'head -c 20000000 /dev/urandom; head -c 5000000 /dev/urandom >&2; echo; echo the-last-line >&2; exit 3'],
      { timeoutMs: 30_000 },
    );
    expect(result).toMatchObject({ code: 3, timedOut: false });
    expect(result.stdout.length).toBeLessThanOrEqual(4096);
    expect(result.stderr.length).toBeLessThanOrEqual(4096);
    expect(result.stderr).toMatch(/the-last-line\n$/);
  });
});
