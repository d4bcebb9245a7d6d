/**
 * The agent as a process: --help, config errors, SIGHUP reload, and the ordered SIGTERM shutdown
 * (a running job is cancelled, its staged folder deleted, the process exits 0), tested by forking.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { connectAgent } from '../../src/protocol/client.js';
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

/**
 * Fork the CLI. `uid` makes the child's process.getuid() answer that number, so the root check
 * runs the same whoever runs the tests (CI and this lab's sessions are root; a laptop is not).
 */
function run(args: string[], o: { uid?: number } = {}): { proc: ChildProcess; out: () => string; err: () => string } {
  const fakeUid = o.uid === undefined ? [] : ['--import', `data:text/javascript,process.getuid=()=>${o.uid}`];
  const proc = spawn(process.execPath, ['--import', 'tsx', ...fakeUid, CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d));
  proc.stderr!.on('data', (d: Buffer) => (err += d));
  return { proc, out: () => out, err: () => err };
}

async function waitFor(check: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
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

describe('rpi-flash-agent process', () => {
  it('prints --help listing every option', async () => {
    const r = run(['--help']);
    const [code] = await once(r.proc, 'exit');
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
    const [code] = await once(r.proc, 'exit');
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
    await waitFor(() => /"agent listening" url=/.test(r.out()), 'the agent to listen');
    const url = /"agent listening" url=(\S+)/.exec(r.out())![1]!;
    await writeFile(
      path.join(dir!, 'targets.csv'),
      'name,mac,ip,reset\none,02:00:00:00:01:01,127.0.0.61,sim\ntwo,02:00:00:00:01:02,127.0.0.62,sim\n',
    );
    child.kill('SIGHUP');
    await waitFor(() => /"targets reloaded" .*count=2/.test(r.out()), 'the reload');
    const conn = await connectAgent({ url, token });
    await expect(conn.lease('two')).resolves.toMatchObject({ target: { name: 'two' } });
    conn.close();
    await writeFile(path.join(dir!, 'targets.csv'), 'name,mac,ip,reset\nthree,not-a-mac,127.0.0.63,sim\n');
    child.kill('SIGHUP');
    await waitFor(() => /"targets reload failed; keeping the previous database"/.test(r.out()), 'the refused reload');
    expect(r.out()).toMatch(/targets\.csv:2/);
  });

  it('on SIGTERM cancels the running job, deletes its staged folder and exits 0', async () => {
    const config = await makeLab(['mute,02:00:00:00:02:01,127.0.0.71,sim:no-show']);
    const r = run(['--config', config, '--allow-root']);
    child = r.proc;
    await waitFor(() => /"agent listening" url=/.test(r.out()), 'the agent to listen');
    const url = /"agent listening" url=(\S+)/.exec(r.out())![1]!;
    const image = path.join(dir!, 'img');
    await writeSampleImage(image, 1024 * 1024, 1);
    const sha256 = await sha256File(image);
    const conn = await connectAgent({ url, token });
    await conn.lease('mute');
    await conn.upload({ path: image, sha256, size: 1024 * 1024, compression: 'none' });
    const job = conn.flash({ sha256 });
    const tftpRoot = path.join(dir!, 'tftp');
    await waitFor(() => r.out().includes('phase=transfer'), 'the job to reach the transfer phase');
    expect(await readdir(tftpRoot)).toEqual(['02-00-00-00-02-01']);
    child.kill('SIGTERM');
    const result = await job;
    expect(result.code).toBe('SHUTTING_DOWN');
    const [code] = await once(child, 'exit');
    expect(code).toBe(0);
    expect(await readdir(tftpRoot)).toEqual([]);
    expect(r.out()).toMatch(/"stopping: refusing new work"[\s\S]*INFO  stopped/);
  });

  it('refuses to run as root without --allow-root', async () => {
    const config = await makeLab(['one,02:00:00:00:03:01,127.0.0.81,sim']);
    const r = run(['--config', config, '--check'], { uid: 0 });
    const [code] = await once(r.proc, 'exit');
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
      const [code] = await once(r.proc, 'exit');
      expect(code, `uid ${uid}: ${r.err()}`).toBe(0);
      expect(r.out()).toContain('configuration OK; 1 target(s): one');
    }
  });
});
