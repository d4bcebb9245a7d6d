/**
 * The agent dies mid-job and a new one starts on the same port (its leases are gone): the bundled
 * action (node dist/index.js) reconnects, finds its lease unknown and reports the lost job as
 * JOB_LOST within seconds, saying the board's card may be partly written, instead of a bare
 * LEASE_LOST. The dying agent is a real process (killed with SIGKILL, so it sends nothing more);
 * its simulated board writes its card slowly (`sim:slow-card`), so the job is in the transfer phase.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';
import { LAB_TOKEN, startLab, type Lab } from '../support/lab.js';
import { waitUntil } from '../support/wait.js';
import { closedPort, ROOT, runAction, TEST_TIMEOUT_MS } from './run-action.js';

const MiB = 1024 * 1024;

let dir: string | undefined;
let agent: ChildProcess | undefined;
let lab: Lab | undefined;
afterEach(async () => {
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    agent.kill('SIGKILL');
    await once(agent, 'exit');
  }
  agent = undefined;
  await lab?.stop();
  lab = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

/** The agent as its own process (runner-agent/src/cli.ts), with one board whose card writes at 256 KiB/s. */
async function startAgentProcess(port: number): Promise<{ out: () => string }> {
  writeFileSync(
    path.join(dir!, 'targets.csv'),
    'name,mac,ip,reset\npi-r,02:00:00:00:11:01,127.0.11.1,sim:slow-card:256\n',
  );
  writeFileSync(
    path.join(dir!, 'agent.json'),
    JSON.stringify({
      listen: { host: '127.0.0.1', port },
      token: LAB_TOKEN,
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      // Two parts of 1 MiB, each written for 4 s in silence: the job stays in its transfer for seconds.
      flash: { partSize: '1MiB', cardWriteRate: '256KiB' },
      timeouts: { boardShow: 30, stall: 30, boot: 30, leaseGrace: 30 },
      bootCheck: 'none',
      sim: { cardSize: '16MiB' },
      defaultLayout: 'whole',
    }),
  );
  const cli = path.join(ROOT, 'runner-agent/src/cli.ts');
  agent = spawn(process.execPath, ['--import', 'tsx', cli, '--config', path.join(dir!, 'agent.json'), '--allow-root'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  agent.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  agent.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  await waitUntil(() => out.includes('"agent listening"'), 'the agent process to listen', { detail: () => out });
  return { out: () => out };
}

describe('the action when the agent restarts mid-job', () => {
  it(
    'reports JOB_LOST within seconds, naming a card that may be partly written',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      dir = mkdtempSync(path.join(tmpdir(), 'agent-restart-'));
      // One port for both agents in turn: the action knows only its URL.
      const port = await closedPort();
      const first = await startAgentProcess(port);
      const workspace = path.join(dir, 'workspace');
      mkdirSync(workspace);
      await writeSampleImage(path.join(workspace, 'sdcard.img'), 2 * MiB, 5);

      let killedAt = 0;
      let restarted: Promise<Lab> | undefined;
      const r = await runAction({
        workspace,
        inputs: { 'agent-url': `ws://127.0.0.1:${port}`, token: LAB_TOKEN, image: 'sdcard.img', target: 'pi-r' },
        onStdout: (out) => {
          // The board is writing its first part: the agent dies, and a new one takes the port.
          if (killedAt || !out.includes('the board writes and reads back')) return;
          killedAt = Date.now();
          agent!.kill('SIGKILL');
          restarted = once(agent!, 'exit').then(() =>
            startLab({
              boards: [{ name: 'pi-r', mac: '02:00:00:00:11:01' }],
              config: { listen: { host: '127.0.0.1', port } },
            }),
          );
        },
      });
      const exitedAfterKillMs = Date.now() - killedAt;
      const next = (lab = await restarted);
      expect(killedAt, `the job never reached the card write:\n${r.stdout}\n${first.out()}`).toBeGreaterThan(0);
      expect(r.code, r.stdout).toBe(1);
      expect(r.outputs).toMatchObject({ result: 'failure', 'result-code': 'JOB_LOST', 'target-name': 'pi-r' });
      // Within seconds: the first reconnect after 1 s finds the new agent, which no longer knows the lease.
      expect(exitedAfterKillMs).toBeLessThan(15_000);
      expect(r.stdout).toMatch(/Connected to ws:\/\/127\.0\.0\.1:\d+\/ again/);
      expect(r.stdout).toMatch(/::error title=rpi-flash failed during transfer%3A JOB_LOST::the job is lost: /);
      expect(r.stdout).toContain("the board's card may be partly written (the job was in transfer");
      expect(r.summary).toMatch(/Card.*may be partly written/s);
      // Nothing is left for the post step: the lease died with the agent.
      expect(r.state.lease).toBe('');
      expect(next?.logs.some((rec) => rec.msg === 'lease resumed')).toBe(false);
    },
  );
});
