/**
 * The agent as a process: --help, config errors, the root check, SIGHUP reload, the ordered SIGTERM
 * shutdown (step by step from its log: new work refused, the running job cancelled and awaited,
 * connections, listeners and the simulated boards closed, staged folders deleted, exit 0) and the
 * second signal that exits at once (130), tested by forking.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { connectAgent } from '../../src/protocol/client.js';
import type { JobResult } from '../../src/protocol/messages.js';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';
import { sha256File } from '../support/lab.js';

const CLI = path.resolve('runner-agent/src/cli.ts');
const token = 'cli-test-token-0123456789';
let child: ChildProcess | undefined;
let dir: string | undefined;

afterEach(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  child = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** How long a test waits for one step of the agent: a safety net for a loaded machine, not a figure. */
const DEADLINE_MS = 60_000;

interface Forked {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  /** How the process ended; after DEADLINE_MS an error naming `what` (e.g. "after --help"). */
  exited(what: string): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Fork the CLI. `uid` makes the child's process.getuid() answer that number, so the root check
 * runs the same whoever runs the tests (CI and this lab's sessions are root; a laptop is not).
 */
function run(args: string[], o: { uid?: number } = {}): Forked {
  const fakeUid = o.uid === undefined ? [] : ['--import', `data:text/javascript,process.getuid=()=>${o.uid}`];
  const proc = spawn(process.execPath, ['--import', 'tsx', ...fakeUid, CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Taken at once, so an exit that comes before the test asks for it is not missed.
  const exit = once(proc, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  let out = '';
  let err = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const forked: Forked = {
    proc,
    out: () => out,
    err: () => err,
    exited: async (what) => {
      const [code, signal] = await within(forked, exit, `to exit ${what}`);
      return { code, signal };
    },
  };
  return forked;
}

/** `p`, or after DEADLINE_MS an error that names the step (`what`) and shows the agent's output. */
async function within<T>(r: Forked, p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`waited ${DEADLINE_MS} ms ${what}; the agent's output:\n${r.out()}${r.err()}`)),
      DEADLINE_MS,
    );
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Expect each pattern on a later log line than the one before; a miss names the step that is
 * missing or out of order, and the log.
 */
function expectInOrder(log: string, steps: RegExp[]): void {
  const lines = log.split('\n');
  let at = -1;
  for (const step of steps) {
    const found = lines.findIndex((line, i) => i > at && step.test(line));
    if (found < 0) {
      const anywhere = lines.findIndex((line) => step.test(line));
      const why = anywhere < 0 ? 'is missing' : `is at line ${anywhere + 1}, before the step ahead of it`;
      throw new Error(`shutdown step ${step} ${why}; the log:\n${log}`);
    }
    at = found;
  }
}

/** Fork the agent on a one-board lab whose board never shows up, and leave a job running on it. */
async function runningJob(): Promise<{ r: Forked; job: Promise<JobResult>; tftpRoot: string }> {
  const config = await makeLab(['mute,02:00:00:00:02:01,127.0.0.71,sim:no-show']);
  const r = run(['--config', config, '--allow-root']);
  child = r.proc;
  await waitFor(r, () => /"agent listening" url=/.test(r.out()), 'the agent to listen');
  const url = /"agent listening" url=(\S+)/.exec(r.out())![1]!;
  const image = path.join(dir!, 'img');
  await writeSampleImage(image, 1024 * 1024, 1);
  const sha256 = await sha256File(image);
  const conn = await connectAgent({ url, token });
  await conn.lease('mute');
  await conn.upload({ path: image, sha256, size: 1024 * 1024, compression: 'none' });
  const job = conn.flash({ sha256 });
  const tftpRoot = path.join(dir!, 'tftp');
  let ended: JobResult | undefined;
  void job.then(
    (result) => (ended = result),
    () => {},
  );
  await waitFor(
    r,
    () => ended !== undefined || r.out().includes('phase=transfer'),
    'the job to reach the transfer phase',
  );
  if (ended) throw new Error(`the job ended before the transfer phase: ${ended.code}: ${ended.message}\n${r.out()}`);
  expect(await readdir(tftpRoot)).toEqual(['02-00-00-00-02-01']);
  return { r, job, tftpRoot };
}

async function waitFor(r: Forked, check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (!check()) {
    if (Date.now() > deadline)
      throw new Error(`waited ${DEADLINE_MS} ms for ${what}; the agent's output:\n${r.out()}${r.err()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function makeLab(rows: string[]): Promise<string> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-cli-'));
  await writeFile(path.join(dir, 'targets.csv'), ['name,mac,ip,reset', ...rows].join('\n') + '\n');
  await writeFile(
    path.join(dir, 'agent.json'),
    JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      token,
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      flash: { partSize: '1MiB' },
      timeouts: { boardShow: 60 },
      defaultLayout: 'whole',
    }),
  );
  return path.join(dir, 'agent.json');
}

// Each wait is a safety net of DEADLINE_MS that names its step; the tests' own limit outlasts them.
describe('rpi-flash-agent process', { timeout: 4 * DEADLINE_MS }, () => {
  it('prints --help listing every option', async () => {
    const r = run(['--help']);
    const { code } = await r.exited('after --help');
    expect(code).toBe(0);
    for (const flag of [
      '--config',
      '--listen',
      '--tls-cert',
      '--token-file',
      '--targets',
      '--tftp-root',
      '--tftp-port',
      '--state-dir',
      '--boot-check',
      '--log-level',
      '--check',
    ])
      expect(r.out()).toContain(flag);
  });

  it('lists every configuration problem and exits 2', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-cli-'));
    await writeFile(path.join(dir, 'agent.json'), JSON.stringify({ tftp: { port: -1 }, timeouts: { boot: 'soon' } }));
    const r = run(['--config', path.join(dir, 'agent.json'), '--allow-root']);
    const { code } = await r.exited('after refusing the configuration');
    expect(code).toBe(2);
    expect(r.err()).toContain('"token" or "tokenFile" is required');
    expect(r.err()).toContain('"targets" is required');
    expect(r.err()).toContain('"tftp.port"');
    expect(r.err()).toContain('"timeouts.boot"');
  });

  it('reloads the targets on SIGHUP and keeps the old database when the new one is bad', async () => {
    const config = await makeLab(['one,02:00:00:00:01:01,127.0.0.61,sim']);
    const r = run(['--config', config, '--allow-root']);
    child = r.proc;
    await waitFor(r, () => /"agent listening" url=/.test(r.out()), 'the agent to listen');
    const url = /"agent listening" url=(\S+)/.exec(r.out())![1]!;
    await writeFile(
      path.join(dir!, 'targets.csv'),
      'name,mac,ip,reset\none,02:00:00:00:01:01,127.0.0.61,sim\ntwo,02:00:00:00:01:02,127.0.0.62,sim\n',
    );
    child.kill('SIGHUP');
    await waitFor(r, () => /"targets reloaded" .*count=2/.test(r.out()), 'the reload');
    const conn = await connectAgent({ url, token });
    await expect(conn.lease('two')).resolves.toMatchObject({ target: { name: 'two' } });
    conn.close();
    await writeFile(path.join(dir!, 'targets.csv'), 'name,mac,ip,reset\nthree,not-a-mac,127.0.0.63,sim\n');
    child.kill('SIGHUP');
    await waitFor(
      r,
      () => /"targets reload failed; keeping the previous database"/.test(r.out()),
      'the refused reload',
    );
    expect(r.out()).toMatch(/targets\.csv:2/);
  });

  it('on SIGTERM stops in order: refuses new work, ends the running job, closes everything, exits 0', async () => {
    const { r, job, tftpRoot } = await runningJob();
    child!.kill('SIGTERM');
    const result = await within(r, job, 'for the job result after SIGTERM');
    expect(result.code).toBe('SHUTTING_DOWN');
    const { code } = await r.exited('after the SIGTERM shutdown');
    expect(code, r.out() + r.err()).toBe(0);
    expect(await readdir(tftpRoot)).toEqual([]);
    expectInOrder(r.out(), [
      /INFO +"shutting down" signal=SIGTERM$/,
      /INFO +"stopping: refusing new work"$/,
      /INFO +"stopping: ending jobs and leases" jobs=1$/,
      // The job is cancelled and awaited (its staged folder and reset line released before it
      // ends): its end and the lease's release come before the sockets close.
      /ERROR "SHUTTING_DOWN: the agent is stopping" target=mute job=\w+ phase=transfer$/,
      /INFO +"job ended" target=mute job=\w+ code=SHUTTING_DOWN ok=false/,
      /INFO +"lease released" target=mute/,
      /INFO +"stopping: closing client connections"$/,
      /INFO +"stopping: closing the TFTP server"$/,
      /INFO +"stopping: closing the simulated lab"$/,
      /INFO +"stopping: deleting staged target folders"$/,
      /INFO +"stopping: writing the board states"$/,
      /INFO +"stopping: closing the image store"$/,
      /INFO +stopped$/,
    ]);
  });

  it('a second signal during the shutdown exits at once with 130', async () => {
    const { r, job } = await runningJob();
    // Two signals back to back, as an operator pressing Ctrl-C twice: stopped, the process cannot
    // finish the first shutdown before the second signal arrives, so the test does not race it.
    // Two different signals: the kernel merges a second pending SIGTERM into the first.
    // No result: the agent goes without ending the job (its next start deletes what it left).
    const lost = expect(job).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
    child!.kill('SIGSTOP');
    child!.kill('SIGTERM');
    child!.kill('SIGINT');
    child!.kill('SIGCONT');
    const { code, signal } = await r.exited('after the second signal');
    expect({ code, signal }, r.out() + r.err()).toEqual({ code: 130, signal: null });
    await lost;
    expectInOrder(r.out(), [
      /INFO +"shutting down" signal=SIG(TERM|INT)$/,
      /WARN +"second signal: exiting at once" signal=SIG(TERM|INT)$/,
    ]);
    // At once: none of the steps after the running job's end (which takes a 20 ms poll at least).
    expect(r.out()).not.toMatch(/"stopping: closing client connections"|INFO +stopped/);
  });

  it('refuses to run as root without --allow-root', async () => {
    const config = await makeLab(['one,02:00:00:00:03:01,127.0.0.81,sim']);
    const r = run(['--config', config, '--check'], { uid: 0 });
    const { code } = await r.exited('after refusing root');
    expect(code).toBe(2);
    expect(r.err()).toContain('refusing to run as root');
    expect(r.out()).toBe('');
  });

  it('runs as root with --allow-root, and as another user without it', async () => {
    const config = await makeLab(['one,02:00:00:00:03:01,127.0.0.81,sim']);
    for (const [uid, args] of [
      [0, ['--allow-root']],
      [1000, []],
    ] as const) {
      const r = run(['--config', config, '--check', ...args], { uid });
      const { code } = await r.exited(`after --check as uid ${uid}`);
      expect(code, `uid ${uid}: ${r.err()}`).toBe(0);
      expect(r.out()).toContain('configuration OK; 1 target(s): one');
    }
  });
});
