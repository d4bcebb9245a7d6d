/**
 * WebSocket flood bench: the agent's RSS while a client floods it and reads nothing, beside a
 * flash job on another simulated board that must still pass. Two floods, one after the other,
 * each for the length of that job and 2 s more (the upload flood after a conforming upload of the
 * same size, its reference):
 *
 * - requests: `lease` requests for targets that do not exist, each answered `UNKNOWN_TARGET` with a
 *   reply larger than the request, sent as fast as the client's own socket takes them; the client
 *   never reads. Without a send-buffer limit every reply would stay in the agent.
 * - upload: a 256 MiB upload whose binary frames are sent without waiting for a single
 *   `upload-progress`, by a client that reads nothing. Without a cap on what an upload queues, every
 *   frame the agent reads would wait in memory for the store.
 *
 * The agent is the real one as a lab runs it: the CLI compiled (tsc -p tsconfig.build.json into
 * build/), in a process of its own, on a simulated lab of two boards, with the default limits
 * (`listen.maxSendBuffer` 8 MiB). RSS is read from /proc every 50 ms; the figures are ratios against
 * the idle agent measured in the same run, a conforming 256 MiB upload is the reference for the
 * upload flood, and the job's time is compared with the same job run alone just before.
 *
 *   npm run bench -- ws-flood          (or: npx tsx bench/ws-flood.ts)
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream, existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { connectAgent, type AgentConnection } from '../src/protocol/client.js';
import { PROTOCOL_VERSION, WS_PATH } from '../src/protocol/messages.js';
import { writeSampleImage } from '../runner-agent/src/sample-image.js';
import { medianRss, sampleRss } from './rss.js';

const MB = 1e6;
const MiB = 1024 * 1024;
const GOAL_MB = 200;
/** What the flooding client lets pile up in its own socket before it waits: its memory, not the agent's. */
const CLIENT_BUFFER = 16 * MiB;
const UPLOAD_BYTES = 256 * MiB;

const TOKEN = 'ws-flood-bench-token-0123456789';
/** The log lines that show a limit at work, counted for the report. */
const WATCHED = [
  'client does not read its replies; reading from it paused',
  'client read its replies; reading from it resumed',
  'client reads none of its replies; connection dropped',
  'client sends past its upload window; reading from it paused until the store catches up',
];

interface Ready {
  url: string;
  token: string;
  image: { path: string; size: number; sha256: string };
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The compiled CLI, built now: the agent as a lab runs it, not through tsx's loader. */
function buildCli(): string {
  const cli = path.resolve('build/runner-agent/src/cli.js');
  try {
    execFileSync(process.execPath, [path.resolve('node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  } catch (err) {
    // Type errors still emit JavaScript; only a build that produced no CLI stops the bench.
    if (!existsSync(cli)) throw err;
    console.log('(tsc reported errors; the bench runs the JavaScript it emitted)');
  }
  return cli;
}

/** The agent in its own process on a lab of two simulated boards; resolves once it listens. */
async function startAgentProcess(dir: string): Promise<{ child: ChildProcess; url: string; log: () => string }> {
  await writeFile(
    path.join(dir, 'targets.csv'),
    'name,mac,ip,reset\nflooded,02:00:00:00:f2:01,127.0.242.1,sim\nflasher,02:00:00:00:f2:02,127.0.242.2,sim\n',
  );
  await writeFile(
    path.join(dir, 'agent.json'),
    JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      token: TOKEN,
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      flash: { partSize: '4MiB' },
      // A client the agent no longer reads from is cut off after the grace period: longer than a phase.
      timeouts: { boardShow: 60, stall: 60, boot: 30, leaseGrace: 60 },
      bootCheck: 'none',
      sim: { bootPort: 2222, cardSize: '64MiB' },
      defaultLayout: 'whole',
    }),
  );
  const child = spawn(process.execPath, [buildCli(), '--config', path.join(dir, 'agent.json'), '--allow-root'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    const look = setInterval(() => {
      const m = /"agent listening" url=(ws:\/\/\S+)/.exec(out);
      if (m) {
        clearInterval(look);
        resolve(m[1]!);
      }
    }, 20);
    child.once('exit', (code) => {
      clearInterval(look);
      reject(new Error(`the agent exited with ${code} before it listened: ${out}`));
    });
  });
  return { child, url, log: () => out };
}

interface FloodResult {
  /** Requests sent, or MiB of an upload. */
  sent: number;
  bytes: number;
}

/** A client that said hello and reads nothing from here on. */
async function mute(ready: Ready, before?: (ws: WebSocket, next: (type: string) => Promise<void>) => Promise<void>) {
  const ws = new WebSocket(`${ready.url}${WS_PATH}`, {
    headers: { Authorization: `Bearer ${ready.token}` },
    perMessageDeflate: false,
  });
  ws.on('error', () => {});
  await once(ws, 'open');
  const inbox: string[] = [];
  ws.on('message', (d, binary) => {
    // Text frames arrive as one Buffer (ws's default binaryType).
    if (!binary) inbox.push((JSON.parse((d as Buffer).toString('utf8')) as { type: string }).type);
  });
  const next = async (type: string) => {
    for (let i = 0; !inbox.includes(type); i++) {
      if (i > 3000) throw new Error(`the agent never sent "${type}"; got ${inbox.join(', ')}`);
      await sleep(10);
    }
  };
  ws.send(JSON.stringify({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION, client: 'ws-flood-bench' }));
  await next('welcome');
  await before?.(ws, next);
  ws.pause();
  return ws;
}

/** The reference for the upload flood: the same bytes by the protocol client, which keeps to its window. */
async function conformingUpload(ready: Ready, bigImage: string): Promise<FloodResult> {
  const conn = await connectAgent({ url: ready.url, token: ready.token, client: 'ws-flood-bench reference' });
  try {
    await conn.lease('flooded');
    const sha256 = await sha256File(bigImage);
    await conn.upload({ path: bigImage, sha256, size: UPLOAD_BYTES, compression: 'none' });
    await conn.cancel();
  } finally {
    conn.close();
  }
  return { sent: UPLOAD_BYTES / MiB, bytes: UPLOAD_BYTES };
}

async function requestFlood(ready: Ready, until: () => boolean): Promise<FloodResult> {
  const ws = await mute(ready);
  let sent = 0;
  let bytes = 0;
  while (!until()) {
    if (ws.bufferedAmount < CLIENT_BUFFER) {
      for (let i = 0; i < 500; i++) {
        const text = JSON.stringify({
          type: 'lease',
          id: `f${sent++}`,
          target: `no-such-board-${sent}`.padEnd(128, 'x'),
        });
        ws.send(text);
        bytes += text.length;
      }
    }
    await sleep(1);
  }
  ws.terminate();
  return { sent, bytes };
}

async function uploadFlood(ready: Ready, until: () => boolean): Promise<FloodResult> {
  const ws = await mute(ready, async (socket, next) => {
    socket.send(JSON.stringify({ type: 'lease', id: 'l', target: 'flooded' }));
    await next('leased');
    // A sha256 nothing will match: the upload is never finished, only fed.
    const sha256 = randomBytes(32).toString('hex');
    socket.send(JSON.stringify({ type: 'upload-begin', id: 'u', sha256, size: UPLOAD_BYTES, compression: 'none' }));
    await next('upload-ready');
  });
  const frame = randomBytes(MiB);
  let bytes = 0;
  while (!until() && bytes < UPLOAD_BYTES) {
    if (ws.bufferedAmount < CLIENT_BUFFER) {
      ws.send(frame, { binary: true });
      bytes += frame.length;
    } else await sleep(1);
  }
  ws.terminate();
  return { sent: bytes / MiB, bytes };
}

/** Lease the other board and flash it (a job's end releases its lease), timed from the lease. */
async function flashOnce(conn: AgentConnection, ready: Ready): Promise<number> {
  const started = performance.now();
  await conn.lease('flasher');
  const result = await conn.flash({ sha256: ready.image.sha256, bootCheck: 'none' });
  if (result.code !== 'OK') throw new Error(`the job on the other board failed: ${result.code}: ${result.message}`);
  return (performance.now() - started) / 1000;
}

export async function runWsFloodBench(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-ws-flood-'));
  let child: ChildProcess | undefined;
  let flasher: AgentConnection | undefined;
  try {
    const imagePath = path.join(dir, 'flood.img');
    await writeSampleImage(imagePath, 16 * MiB, 9);
    const agent = await startAgentProcess(dir);
    child = agent.child;
    const ready: Ready = {
      url: agent.url,
      token: TOKEN,
      image: { path: imagePath, size: 16 * MiB, sha256: await sha256File(imagePath) },
    };
    const pid = child.pid!;
    await sleep(1000);
    const idle = await medianRss(pid);

    flasher = await connectAgent({ url: ready.url, token: ready.token, client: 'ws-flood-bench' });
    const { image } = ready;
    await flasher.lease('flasher');
    await flasher.upload({ path: image.path, sha256: image.sha256, size: image.size, compression: 'none' });
    await flasher.cancel();
    const alone = await flashOnce(flasher, ready);
    const afterJob = await medianRss(pid);

    /** A flood beside a job on the other board: the job's time, the flood's figures, the peak RSS. */
    const beside = async (flood: (ready: Ready, until: () => boolean) => Promise<FloodResult>) => {
      let stopAt = Infinity;
      const sampler = sampleRss(pid);
      const flooding = flood(ready, () => performance.now() > stopAt);
      const seconds = await flashOnce(flasher!, ready);
      stopAt = performance.now() + 2000; // the flood goes on a little after the job
      const result = await flooding;
      const peak = await sampler.stop();
      await sleep(500);
      return { seconds, result, peak };
    };
    const bigImage = path.join(dir, 'big.img');
    await writeSampleImage(bigImage, UPLOAD_BYTES, 4);
    const reference = await beside(() => conformingUpload(ready, bigImage));
    const requests = await beside(requestFlood);
    const upload = await beside(uploadFlood);

    const seen = WATCHED.map(
      (msg) =>
        [
          msg,
          agent
            .log()
            .split('\n')
            .filter((l) => l.includes(`"${msg}"`)).length,
        ] as const,
    );
    const mb = (bytes: number) => `${(bytes / MB).toFixed(0)} MB`;
    const floods = [
      [`reference: ${UPLOAD_BYTES / MiB} MiB uploaded by the protocol client (16 MiB window)`, reference],
      [`request flood: ${requests.result.sent} requests (${mb(requests.result.bytes)}), no reply read`, requests],
      [`upload flood: ${upload.result.sent} MiB without waiting for acks, no reply read`, upload],
    ] as const;
    console.log(
      'WebSocket flood bench: a client that reads nothing floods the compiled agent (default limits: ' +
        `listen.maxSendBuffer 8 MiB, 24 MiB queued per upload), beside a flash job of ${image.size / MiB} MiB on ` +
        'another simulated board',
    );
    console.log('| agent | RSS | × idle | job on the other board | × alone |');
    console.log('|---|---|---|---|---|');
    console.log(`| idle agent (reference) | ${mb(idle)} | 1.00 | - | - |`);
    console.log(
      `| after one flash job alone | ${mb(afterJob)} | ${(afterJob / idle).toFixed(2)} | ` +
        `OK in ${alone.toFixed(2)} s | 1.00 |`,
    );
    for (const [label, r] of floods)
      console.log(
        `| ${label}, peak | ${mb(r.peak)} | ${(r.peak / idle).toFixed(2)} | OK in ${r.seconds.toFixed(2)} s | ` +
          `${(r.seconds / alone).toFixed(2)} |`,
      );
    console.log(
      `what the limits did (agent log lines): ${
        seen
          .filter(([, n]) => n > 0)
          .map(([msg, n]) => `"${msg}" × ${n}`)
          .join('; ') || 'nothing'
      }`,
    );
    const peak = Math.max(requests.peak, upload.peak);
    console.log(`goal: peak RSS under a flood below ${GOAL_MB} MB: ${peak < GOAL_MB * MB ? 'met' : 'NOT met'}`);
    console.log('command: npm run bench -- ws-flood');
  } finally {
    flasher?.close();
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => child!.kill('SIGKILL'), 10_000);
        child!.once('exit', () => r(clearTimeout(t)));
      });
    }
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runWsFloodBench().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
