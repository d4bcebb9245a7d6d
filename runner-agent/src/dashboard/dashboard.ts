/**
 * The dashboard's routes on the agent's own port (ws/server.ts answers them): the page and its
 * two assets, the login form, the live feed (server-sent events), the lab snapshot as JSON, and
 * each finished job's log from its record in `<stateDir>/jobs/`.
 *
 * Every answer carries a strict Content-Security-Policy: the page loads its script, its style and
 * its events from the agent and nothing from anywhere else, runs no inline script, and cannot be
 * framed. Everything shown is read-only: the dashboard has no route that changes the lab.
 */
import { readFile } from 'node:fs/promises';
import type http from 'node:http';
import path from 'node:path';
import { plain, type HttpRoute } from '../ws/server.js';
import type { LabFeed } from '../lab-view.js';
import type { Logger } from '../log.js';
import { DashboardSessions } from './sessions.js';
import { LiveFeed } from './live-feed.js';
import { loginPage, PAGE_HTML, PAGE_ICON } from './page-html.js';
import { PAGE_CSS } from './page-css.js';
import { PAGE_JS } from './page-js.js';

export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** A login body is a form with one token in it. */
const MAX_LOGIN_BODY = 1024;
/** A job's log served whole up to this; past it the start and the end, with what was cut said between. */
const MAX_SERVED_LOG = 8 * 1024 * 1024;

export interface DashboardOptions {
  lab: LabFeed;
  log: Logger;
  /** `<stateDir>/jobs`: the job records. */
  recordDir: string;
  /** Tokens that open the dashboard: the agent token and the config's read-only one. */
  tokens: readonly string[];
  /** The agent speaks TLS: the session cookie is Secure. */
  secure: boolean;
  maxClients: number;
  /** Where a holder's `owner/repo run N` links to: `<base>/<owner>/<repo>/actions/runs/<N>`. */
  runLinkBase: string;
  agentVersion: string;
  /** Live feed tuning, for tests. */
  live?: { intervalMs?: number; maxBuffered?: number; keepAliveMs?: number };
}

function headers(type: string, extra: http.OutgoingHttpHeaders = {}): http.OutgoingHttpHeaders {
  return {
    'Content-Type': type,
    'Content-Security-Policy': CONTENT_SECURITY_POLICY,
    'X-Content-Type-Options': 'nosniff',
    'X-Frame-Options': 'DENY',
    'Referrer-Policy': 'no-referrer',
    'Cache-Control': 'no-store',
    ...extra,
  };
}

function send(res: http.ServerResponse, status: number, type: string, body: string | Buffer, extra = {}): void {
  res.writeHead(status, headers(type, { 'Content-Length': Buffer.byteLength(body), ...extra }));
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function redirect(res: http.ServerResponse, to: string, extra: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(303, headers('text/plain; charset=utf-8', { Location: to, 'Content-Length': 0, ...extra }));
  res.end();
}

export class Dashboard {
  readonly sessions: DashboardSessions;
  readonly live: LiveFeed;
  private readonly routes = new Map<string, HttpRoute>();

  constructor(private readonly o: DashboardOptions) {
    this.sessions = new DashboardSessions(o.tokens, o.secure);
    this.live = new LiveFeed({
      lab: o.lab,
      log: o.log,
      maxClients: o.maxClients,
      ...o.live,
      decorate: () => ({ agent: o.agentVersion, runLinkBase: o.runLinkBase }),
    });
    const get = (handle: HttpRoute['handle']): HttpRoute => ({ methods: ['GET'], handle });
    const authed =
      (
        handle: HttpRoute['handle'],
        otherwise: (res: http.ServerResponse) => void = unauthorized,
      ): HttpRoute['handle'] =>
      (req, res, body) =>
        this.sessions.authorized(req) ? handle(req, res, body) : otherwise(res);
    this.routes.set(
      '/',
      get((_req, res) => redirect(res, '/dashboard/')),
    );
    this.routes.set(
      '/dashboard',
      get((_req, res) => redirect(res, '/dashboard/')),
    );
    this.routes.set(
      '/dashboard/',
      get(authed((_req, res) => send(res, 200, 'text/html; charset=utf-8', PAGE_HTML), toLogin)),
    );
    // The assets hold nothing secret: the login page uses the style before anyone is logged in.
    this.routes.set(
      '/dashboard/app.css',
      get((_req, res) => send(res, 200, 'text/css; charset=utf-8', PAGE_CSS)),
    );
    this.routes.set(
      '/dashboard/app.js',
      get((_req, res) => send(res, 200, 'text/javascript; charset=utf-8', PAGE_JS)),
    );
    this.routes.set(
      '/dashboard/icon.svg',
      get((_req, res) => send(res, 200, 'image/svg+xml', PAGE_ICON)),
    );
    this.routes.set('/dashboard/login', {
      methods: ['GET', 'POST'],
      maxBody: MAX_LOGIN_BODY,
      handle: (req, res, body) => this.login(req, res, body),
    });
    this.routes.set('/dashboard/logout', {
      methods: ['POST'],
      handle: (req, res) => redirect(res, '/dashboard/login', { 'Set-Cookie': this.sessions.end(req) }),
    });
    this.routes.set(
      '/dashboard/events',
      get(
        authed((req, res) => {
          if (!this.live.accept(req, res))
            send(res, 503, 'text/plain; charset=utf-8', `too many dashboard pages open (${o.maxClients})\n`, {
              'Retry-After': '10',
            });
        }),
      ),
    );
    this.routes.set(
      '/dashboard/api/lab',
      get(authed((_req, res) => send(res, 200, 'application/json', JSON.stringify(this.o.lab.snapshot())))),
    );
  }

  /** The route for a path, or undefined when the dashboard has none there. */
  route(pathname: string): HttpRoute | undefined {
    const fixed = this.routes.get(pathname);
    if (fixed) return fixed;
    const job = /^\/dashboard\/jobs\/([0-9a-f]{1,32})\/(log|tail)$/.exec(pathname);
    if (!job) return undefined;
    const [, id, what] = job as unknown as [string, string, 'log' | 'tail'];
    return {
      methods: ['GET'],
      handle: (req, res) => {
        if (!this.sessions.authorized(req)) return unauthorized(res);
        return what === 'log' ? this.jobLog(res, id) : this.jobTail(res, id);
      },
    };
  }

  private async login(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): Promise<void> {
    if (req.method !== 'POST') {
      if (this.sessions.authorized(req)) return redirect(res, '/dashboard/');
      return send(res, 200, 'text/html; charset=utf-8', loginPage());
    }
    const token = new URLSearchParams(body.toString('utf8')).get('token') ?? undefined;
    if (!this.sessions.tokenAccepted(token?.trim())) {
      this.o.log.warn('dashboard login refused: wrong token', { remote: req.socket.remoteAddress });
      // A wrong guess costs the guesser a second: no quick trials of many tokens on one connection.
      await new Promise((r) => setTimeout(r, 1000));
      return send(res, 401, 'text/html; charset=utf-8', loginPage('That token is not accepted here.'));
    }
    this.o.log.info('dashboard login', { remote: req.socket.remoteAddress });
    redirect(res, '/dashboard/', { 'Set-Cookie': this.sessions.create() });
  }

  /** A running job's log tail as JSON (the page fetches it when it opens a job mid-run). */
  private jobTail(res: http.ServerResponse, id: string): void {
    const tail = this.o.lab.logTail(id);
    if (!tail) return send(res, 404, 'text/plain; charset=utf-8', `job ${id} is not running\n`);
    send(res, 200, 'application/json', JSON.stringify({ job: id, lines: tail }));
  }

  /**
   * A finished job's log: the record's `<job>.log` (redacted by the job as it wrote it: no report
   * secret, never the token) and its console, `<job>.console.log`, when it had one.
   */
  private async jobLog(res: http.ServerResponse, id: string): Promise<void> {
    const read = (name: string) =>
      readFile(path.join(this.o.recordDir, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
    const [log, consoleLog] = await Promise.all([read(`${id}.log`), read(`${id}.console.log`)]);
    if (log === undefined && consoleLog === undefined)
      return send(res, 404, 'text/plain; charset=utf-8', `no log kept for job ${id}\n`);
    const parts = [
      `# rpi-flash job ${id}\n`,
      clip(log ?? Buffer.from('(no job log kept)\n')),
      ...(consoleLog ? ['\n# console\n', clip(consoleLog)] : []),
    ];
    send(res, 200, 'text/plain; charset=utf-8', Buffer.concat(parts.map((p) => Buffer.from(p))));
  }

  close(): void {
    this.live.close();
  }
}

function clip(text: Buffer): Buffer {
  if (text.length <= MAX_SERVED_LOG) return text;
  const half = MAX_SERVED_LOG / 2;
  const cut = Buffer.from(`\n… ${text.length - MAX_SERVED_LOG} bytes not shown …\n`);
  return Buffer.concat([text.subarray(0, half), cut, text.subarray(text.length - half)]);
}

function unauthorized(res: http.ServerResponse): void {
  plain(res, 401, 'AUTH_FAILED: log in at /dashboard/login or send Authorization: Bearer <token>\n');
}

function toLogin(res: http.ServerResponse): void {
  redirect(res, '/dashboard/login');
}
