/**
 * The console capture against real peers: a TCP server on loopback playing ser2net (also one that
 * drops the connection and one that goes away and comes back), a unix socket server playing
 * QEMU's serial socket, and a pseudo-terminal playing a USB-serial adapter.
 *
 * The pseudo-terminal comes from util-linux's `script` (Debian: bsdutils, an essential package,
 * so CI has it): `script -q -c 'tty; exec sleep …' /dev/null` runs `sleep` on a fresh pty, prints
 * the slave's name (/dev/pts/N), and copies its own stdin to the pty master — bytes the test
 * writes to script's stdin arrive at the slave as if a board had sent them down the wire.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConsoleError, openConsole, type ConsoleCapture } from '../../runner-agent/src/console/capture.js';
import { parseConsoleSpec } from '../../runner-agent/src/console/spec.js';
import { createLogger, silentLogger, type LogRecord } from '../../runner-agent/src/log.js';

const execFileAsync = promisify(execFile);

let cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

function track(capture: ConsoleCapture): ConsoleCapture {
  cleanups.push(() => capture.close());
  return capture;
}

/** A server that hands each accepted connection to `onConnection`, closed after the test. */
async function listen(
  onConnection: (s: net.Socket) => void,
  where: { port?: number; path?: string } = {},
): Promise<{ server: net.Server; port: number; sockets: Set<net.Socket> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConnection(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (where.path) server.listen(where.path, resolve);
    else server.listen(where.port ?? 0, '127.0.0.1', resolve);
  });
  const close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  cleanups.push(() => (server.listening ? close() : undefined));
  const address = server.address();
  return { server, port: typeof address === 'object' && address ? address.port : 0, sockets };
}

/** Promise.withResolvers, which Node 20 lacks. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

function closeServer(server: net.Server, sockets: Set<net.Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise<void>((resolve) => server.close(() => resolve()));
}

/** A logger that keeps its records, and resolves waiters when a message matching a pattern appears. */
function recordingLogger() {
  const records: LogRecord[] = [];
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  const log = createLogger({
    level: 'debug',
    sink: (r) => {
      records.push(r);
      for (const w of [...waiters]) if (w.re.test(r.msg)) w.resolve();
    },
  });
  const seen = (re: RegExp) =>
    new Promise<void>((resolve) => {
      if (records.some((r) => re.test(r.msg))) return resolve();
      waiters.push({ re, resolve });
    });
  return { log, records, seen };
}

describe('console over TCP (ser2net)', () => {
  it('streams lines in order with their time, keeps the raw text, and waitFor sees old and new lines', async () => {
    const connected = deferred<net.Socket>();
    const { port } = await listen((s) => connected.resolve(s));
    const seen: { line: string; time: number }[] = [];
    const before = Date.now();
    const capture = track(
      await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), {
        log: silentLogger,
        onLine: (line, time) => seen.push({ line, time }),
      }),
    );
    const peer = await connected.promise;

    expect(capture.mark()).toBe(0);
    peer.write('\x1b[1mU-Boot 2023.01\x1b[0m\r\n\r\nDRAM:  1 GiB\r\n');
    const dram = await capture.waitFor(/DRAM:\s+(\d+)/, { timeoutMs: 10_000, since: 0 });
    expect(dram).toMatchObject({ line: 'DRAM:  1 GiB', index: 2 });
    expect(seen.map((s) => s.line)).toEqual(['U-Boot 2023.01', '', 'DRAM:  1 GiB']);
    for (const s of seen) expect(s.time).toBeGreaterThanOrEqual(before);

    // A line that arrived before the call is found when `since` covers it (ms 0: already there).
    const early = await capture.waitFor(/^U-Boot/, { timeoutMs: 10_000, since: 0 });
    expect(early).toMatchObject({ line: 'U-Boot 2023.01', index: 0, ms: 0 });
    // …and not when `since` is past it; then a new line matches.
    const mark = capture.mark();
    expect(mark).toBe(3);
    const later = capture.waitFor(/^U-Boot/, { timeoutMs: 10_000, since: mark });
    peer.write('U-Boot 2023.01 again\r\n');
    expect(await later).toMatchObject({ line: 'U-Boot 2023.01 again', index: 3 });

    expect(capture.lines()).toEqual(['U-Boot 2023.01', '', 'DRAM:  1 GiB', 'U-Boot 2023.01 again']);
    expect(capture.lines(2)).toEqual(['DRAM:  1 GiB', 'U-Boot 2023.01 again']);
    // The record keeps what came over the wire, escape codes and line ends included.
    expect(capture.text()).toBe('\x1b[1mU-Boot 2023.01\x1b[0m\r\n\r\nDRAM:  1 GiB\r\nU-Boot 2023.01 again\r\n');
    expect(capture.stats()).toMatchObject({ lines: 4, reconnects: 0, droppedBytes: 0, connected: true });
  });

  it('turns a prompt without a line end into a line once the console is quiet', async () => {
    const { port } = await listen((s) => s.write('Debian GNU/Linux 12 pi ttyS0\r\n\r\npi login: '));
    const capture = track(
      await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), { log: silentLogger, idleFlushMs: 50 }),
    );
    const match = await capture.waitFor(/login:\s*$/, { timeoutMs: 10_000, since: 0 });
    expect(match?.line).toBe('pi login: ');
  });

  it('waitFor ignores lines before the call by default, and g/y flags do not make it skip lines', async () => {
    let peer!: net.Socket;
    const got = deferred<void>();
    const { port } = await listen((s) => {
      peer = s;
      got.resolve();
    });
    const capture = track(await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), { log: silentLogger }));
    await got.promise;
    peer.write('marker-1\n');
    await capture.waitFor(/marker-1/, { timeoutMs: 10_000, since: 0 });
    const waiting = capture.waitFor(/marker-\d/g, { timeoutMs: 10_000 });
    peer.write('marker-2\nmarker-3\n');
    expect((await waiting)?.line).toBe('marker-2');
    const re = /marker-3/g;
    expect((await capture.waitFor(re, { timeoutMs: 10_000, since: 0 }))?.line).toBe('marker-3');
    expect((await capture.waitFor(re, { timeoutMs: 10_000, since: 0 }))?.line).toBe('marker-3');
  });

  it('waitFor resolves null at its timeout, rejects on abort, and close() settles waiters with null', async () => {
    const { port } = await listen(() => {});
    const capture = track(await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), { log: silentLogger }));
    expect(await capture.waitFor(/never/, { timeoutMs: 20 })).toBeNull();

    const abort = new AbortController();
    const aborted = capture.waitFor(/never/, { timeoutMs: 60_000, signal: abort.signal });
    abort.abort(new Error('job cancelled'));
    await expect(aborted).rejects.toThrow('job cancelled');

    const pending = capture.waitFor(/never/, { timeoutMs: 60_000 });
    await capture.close();
    expect(await pending).toBeNull();
    expect(await capture.waitFor(/never/, { timeoutMs: 60_000 })).toBeNull();
  });

  it(
    'keeps only the last maxRecordBytes of raw text and the last maxLines lines, ' +
      'numbering lines for the whole capture',
    async () => {
      const lines = Array.from({ length: 100 }, (_, i) => `line ${String(i).padStart(3, '0')}`);
      const all = lines.map((l) => `${l}\r\n`).join('');
      const { port } = await listen((s) => s.write(all));
      const capture = track(
        await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), {
          log: silentLogger,
          maxRecordBytes: 100,
          maxLines: 8,
        }),
      );
      await capture.waitFor(/line 099/, { timeoutMs: 10_000, since: 0 });
      expect(capture.text()).toBe(all.slice(-100));
      expect(capture.stats()).toMatchObject({ bytes: all.length, droppedBytes: all.length - 100, lines: 100 });
      expect(capture.mark()).toBe(100);
      const kept = capture.lines();
      expect(kept.length).toBeGreaterThanOrEqual(8);
      expect(kept.length).toBeLessThanOrEqual(10);
      expect(kept).toEqual(lines.slice(-kept.length));
      expect(capture.lines(97)).toEqual(['line 097', 'line 098', 'line 099']);
      // Lines no longer kept cannot match; the oldest kept one can.
      expect(await capture.waitFor(/line 000/, { timeoutMs: 20, since: 0 })).toBeNull();
      expect((await capture.waitFor(/line \d+/, { timeoutMs: 20, since: 0 }))?.index).toBe(100 - kept.length);
    },
  );

  it('reconnects when ser2net drops the connection, ending the half-printed line', async () => {
    let connections = 0;
    const { port } = await listen((s) => {
      connections++;
      if (connections === 1) s.end('first connection\r\nhalf a li');
      else s.write('second connection\r\n');
    });
    const { log, records } = recordingLogger();
    const capture = track(await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), { log, reconnectMs: 20 }));
    const match = await capture.waitFor(/second connection/, { timeoutMs: 10_000, since: 0 });
    expect(match?.index).toBe(2);
    expect(capture.lines()).toEqual(['first connection', 'half a li', 'second connection']);
    expect(capture.stats()).toMatchObject({ reconnects: 1, connected: true });
    expect(records.map((r) => r.msg)).toContain('console connection lost; reconnecting every 20 ms');
    expect(records.find((r) => r.msg.startsWith('console reconnected'))?.fields.console).toBe(`tcp:127.0.0.1:${port}`);
  });

  it('keeps trying while ser2net is down and picks up again when it comes back on the same port', async () => {
    const first = await listen((s) => s.write('before the restart\r\n'));
    const { port } = first;
    const { log, records, seen } = recordingLogger();
    const capture = track(await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), { log, reconnectMs: 20 }));
    await capture.waitFor(/before the restart/, { timeoutMs: 10_000, since: 0 });

    await closeServer(first.server, first.sockets);
    // A failed attempt while nothing listens, then the server returns.
    await seen(/console still unavailable/);
    expect(capture.stats().connected).toBe(false);
    await listen((s) => s.write('after the restart\r\n'), { port });
    const match = await capture.waitFor(/after the restart/, { timeoutMs: 10_000 });
    expect(match?.line).toBe('after the restart');
    expect(capture.stats().reconnects).toBe(1);
    // One warning per outage, not one per failed attempt.
    expect(records.filter((r) => r.msg.startsWith('console still unavailable'))).toHaveLength(1);
  });

  it('close() ends the connection and stops reconnecting', async () => {
    const closedByPeer = deferred<void>();
    const { port } = await listen((s) => s.on('close', () => closedByPeer.resolve()));
    const capture = await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), {
      log: silentLogger,
      reconnectMs: 10,
    });
    await capture.close();
    await closedByPeer.promise; // the server saw the connection end
    expect(capture.stats().connected).toBe(false);
    await capture.close(); // twice is fine
  });

  it('close() during an outage stops the reconnect loop (nothing left to keep the process alive)', async () => {
    const server = await listen((s) => s.destroy());
    const { log, seen } = recordingLogger();
    const capture = await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${server.port}`), { log, reconnectMs: 10 });
    await closeServer(server.server, server.sockets);
    await seen(/console still unavailable/);
    await capture.close();
    expect(capture.stats().connected).toBe(false);
    // A fresh server on that port gets no more connection attempts.
    let attempts = 0;
    await listen(() => attempts++, { port: server.port });
    // Ten reconnect periods: a loop still running would have connected by then.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(attempts).toBe(0);
  });

  it('refuses a port where nothing listens with CONSOLE_UNAVAILABLE', async () => {
    const { server, sockets, port } = await listen(() => {});
    await closeServer(server, sockets);
    const err = await openConsole(parseConsoleSpec(`tcp:127.0.0.1:${port}`), { log: silentLogger }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConsoleError);
    expect(err).toMatchObject({ code: 'CONSOLE_UNAVAILABLE' });
    expect((err as Error).message).toBe(
      `console tcp:127.0.0.1:${port} is unavailable: nothing accepts connections at 127.0.0.1:${port} ` +
        '(is ser2net running, in raw mode, on that port?)',
    );
  });
});

describe('console over a unix socket (QEMU)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'console-unix-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
  });

  it('reads lines from the socket', async () => {
    const socketPath = path.join(dir, 'serial.sock');
    await listen((s) => s.write('U-Boot 2023.01 (Jan 01 2023)\r\n=> '), { path: socketPath });
    const capture = track(
      await openConsole(parseConsoleSpec(`unix:${socketPath}`), { log: silentLogger, idleFlushMs: 20 }),
    );
    expect((await capture.waitFor(/^=> $/, { timeoutMs: 10_000, since: 0 }))?.index).toBe(1);
    expect(capture.lines()).toEqual(['U-Boot 2023.01 (Jan 01 2023)', '=> ']);
  });

  it('refuses a missing socket with CONSOLE_UNAVAILABLE naming the path', async () => {
    const socketPath = path.join(dir, 'absent.sock');
    const err = await openConsole(parseConsoleSpec(`unix:${socketPath}`), { log: silentLogger }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({
      code: 'CONSOLE_UNAVAILABLE',
      message: expect.stringContaining(`${socketPath} does not exist`) as string,
    });
  });
});

describe('console on a serial device (pseudo-terminal)', () => {
  /** A pty whose master is fed from the returned child's stdin; resolves with the slave's path. */
  async function pseudoTerminal(): Promise<{ device: string; child: ChildProcess; send(text: string): void }> {
    const child = spawn('script', ['-q', '-c', 'tty; exec sleep 600', '/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    cleanups.push(async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise<void>((resolve) => child.once('close', () => resolve()));
      child.kill('SIGKILL');
      await gone;
    });
    const device = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`script exited (${code}) before printing the pty: ${out}`)));
      child.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const m = /^(\/dev\/pts\/\d+)\r?\n/.exec(out);
        if (m) resolve(m[1] as string);
      });
    });
    child.stdout.resume();
    child.stdin.on('error', () => {});
    return { device, child, send: (text) => child.stdin.write(text) };
  }

  it('sets the line to the spec\'s baud rate, raw, no echo, and reads what the "board" sends', async () => {
    const pty = await pseudoTerminal();
    const capture = track(await openConsole(parseConsoleSpec(`serial:${pty.device}@57600`), { log: silentLogger }));
    const { stdout } = await execFileAsync('stty', ['-F', pty.device, '-a']);
    expect(stdout).toMatch(/speed 57600 baud/);
    expect(stdout).toMatch(/(^|\s)-echo(\s|$)/);
    expect(stdout).toMatch(/(^|\s)-icanon(\s|$)/); // raw
    expect(stdout).toMatch(/(^|\s)clocal(\s|$)/);

    pty.send('Booting Linux on physical CPU 0x0\r\n[    0.000000] Linux version 6.1.0\r\n');
    const match = await capture.waitFor(/Linux version (\S+)/, { timeoutMs: 10_000, since: 0 });
    expect(match).toMatchObject({ line: '[    0.000000] Linux version 6.1.0', index: 1 });
    expect(capture.text()).toBe('Booting Linux on physical CPU 0x0\r\n[    0.000000] Linux version 6.1.0\r\n');
    await capture.close();
    expect(capture.stats().connected).toBe(false);
  });

  it('refuses a missing device and a file that is not a terminal with CONSOLE_UNAVAILABLE', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'console-serial-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const missing = await openConsole(parseConsoleSpec(`serial:${dir}/ttyUSB9@115200`), { log: silentLogger }).catch(
      (e: unknown) => e,
    );
    expect(missing).toMatchObject({
      code: 'CONSOLE_UNAVAILABLE',
      message:
        `console serial:${dir}/ttyUSB9@115200 is unavailable: ${dir}/ttyUSB9 does not exist ` +
        '(adapter unplugged, or another name: see ls -l /dev/serial/by-id/)',
    });
    const file = path.join(dir, 'not-a-tty');
    await writeFile(file, 'x');
    const notTty = await openConsole(parseConsoleSpec(`serial:${file}`), { log: silentLogger }).catch(
      (e: unknown) => e,
    );
    expect(notTty).toMatchObject({
      code: 'CONSOLE_UNAVAILABLE',
      message: expect.stringContaining(`${file} is not a terminal device`) as string,
    });
  });
});
