/**
 * Runs an external program for a reset driver (a `cmd:` spec, libgpiod's tools) with a time limit.
 * The child gets its own process group so a timeout kills everything it started (a shell's
 * children, a relay tool's helpers), not only the shell.
 */
import { spawn } from 'node:child_process';

export interface ProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
}

/** Keep only the end of a stream: the last lines say why a command failed. */
const KEEP_BYTES = 4096;

function appendTail(buffer: string, chunk: Buffer): string {
  const text = buffer + chunk.toString('utf8');
  return text.length > KEEP_BYTES ? text.slice(-KEEP_BYTES) : text;
}

/** The last few lines of a command's output, on one line, for an error message. */
export function outputTail(text: string, maxLines = 5): string {
  const lines = text
    .trim()
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.slice(-maxLines).join(' | ');
}

/**
 * Resolves with the outcome however the program ends; rejects only when it cannot start
 * (ENOENT for a missing tool: the error's `code` says so).
 */
export function runProcess(file: string, args: readonly string[], o: RunOptions): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      env: o.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // own process group, killed as a whole on timeout
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    child.stdout.on('data', (chunk: Buffer) => (stdout = appendTail(stdout, chunk)));
    child.stderr.on('data', (chunk: Buffer) => (stderr = appendTail(stderr, chunk)));
    // A pipe's read error ends only that output (what came so far is kept); unheard it would be uncaught.
    child.stdout.on('error', () => {});
    child.stderr.on('error', () => {});

    const killGroup = () => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // The group is already gone.
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, o.timeoutMs);

    // Kept for the child's whole life: a second 'error' (a failed kill) must not be uncaught.
    child.on('error', (err) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      reject(err);
    });
    // 'close' (not 'exit'): the output pipes are drained by then.
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      // A background child the command left behind still holds the group: end it with the command.
      if (timedOut) killGroup();
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}
