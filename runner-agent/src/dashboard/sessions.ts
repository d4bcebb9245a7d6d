/**
 * Who may read the dashboard. A browser cannot put an `Authorization` header on a page load or on an
 * EventSource, so the token is typed once into the login form (a POST: it never appears in a URL, a
 * history entry, a Referer or an access log) and exchanged for a session cookie that is:
 *   - HttpOnly: the page's script cannot read it, so an injected script could not carry it away;
 *   - SameSite=Strict: no other site's page can make the browser send it (no cross-site requests
 *     riding on it, and the dashboard has no state-changing request besides login and logout);
 *   - Secure when the agent speaks TLS; Path=/dashboard; a random 256-bit id, never the token itself,
 *     so a leaked cookie dies with its session (12 h, or logout, or an agent restart) while the
 *     token stays valid for the lab's clients.
 * Scripts (curl) may send `Authorization: Bearer <token>` instead. Both the agent token and the
 * config's read-only `dashboard.token` are accepted; every comparison is constant-time (ws/server.ts).
 */
import { randomBytes } from 'node:crypto';
import type http from 'node:http';
import { bearerToken, tokenMatches } from '../ws/server.js';

export const SESSION_COOKIE = 'rpi_flash_session';
/** How long a login lasts. */
export const SESSION_TTL_MS = 12 * 3600 * 1000;
/** Sessions held at once; past this the oldest is forgotten (its browser logs in again). */
export const MAX_SESSIONS = 256;

export class DashboardSessions {
  /** Session id → expiry (epoch ms), in creation order (the Map keeps it): the first is the oldest. */
  private readonly sessions = new Map<string, number>();

  constructor(
    private readonly tokens: readonly string[],
    private readonly secure: boolean,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether `presented` is one of the accepted tokens (each compared in constant time). */
  tokenAccepted(presented: string | undefined): boolean {
    // Every token is compared, matched or not, so the time taken does not say which one matched.
    return this.tokens.map((t) => tokenMatches(presented, t)).includes(true);
  }

  /** A request that carries an accepted bearer token or a live session cookie. */
  authorized(req: http.IncomingMessage): boolean {
    if (req.headers.authorization !== undefined) return this.tokenAccepted(bearerToken(req.headers.authorization));
    const id = cookieValue(req.headers.cookie, SESSION_COOKIE);
    if (id === undefined) return false;
    const expires = this.sessions.get(id);
    if (expires === undefined) return false;
    if (expires <= this.now()) {
      this.sessions.delete(id);
      return false;
    }
    return true;
  }

  /** A new session; the value is the Set-Cookie header that hands it to the browser. */
  create(): string {
    const now = this.now();
    for (const [id, expires] of this.sessions) if (expires <= now) this.sessions.delete(id);
    while (this.sessions.size >= MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    const id = randomBytes(32).toString('base64url');
    this.sessions.set(id, now + SESSION_TTL_MS);
    return this.cookie(id, SESSION_TTL_MS / 1000);
  }

  /** End the request's session; the value is the Set-Cookie header that clears it. */
  end(req: http.IncomingMessage): string {
    const id = cookieValue(req.headers.cookie, SESSION_COOKIE);
    if (id !== undefined) this.sessions.delete(id);
    return this.cookie('', 0);
  }

  get size(): number {
    return this.sessions.size;
  }

  private cookie(value: string, maxAge: number): string {
    return [
      `${SESSION_COOKIE}=${value}`,
      'Path=/dashboard',
      'HttpOnly',
      'SameSite=Strict',
      `Max-Age=${maxAge}`,
      ...(this.secure ? ['Secure'] : []),
    ].join('; ');
  }
}

/** One cookie's value from a Cookie header. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
