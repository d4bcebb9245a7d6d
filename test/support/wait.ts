/**
 * Waiting in tests for something that happens in its own time (a message, a log line, a file).
 * A fixed sleep fails on a loaded machine and a bare loop hangs until vitest's timeout, which
 * does not say what was awaited; this polls, and past its deadline fails naming what it waited for.
 */

/** How long a test waits for one thing: a safety net for a loaded machine, not a timing figure. */
export const WAIT_MS = 30_000;

/** Resolves once `check()` is true; after `ms`, throws `waited … for <what>` (plus `detail()`). */
export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  what: string,
  o: { ms?: number; detail?: () => string } = {},
): Promise<void> {
  const ms = o.ms ?? WAIT_MS;
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what}${o.detail ? `: ${o.detail()}` : ''}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
