/**
 * TFTP flood bench: the agent's RSS while it is sent thousands of read requests that nobody
 * answers, beside a flash job on another simulated board that must still pass.
 *
 * The agent runs in a child process (tftp-flood-agent.ts, compiled by tsc into a temporary folder
 * and run by plain Node, as the installed agent runs from build/) with a job staged on a board that
 * never shows up, so its parts are files that exist. Half of the requests ask for those parts from
 * that board's own address (the only one they are served to), from as many source ports; the
 * other half ask for files that do not exist, each from its own address on 127/8. A quarter ask
 * for the largest options (answered with an OACK), the rest for none (answered with DATA 1). The
 * sockets read every answer and never acknowledge one, and every request is sent again each
 * 500 ms while the other board flashes, as a client that retries would. RSS is read from /proc
 * every 50 ms; the figures are ratios against the idle agent measured in the same run, and the
 * job's time against the same job run alone just before.
 *
 *   npm run bench -- tftp-flood          (or: npx tsx bench/tftp-flood.ts [requests])
 */
import { fork, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeSampleImage } from '../runner-agent/src/sample-image.js';
import { encodeRequest, Opcode } from '../runner-agent/src/tftp/packets.js';
import { macDir } from '../src/protocol/tftp-names.js';
import { connectAgent, type AgentConnection } from '../src/protocol/client.js';
import { sha256File } from '../test/support/lab.js';
import { medianRss, sampleRss } from './rss.js';
import { compileAgent } from './compile-agent.js';

const MB = 1e6;
const GOAL_MB = 200;

interface Ready {
  url: string;
  token: string;
  tftp: { address: string; port: number };
  tftpRoot: string;
  targets: Array<{ name: string; ip: string; mac: string }>;
}
interface Image {
  path: string;
  size: number;
  sha256: string;
}

async function memoryOf(child: ChildProcess): Promise<NodeJS.MemoryUsage> {
  const reply = new Promise<NodeJS.MemoryUsage>((resolve) => {
    const onMessage = (m: { type?: string; usage?: NodeJS.MemoryUsage }) => {
      if (m.type !== 'memory' || !m.usage) return;
      child.off('message', onMessage);
      resolve(m.usage);
    };
    child.on('message', onMessage);
  });
  child.send({ type: 'memory' });
  return reply;
}

/** Asks the agent for its memoryUsage() every 250 ms until stopped; resolves with each field's peak. */
function sampleHeap(child: ChildProcess): { stop(): Promise<NodeJS.MemoryUsage> } {
  const peak: NodeJS.MemoryUsage = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 };
  const onMessage = (m: { type?: string; usage?: NodeJS.MemoryUsage }) => {
    if (m.type !== 'memory' || !m.usage) return;
    for (const k of Object.keys(peak) as Array<keyof NodeJS.MemoryUsage>) peak[k] = Math.max(peak[k], m.usage[k]);
  };
  child.on('message', onMessage);
  const timer = setInterval(() => child.send({ type: 'memory' }), 250);
  return {
    async stop() {
      clearInterval(timer);
      child.send({ type: 'memory' });
      await new Promise((r) => setTimeout(r, 100));
      child.off('message', onMessage);
      return peak;
    },
  };
}

/** A 127/8 address that is none of `taken` (the boards' own). */
function floodAddress(i: number, taken: Set<string>): string {
  for (let k = i; ; k += 7919) {
    const a = `127.${100 + ((k >> 16) % 100)}.${(k >> 8) & 0xff}.${1 + (k % 250)}`;
    if (!taken.has(a)) return a;
  }
}

function answerName(msg: Buffer): string {
  const op = msg.length >= 2 ? msg.readUInt16BE(0) : 0;
  if (op === Opcode.ERROR && msg.length >= 4) return `error ${msg.readUInt16BE(2)}`;
  return op === Opcode.DATA ? 'DATA' : op === Opcode.OACK ? 'OACK' : `opcode ${op}`;
}

interface Flood {
  /** Sends every request again each 500 ms until `stop` resolves; resolves with the requests sent. */
  run(stop: Promise<unknown>): Promise<number>;
  answers: Record<string, number>;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function openFlood(
  ready: Ready,
  requests: number,
  staged: { ip: string; parts: string[] },
  taken: Set<string>,
): Promise<Flood> {
  const answers: Record<string, number> = {};
  const sockets: Array<{ socket: dgram.Socket; packet: Buffer }> = [];
  for (let i = 0; i < requests; i++) {
    const existing = i % 2 === 0;
    const socket = dgram.createSocket('udp4');
    socket.on('message', (msg) => {
      const key = answerName(msg);
      answers[key] = (answers[key] ?? 0) + 1;
    });
    socket.on('error', () => {});
    const address = existing ? staged.ip : floodAddress(i, taken);
    await new Promise<void>((resolve) => socket.bind(0, address, () => resolve()));
    const name = existing ? staged.parts[(i >> 1) % staged.parts.length]! : `02-00-00-00-00-00/missing-${i}`;
    const options: Record<string, string> | undefined =
      i % 4 === 1 ? { blksize: '65464', windowsize: '64', tsize: '0' } : undefined;
    sockets.push({ socket, packet: encodeRequest(Opcode.RRQ, name, 'octet', options) });
  }
  return {
    answers,
    async run(stop) {
      let stopped = false;
      void stop.finally(() => (stopped = true));
      let sent = 0;
      while (!stopped) {
        const wave = performance.now();
        // In slices, at the pace of a fast sender: a burst of thousands would mostly be dropped by
        // the kernel (the listening socket's receive queue) before the agent saw it.
        for (let i = 0; i < sockets.length && !stopped; i += 100) {
          for (const { socket, packet } of sockets.slice(i, i + 100))
            socket.send(packet, ready.tftp.port, ready.tftp.address);
          sent += Math.min(100, sockets.length - i);
          await sleep(5);
        }
        await sleep(Math.max(0, 500 - (performance.now() - wave)));
      }
      return sent;
    },
    async close() {
      await Promise.all(sockets.map(({ socket }) => new Promise<void>((r) => socket.close(() => r()))));
    },
  };
}

/** Lease, upload (skipped once the agent holds the image) and flash: one whole job, timed. */
async function flashOnce(conn: AgentConnection, image: Image): Promise<{ code: string; seconds: number }> {
  const started = performance.now();
  await conn.lease('flasher');
  await conn.upload({ path: image.path, sha256: image.sha256, size: image.size, compression: 'none' });
  const result = await conn.flash({ sha256: image.sha256, bootCheck: 'none' });
  if (result.code !== 'OK') throw new Error(`the job on the other board failed: ${result.code}: ${result.message}`);
  return { code: result.code, seconds: (performance.now() - started) / 1000 };
}

export async function runTftpFloodBench(o: { requests?: number } = {}): Promise<void> {
  const requests = o.requests ?? 2000;
  const tmp = await mkdtemp(path.join(tmpdir(), 'tftp-flood-'));
  const agentJs = await compileAgent(tmp, 'bench/tftp-flood-agent.ts');
  const image: Image = { path: path.join(tmp, 'flood.img'), size: 16 * 2 ** 20, sha256: '' };
  await writeSampleImage(image.path, image.size, 7);
  image.sha256 = await sha256File(image.path);
  // Plain Node: not this process's tsx loader.
  const child: ChildProcess = fork(agentJs, [], { execArgv: [], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const conns: AgentConnection[] = [];
  try {
    const ready = await new Promise<Ready>((resolve, reject) => {
      child.once('message', (m) => resolve(m as Ready));
      child.once('exit', (code) => reject(new Error(`the bench agent exited with ${code} before it was ready`)));
    });
    const pid = child.pid!;
    const byName = new Map(ready.targets.map((t) => [t.name, t]));
    const staged = byName.get('staged')!;
    await new Promise((r) => setTimeout(r, 1000));
    const idle = await medianRss(pid);
    const idleHeap = await memoryOf(child);

    const connect = async () => {
      const c = await connectAgent({ url: ready.url, token: ready.token, client: 'tftp-flood-bench' });
      conns.push(c);
      return c;
    };
    const flasher = await connect();
    await flashOnce(flasher, image); // uploads the image; the next job finds it stored
    const jobPeak = sampleRss(pid);
    const alone = await flashOnce(flasher, image);
    const jobAlone = await jobPeak.stop();
    const afterJob = await medianRss(pid);
    const afterJobHeap = await memoryOf(child);

    // The staged board's job: stays staged (the board never shows up) while the flood runs.
    const stager = await connect();
    await stager.lease('staged');
    void stager.flash({ sha256: image.sha256 }).catch(() => undefined);
    const manifestFile = path.join(ready.tftpRoot, macDir(staged.mac), 'job.json');
    let parts: string[] = [];
    for (let i = 0; i < 200 && parts.length === 0; i++) {
      const manifest = await readFile(manifestFile, 'utf8').catch(() => '');
      if (manifest) parts = (JSON.parse(manifest) as { parts: Array<{ file: string }> }).parts.map((p) => p.file);
      else await new Promise((r) => setTimeout(r, 50));
    }
    if (parts.length === 0) throw new Error('the staged job never appeared');

    const flood = await openFlood(ready, requests, { ip: staged.ip, parts }, new Set(ready.targets.map((t) => t.ip)));
    const sampler = sampleRss(pid);
    const heap = sampleHeap(child);
    // The flood builds up for a second, the job runs inside it, and it goes on two seconds more.
    let endFlood = () => {};
    const flooding = flood.run(new Promise<void>((r) => (endFlood = r)));
    let beside: { code: string; seconds: number };
    try {
      await sleep(1000);
      beside = await flashOnce(flasher, image);
      await sleep(2000);
    } finally {
      endFlood();
    }
    const sent = await flooding;
    const peak = await sampler.stop();
    const heapPeak = await heap.stop();
    await flood.close();

    const mb = (bytes: number) => `${(bytes / MB).toFixed(0)} MB`;
    const rows: Array<[string, number]> = [
      ['idle agent (reference)', idle],
      ['after two flash jobs', afterJob],
      ['a flash job alone, peak', jobAlone],
      [`${requests} unanswered requests + a flash job, peak`, peak],
    ];
    console.log(
      `TFTP flood bench: ${requests} read requests nobody acknowledges (half for a staged job's parts ` +
        `from its board's address, half for missing files from ${requests / 2} addresses on 127/8; ` +
        `a quarter with options), re-sent every 500 ms, beside a flash job of ${image.size / 2 ** 20} MiB ` +
        `on another simulated board`,
    );
    console.log('| agent | RSS | × idle |');
    console.log('|---|---|---|');
    for (const [label, rss] of rows) console.log(`| ${label} | ${mb(rss)} | ${(rss / idle).toFixed(2)} |`);
    console.log(
      `job on the other board: ${beside.code} in ${beside.seconds.toFixed(2)} s beside the flood, ` +
        `${alone.seconds.toFixed(2)} s alone (× ${(beside.seconds / alone.seconds).toFixed(2)})`,
    );
    const answered = Object.entries(flood.answers)
      .sort()
      .map(([k, n]) => `${k}: ${n}`)
      .join(', ');
    console.log(`requests sent: ${sent}; answers they got: ${answered}`);
    const heapText = (m: NodeJS.MemoryUsage) =>
      `heap ${mb(m.heapTotal)} (used ${mb(m.heapUsed)}), buffers ${mb(m.arrayBuffers)}`;
    console.log(
      `agent memory: idle ${heapText(idleHeap)}; after two jobs ${heapText(afterJobHeap)}; ` +
        `flood, each at its peak: ${heapText(heapPeak)}`,
    );
    console.log(`goal: peak RSS below ${GOAL_MB} MB: ${peak < GOAL_MB * MB ? 'met' : 'NOT met'}`);
    console.log('command: npm run bench -- tftp-flood');
  } finally {
    for (const c of conns) c.close();
    if (child.exitCode === null) {
      child.send({ type: 'stop' });
      await new Promise((r) => {
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', () => r(clearTimeout(t)));
      });
    }
    await rm(tmp, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [requests] = process.argv.slice(2).map(Number);
  runTftpFloodBench({ requests: requests || undefined }).catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
