/**
 * Captures a board's console for the length of a job (issue 5 item 5): reads the stream behind a
 * console spec, keeps the raw text for the job's record, turns it into lines (lines.ts) that the
 * job streams as `log` events, and lets a boot check wait for a line matching a pattern.
 *
 * - The first connection must succeed: openConsole() rejects with a ConsoleError (code
 *   CONSOLE_UNAVAILABLE) when the console cannot be opened, so a wrong path or a stopped ser2net
 *   is reported before the board is touched. The job decides whether that is fatal (it is when the
 *   boot check is `console:`).
 * - Later losses are normal — ser2net restarted, a USB adapter re-plugged, a QEMU restarted — and
 *   are repaired: every `reconnectMs` the capture tries again until close(). Output printed while
 *   nothing was connected is lost; stats() counts the reconnects so the record can say so.
 * - The record is the raw text (escape codes and all) of the last `maxRecordBytes` (1 MiB);
 *   stats().droppedBytes says how much earlier text it lost. Lines (cleaned of escape codes, see
 *   lines.ts) are kept for the last `maxLines` and numbered from 0 for the whole capture, so a
 *   number taken by mark() stays valid while older lines are dropped.
 * - Text without a line end (a login prompt) becomes a line after `idleFlushMs` of quiet.
 */
import type net from 'node:net';
import type { Logger } from '../log.js';
import { LineSplitter } from './lines.js';
import { formatConsoleSpec, type ConsoleSpec } from './spec.js';
import { openConsoleStream } from './transport.js';

export { ConsoleError, CONSOLE_UNAVAILABLE } from './transport.js';

export const DEFAULT_MAX_RECORD_BYTES = 1024 * 1024;
export const DEFAULT_MAX_LINES = 20_000;
export const DEFAULT_IDLE_FLUSH_MS = 200;
export const DEFAULT_RECONNECT_MS = 1000;

export interface ConsoleCaptureOptions {
  log: Logger;
  /** Called for every line as it completes; `time` is its arrival (epoch ms, Date.now()). */
  onLine?: (line: string, time: number) => void;
  maxRecordBytes?: number;
  maxLines?: number;
  idleFlushMs?: number;
  reconnectMs?: number;
  connectTimeoutMs?: number;
}

export interface ConsoleMatch {
  /** The matching line, cleaned of escape codes. */
  line: string;
  /** Its number (see mark()). */
  index: number;
  /** When it arrived (epoch ms). */
  time: number;
  /** From the waitFor() call to the match; 0 when the line was already there. */
  ms: number;
}

export interface ConsoleWaitOptions {
  /** How long to wait for a new line to match; lines already there are checked first. */
  timeoutMs: number;
  /** Rejects with `signal.reason` when aborted. */
  signal?: AbortSignal;
  /**
   * The first line number to consider (from mark()). Default: mark() at the call — only new
   * lines, so the old system's login prompt from before a reset can never satisfy a check.
   */
  since?: number;
}

export interface ConsoleStats {
  /** Bytes received over the whole capture. */
  bytes: number;
  /** Lines completed over the whole capture. */
  lines: number;
  /** Bytes of the record dropped to stay within maxRecordBytes. */
  droppedBytes: number;
  /** Connections re-established after a loss. */
  reconnects: number;
  connected: boolean;
}

export interface ConsoleCapture {
  readonly spec: ConsoleSpec;
  /** The number the next line will get: pass it as `since` to ignore everything before now. */
  mark(): number;
  /** The retained lines numbered `since` (default 0) and later. */
  lines(since?: number): string[];
  /** The raw record: the last maxRecordBytes received, decoded as UTF-8. */
  text(): string;
  stats(): ConsoleStats;
  /**
   * Resolves with the first line numbered `since` or later that matches `re` (flags g and y are
   * ignored), or null when `timeoutMs` passes or the capture is closed first.
   */
  waitFor(re: RegExp, o: ConsoleWaitOptions): Promise<ConsoleMatch | null>;
  /** Stops reading and reconnecting, ends a pending partial line, settles waiters with null. */
  close(): Promise<void>;
}

interface StoredLine {
  text: string;
  time: number;
}

interface Waiter {
  re: RegExp;
  since: number;
  started: number;
  settle(match: ConsoleMatch | null): void;
}

export async function openConsole(spec: ConsoleSpec, o: ConsoleCaptureOptions): Promise<ConsoleCapture> {
  const text = formatConsoleSpec(spec);
  const log = o.log.child({ console: text });
  const maxRecordBytes = o.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  const maxLines = o.maxLines ?? DEFAULT_MAX_LINES;
  const idleFlushMs = o.idleFlushMs ?? DEFAULT_IDLE_FLUSH_MS;
  const reconnectMs = o.reconnectMs ?? DEFAULT_RECONNECT_MS;
  const streamOptions = { ...(o.connectTimeoutMs !== undefined ? { connectTimeoutMs: o.connectTimeoutMs } : {}) };

  // Rejects with a ConsoleError: nothing has been set up yet, so nothing needs undoing.
  let stream: net.Socket | undefined = await openConsoleStream(spec, streamOptions);

  let closed = false;
  const record: Buffer[] = [];
  let recordBytes = 0;
  const stats = { bytes: 0, lines: 0, droppedBytes: 0, reconnects: 0 };
  /** Retained lines; stored[0] has the number `firstIndex`. */
  let stored: StoredLine[] = [];
  let firstIndex = 0;
  const waiters = new Set<Waiter>();
  let idleTimer: NodeJS.Timeout | undefined;
  let reconnectTimer: NodeJS.Timeout | undefined;
  let reconnecting: Promise<void> | undefined;
  const stopReconnect = new AbortController();
  let failedAttempts = 0;

  const matcherOf = (re: RegExp) =>
    re.global || re.sticky ? new RegExp(re.source, re.flags.replace(/[gy]/g, '')) : re;

  const onLine = (line: string) => {
    const time = Date.now();
    const index = firstIndex + stored.length;
    stored.push({ text: line, time });
    stats.lines++;
    // Drop in batches: shifting one line off a 20 000-line array per line would be quadratic.
    if (stored.length > maxLines + maxLines / 4) {
      const drop = stored.length - maxLines;
      stored = stored.slice(drop);
      firstIndex += drop;
    }
    try {
      o.onLine?.(line, time);
    } catch (err) {
      log.warn('console line handler threw', { error: (err as Error).message });
    }
    for (const w of [...waiters]) {
      if (index >= w.since && w.re.test(line))
        w.settle({ line, index, time, ms: Math.round(performance.now() - w.started) });
    }
  };
  const splitter = new LineSplitter(onLine);

  const keep = (chunk: Buffer) => {
    record.push(chunk);
    recordBytes += chunk.length;
    while (recordBytes > maxRecordBytes && record.length > 0) {
      const first = record[0] as Buffer;
      const excess = recordBytes - maxRecordBytes;
      if (first.length <= excess) {
        record.shift();
        recordBytes -= first.length;
        stats.droppedBytes += first.length;
      } else {
        record[0] = first.subarray(excess);
        recordBytes -= excess;
        stats.droppedBytes += excess;
      }
    }
  };

  /** Once per capture: a console that keeps sending what breaks the capture must not flood the log. */
  let chunkFailureLogged = false;
  const onData = (chunk: Buffer) => {
    // Whatever a board prints, a chunk that breaks the capture costs that chunk only: the job and
    // the agent go on, and so does the capture.
    try {
      stats.bytes += chunk.length;
      keep(chunk);
      splitter.push(chunk);
      clearTimeout(idleTimer);
      idleTimer = splitter.hasPartial ? setTimeout(flushPartial, idleFlushMs) : undefined;
    } catch (err) {
      if (!chunkFailureLogged) log.error('console chunk dropped', { error: (err as Error)?.stack ?? String(err) });
      chunkFailureLogged = true;
    }
  };
  /** The pending partial line becomes a line (quiet console, lost connection); a failure drops that line only. */
  const flushPartial = () => {
    try {
      splitter.flush();
    } catch (err) {
      log.error('console line dropped', { error: (err as Error)?.stack ?? String(err) });
    }
  };

  const scheduleReconnect = () => {
    if (closed) return;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = undefined;
      reconnecting = openConsoleStream(spec, { ...streamOptions, signal: stopReconnect.signal }).then(
        (s) => {
          reconnecting = undefined;
          if (closed) {
            s.destroy();
            return;
          }
          stats.reconnects++;
          log.info(
            'console reconnected' +
              (failedAttempts ? ` after ${failedAttempts} failed attempt${failedAttempts === 1 ? '' : 's'}` : ''),
          );
          failedAttempts = 0;
          attach(s);
        },
        (err: unknown) => {
          reconnecting = undefined;
          if (closed) return;
          failedAttempts++;
          // One warning per outage, not one per attempt.
          if (failedAttempts === 1)
            log.warn(`console still unavailable; retrying every ${reconnectMs} ms`, { error: (err as Error).message });
          else log.debug('console reconnect failed', { attempt: failedAttempts, error: (err as Error).message });
          scheduleReconnect();
        },
      );
    }, reconnectMs);
  };

  function attach(s: net.Socket) {
    stream = s;
    s.on('data', onData);
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (!closed) log.warn('console read error', { error: err.code ?? err.message });
    });
    s.once('close', () => {
      s.removeAllListeners('data');
      if (stream === s) stream = undefined;
      if (closed) return;
      // The connection's last line ends with it: it must not glue onto the next connection's text.
      clearTimeout(idleTimer);
      idleTimer = undefined;
      flushPartial();
      log.warn(`console connection lost; reconnecting every ${reconnectMs} ms`);
      scheduleReconnect();
    });
  }
  attach(stream);
  log.debug('console capture started');

  const capture: ConsoleCapture = {
    spec,
    mark: () => firstIndex + stored.length,
    lines(since = 0) {
      return stored.slice(Math.max(0, since - firstIndex)).map((l) => l.text);
    },
    text: () => Buffer.concat(record).toString('utf8'),
    stats: () => ({ ...stats, connected: stream !== undefined && !stream.destroyed }),
    waitFor(re, w) {
      const matcher = matcherOf(re);
      const since = w.since ?? capture.mark();
      w.signal?.throwIfAborted();
      for (let i = Math.max(0, since - firstIndex); i < stored.length; i++) {
        const l = stored[i] as StoredLine;
        if (matcher.test(l.text)) return Promise.resolve({ line: l.text, index: firstIndex + i, time: l.time, ms: 0 });
      }
      if (closed) return Promise.resolve(null);
      return new Promise<ConsoleMatch | null>((resolve, reject) => {
        const waiter: Waiter = {
          re: matcher,
          since,
          started: performance.now(),
          settle: (match) => done(() => resolve(match)),
        };
        const onAbort = () => done(() => reject(w.signal?.reason));
        const timer = setTimeout(() => waiter.settle(null), w.timeoutMs);
        const done = (settle: () => void) => {
          if (!waiters.delete(waiter)) return;
          clearTimeout(timer);
          w.signal?.removeEventListener('abort', onAbort);
          settle();
        };
        waiters.add(waiter);
        w.signal?.addEventListener('abort', onAbort, { once: true });
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      clearTimeout(reconnectTimer);
      stopReconnect.abort(new Error('console capture closed'));
      await reconnecting?.catch(() => {});
      const s = stream;
      if (s && !s.destroyed) {
        const gone = new Promise<void>((resolve) => s.once('close', () => resolve()));
        s.destroy();
        await gone;
      }
      stream = undefined;
      clearTimeout(idleTimer);
      splitter.flush();
      for (const w of [...waiters]) w.settle(null);
      log.debug('console capture closed', { bytes: stats.bytes, lines: stats.lines, reconnects: stats.reconnects });
    },
  };
  return capture;
}
