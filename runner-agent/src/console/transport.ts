/**
 * Opens the byte stream behind a console spec (spec.ts). One attempt, no retries: capture.ts
 * decides when to try again. Every stream is read-only — the agent never types into a board's
 * console, so a stray byte can never interrupt U-Boot's autoboot.
 *
 * serial: the device is opened O_RDONLY | O_NOCTTY | O_NONBLOCK (non-blocking, so the open never
 * waits for a carrier signal, and the agent never becomes the tty's controlling process), then
 * coreutils' `stty -F <device> <baud> raw -echo clocal -crtscts` sets the line while our
 * descriptor holds it open (settings stay as long as one descriptor is open), and the descriptor
 * is read through Node's tty.ReadStream, which polls it with epoll: no thread sits blocked in a
 * read(), and destroy() ends the read at once. `clocal -crtscts` because a 3-wire USB-serial
 * lead (TX, RX, GND) has no modem or flow-control lines. No npm package is needed.
 * The agent's user needs read access to the device (Debian: the `dialout` group).
 *
 * tcp: a plain TCP connection (ser2net in raw mode), with a connection timeout.
 * unix: a unix stream socket (QEMU's `-serial unix:<path>,server=on,wait=off`).
 */
import { execFile } from 'node:child_process';
import { constants, open, close } from 'node:fs';
import net from 'node:net';
import tty from 'node:tty';
import { promisify } from 'node:util';
import { formatConsoleSpec, type ConsoleSpec } from './spec.js';

const openAsync = promisify(open);
const execFileAsync = promisify(execFile);

/** The stable code an unreachable console carries (to go into the protocol's error table). */
export const CONSOLE_UNAVAILABLE = 'CONSOLE_UNAVAILABLE';

/** A console that cannot be opened or read. `code` is stable; the message says what is wrong. */
export class ConsoleError extends Error {
  readonly code = CONSOLE_UNAVAILABLE;
  constructor(
    readonly spec: string,
    reason: string,
  ) {
    super(`console ${spec} is unavailable: ${reason}`);
    this.name = 'ConsoleError';
  }
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const STTY_TIMEOUT_MS = 5000;

export interface OpenStreamOptions {
  connectTimeoutMs?: number;
  /** Abandons the attempt (close() during a reconnect); the promise rejects with the reason. */
  signal?: AbortSignal;
}

/** What errno codes mean to someone wiring a lab. */
function describeOpenError(err: NodeJS.ErrnoException, device: string): string {
  switch (err.code) {
    case 'ENOENT':
      return `${device} does not exist (adapter unplugged, or another name: see ls -l /dev/serial/by-id/)`;
    case 'EACCES':
    case 'EPERM':
      return `no permission to read ${device} (add the agent's user to the group owning it, usually dialout)`;
    case 'EBUSY':
      return `${device} is busy (opened exclusively by another program)`;
    case 'ENXIO':
    case 'ENODEV':
      return `${device} has no device behind it (ENXIO/ENODEV: adapter gone?)`;
    default:
      return `cannot open ${device}: ${err.message}`;
  }
}

async function openSerial(
  spec: Extract<ConsoleSpec, { kind: 'serial' }>,
  text: string,
  signal: AbortSignal | undefined,
): Promise<net.Socket> {
  let fd: number;
  try {
    fd = await openAsync(spec.device, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
  } catch (err) {
    throw new ConsoleError(text, describeOpenError(err as NodeJS.ErrnoException, spec.device));
  }
  let handedOver = false;
  try {
    if (!tty.isatty(fd))
      throw new ConsoleError(
        text,
        `${spec.device} is not a terminal device (expected a serial port such as /dev/ttyUSB0)`,
      );
    signal?.throwIfAborted();
    try {
      await execFileAsync('stty', ['-F', spec.device, String(spec.baud), 'raw', '-echo', 'clocal', '-crtscts'], {
        timeout: STTY_TIMEOUT_MS,
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      signal?.throwIfAborted();
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      if (e.code === 'ENOENT') throw new ConsoleError(text, 'the stty program is missing (Debian package coreutils)');
      throw new ConsoleError(
        text,
        `stty could not set ${spec.device} to ${spec.baud} baud raw: ${(e.stderr ?? '').trim() || e.message}`,
      );
    }
    let stream: tty.ReadStream;
    try {
      stream = new tty.ReadStream(fd);
    } catch (err) {
      throw new ConsoleError(text, `cannot read ${spec.device}: ${(err as Error).message}`);
    }
    handedOver = true; // the stream owns the descriptor now: destroy() closes it
    return stream;
  } finally {
    if (!handedOver) close(fd, () => {});
  }
}

function connectSocket(
  options: net.NetConnectOpts,
  text: string,
  what: string,
  hint: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const socket = net.connect(options);
    const stopWaiting = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off('error', onError);
    };
    const fail = (err: unknown) => {
      stopWaiting();
      socket.on('error', () => {}); // errors after we gave up are of no interest
      socket.destroy();
      reject(err);
    };
    const onConnect = () => {
      stopWaiting();
      resolve(socket);
    };
    const onError = (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'ECONNREFUSED'
          ? `nothing accepts connections at ${what} (${hint})`
          : err.code === 'ENOENT'
            ? `${what} does not exist (${hint})`
            : `cannot connect to ${what}: ${err.code ?? err.message}`;
      fail(new ConsoleError(text, why));
    };
    const onAbort = () => fail(signal?.reason);
    const timer = setTimeout(
      () => fail(new ConsoleError(text, `no connection to ${what} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.once('connect', onConnect);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * One attempt to open the console. Resolves with a readable socket-like stream (for serial a
 * tty.ReadStream, which is a net.Socket); rejects with a ConsoleError, or with `signal.reason`
 * when aborted. Nothing stays open after a rejection.
 */
export async function openConsoleStream(spec: ConsoleSpec, o: OpenStreamOptions = {}): Promise<net.Socket> {
  const text = formatConsoleSpec(spec);
  o.signal?.throwIfAborted();
  const timeoutMs = o.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  switch (spec.kind) {
    case 'serial':
      return openSerial(spec, text, o.signal);
    case 'tcp':
      return connectSocket(
        { host: spec.host, port: spec.port },
        text,
        `${spec.host}:${spec.port}`,
        'is ser2net running, in raw mode, on that port?',
        timeoutMs,
        o.signal,
      );
    case 'unix':
      return connectSocket(
        { path: spec.path },
        text,
        spec.path,
        'is QEMU running with -serial unix:<path>,server=on,wait=off?',
        timeoutMs,
        o.signal,
      );
  }
}
