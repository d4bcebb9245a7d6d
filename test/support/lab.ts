/**
 * A simulated lab for tests: a real agent (composition root) on loopback with ephemeral ports,
 * a targets CSV of `sim` boards, and helpers to make images. Everything lives in a temp dir that
 * `stop()` removes.
 */
import { mkdtemp, rm, writeFile, stat, readdir } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { validateConfig } from '../../runner-agent/src/config.js';
import { startAgent, type RunningAgent, type StartOptions } from '../../runner-agent/src/agent.js';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';
import { connectAgent, type AgentConnection } from '../../src/protocol/client.js';
import type { AgentMessage } from '../../src/protocol/messages.js';

export const LAB_TOKEN = 'lab-test-token-0123456789';

export interface Lab {
  dir: string;
  agent: RunningAgent;
  logs: LogRecord[];
  connect(onEvent?: (m: AgentMessage) => void): Promise<AgentConnection>;
  image(name: string, size: number, seed?: number): Promise<{ path: string; size: number; sha256: string }>;
  tftpFolders(): Promise<string[]>;
  stop(): Promise<void>;
}

/** A random 127/8 address per board: test files run in parallel and sim boards listen on their IP. */
function loopbackIp(): string {
  const r = (n: number) => 1 + Math.floor(Math.random() * n);
  return `127.${r(250)}.${r(250)}.${r(250)}`;
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface LabBoard {
  name: string;
  mac: string;
  reset?: string;
  layout?: string;
  /** The `labels` cell, e.g. `pi4 lab-a`. */
  labels?: string;
  /** The `windowsize` cell: the board's own TFTP window. */
  windowsize?: number;
}

/** The targets CSV of these boards; each board gets its own loopback IP. */
export function targetsCsv(boards: readonly LabBoard[]): string {
  const rows = boards.map(
    (b) =>
      `${b.name},${b.mac},${loopbackIp()},${b.reset ?? 'sim'},${b.layout ?? ''},${b.labels ?? ''},` +
      `${b.windowsize ?? ''}`,
  );
  return ['name,mac,ip,reset,layout,labels,windowsize', ...rows].join('\n') + '\n';
}

/**
 * Rows are `name,mac,reset[,layout][,labels]`. `dir` reuses a folder (an agent restarted on the same
 * state): `stop()` then leaves it for the next lab, and the caller removes it.
 */
export async function startLab(o: {
  boards: LabBoard[];
  config?: Record<string, unknown>;
  start?: StartOptions;
  dir?: string;
}): Promise<Lab> {
  const dir = o.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-lab-')));
  await writeFile(path.join(dir, 'targets.csv'), targetsCsv(o.boards));
  const config = await validateConfig(
    {
      listen: { host: '127.0.0.1', port: 0 },
      token: LAB_TOKEN,
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      flash: { partSize: '1MiB', retries: 2 },
      // Safety nets for a loaded machine: a sim board shows, writes and boots in well under a
      // second. A test that wants one of these to expire sets its own, short.
      timeouts: { boardShow: 30, stall: 30, boot: 30, leaseGrace: 2, shutdown: 5 },
      bootCheck: 'tcp:2222',
      sim: { bootPort: 2222, cardSize: '64MiB' },
      logLevel: 'debug',
      // Sample images have no FAT boot partition; the inject layout has tests of its own.
      defaultLayout: 'whole',
      ...o.config,
    },
    dir,
  );
  const logs: LogRecord[] = [];
  const agent = await startAgent(config, {
    log: createLogger({ level: 'debug', sink: (r) => logs.push(r) }),
    ...o.start,
  });
  const conns: AgentConnection[] = [];
  return {
    dir,
    agent,
    logs,
    async connect(onEvent) {
      const c = await connectAgent({
        url: agent.url,
        token: LAB_TOKEN,
        client: 'lab-test',
        ...(onEvent ? { onEvent } : {}),
      });
      conns.push(c);
      return c;
    },
    async image(name, size, seed = 1) {
      const file = path.join(dir, name);
      await writeSampleImage(file, size, seed);
      return { path: file, size: (await stat(file)).size, sha256: await sha256File(file) };
    },
    async tftpFolders() {
      return (await readdir(config.tftp.root)).filter((n) => !n.startsWith('.'));
    },
    async stop() {
      for (const c of conns) c.close();
      await agent.stop();
      if (!o.dir) await rm(dir, { recursive: true, force: true });
    },
  };
}
