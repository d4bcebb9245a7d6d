/**
 * The dashboard's live updates as server-sent events (one GET /dashboard/events per open page):
 * `snapshot` (the whole lab view: on connect, then at most every `intervalMs` while anything
 * changes) and `log` (a running job's new log and console lines, batched on the same tick).
 *
 * What a page can make the agent hold is bounded: every event is serialised once for all pages;
 * a page whose socket has more than `maxBuffered` bytes unread is dropped (its EventSource
 * reconnects and starts from a fresh snapshot, so it loses nothing it could not get back); log
 * lines beyond `maxLinesPerTick` in one tick are counted, not kept; at most `maxClients` pages at once.
 */
import type http from 'node:http';
import type { LabFeed, LabSnapshot, LogLine } from '../lab-view.js';
import type { Logger } from '../log.js';

export interface LiveFeedOptions {
  lab: LabFeed;
  log: Logger;
  maxClients: number;
  /** Unsent bytes one page may leave queued before it is dropped. */
  maxBuffered?: number;
  /** How often changes are sent at most. */
  intervalMs?: number;
  maxLinesPerTick?: number;
  /** A comment line this often keeps proxies from closing an idle stream and finds dead pages. */
  keepAliveMs?: number;
  /** Extra fields in every snapshot (the agent's version, run-link base). */
  decorate?: (snapshot: LabSnapshot) => object;
}

export interface LiveLogLine extends LogLine {
  job: string;
  target: string;
}

export class LiveFeed {
  private readonly clients = new Set<http.ServerResponse>();
  private dirty = false;
  private lines: LiveLogLine[] = [];
  private droppedLines = 0;
  private timer?: NodeJS.Timeout;
  private readonly keepAlive: NodeJS.Timeout;
  private readonly unsubscribe: () => void;
  /** Pages dropped for reading too slowly, since the start (for tests and the log). */
  slowDropped = 0;

  constructor(private readonly o: LiveFeedOptions) {
    this.unsubscribe = o.lab.subscribe((event) => {
      if (!this.clients.size) return;
      if (event.type === 'changed' || event.type === 'job-ended') this.dirty = true;
      else if (event.type === 'log') {
        if (this.lines.length < (o.maxLinesPerTick ?? 500))
          this.lines.push({ ...event.line, job: event.job, target: event.target });
        else this.droppedLines++;
      } else return;
      this.schedule();
    });
    this.keepAlive = setInterval(() => this.broadcast(': keep-alive\n\n'), o.keepAliveMs ?? 15_000);
    this.keepAlive.unref();
  }

  get size(): number {
    return this.clients.size;
  }

  /** Take a GET /dashboard/events; false (nothing written) when the page limit is reached. */
  accept(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    if (this.clients.size >= this.o.maxClients) return false;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      // Nginx and the like would otherwise hold the events back.
      'X-Accel-Buffering': 'no',
    });
    // The stream is open for as long as the page is: no request timeout applies to it.
    req.socket.setTimeout(0);
    req.socket.setNoDelay(true);
    this.clients.add(res);
    const gone = () => this.clients.delete(res);
    res.on('close', gone);
    res.on('error', gone);
    this.write(res, `retry: 2000\n\n${this.snapshotEvent()}`);
    return true;
  }

  private schedule(): void {
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, this.o.intervalMs ?? 300);
  }

  private flush(): void {
    let out = '';
    if (this.lines.length || this.droppedLines) {
      out += `event: log\ndata: ${JSON.stringify({ lines: this.lines, dropped: this.droppedLines })}\n\n`;
      this.lines = [];
      this.droppedLines = 0;
    }
    if (this.dirty) {
      this.dirty = false;
      out += this.snapshotEvent();
    }
    if (out) this.broadcast(out);
  }

  private snapshotEvent(): string {
    const snapshot = this.o.lab.snapshot();
    return `event: snapshot\ndata: ${JSON.stringify({ ...snapshot, ...this.o.decorate?.(snapshot) })}\n\n`;
  }

  private broadcast(text: string): void {
    for (const res of this.clients) this.write(res, text);
  }

  private write(res: http.ServerResponse, text: string): void {
    if (res.writableLength > (this.o.maxBuffered ?? 1024 * 1024)) {
      this.slowDropped++;
      this.clients.delete(res);
      this.o.log.warn('dashboard page reads too slowly; dropped (it reconnects to a fresh snapshot)', {
        remote: res.socket?.remoteAddress,
        buffered: res.writableLength,
      });
      res.destroy();
      return;
    }
    res.write(text);
  }

  close(): void {
    this.unsubscribe();
    clearTimeout(this.timer);
    clearInterval(this.keepAlive);
    for (const res of this.clients) res.destroy();
    this.clients.clear();
  }
}
