/**
 * Upload bench: an image over the WebSocket on loopback into the real agent (a child process
 * running the compiled CLI, so its CPU time and peak RSS are its own), against two references in
 * the same run, each a bare `ws` server in a child process of its own receiving the same bytes from
 * a bare `ws` client:
 *
 *   - copy: writes the frames to a file (4 MiB write buffer, pausing the socket when it is full)
 *     and fsyncs it at the end;
 *   - copy + sha256: the same, hashing every frame first: the least the agent must do per byte.
 *
 * For each: wall MB/s (from the first byte sent to the answer after the fsync), the receiving
 * process's CPU (user + sys from /proc/<pid>/stat, over the same stretch) per MB, and its peak RSS
 * (VmHWM). The client's sha256 is computed before (as the action does) and not timed.
 *
 *   npm run bench -- upload                      # 1 GiB
 *   npm run bench -- upload --size-mib=4096      # 4 GiB (needs ~3.5× that free in /dev/shm or the temp dir)
 *   npm run bench -- upload --rounds=5           # the median of 5 interleaved rounds (3 by default)
 *   UPLOAD_BENCH_PROF_DIR=/tmp/prof npm run bench -- upload   # every receiver under node --cpu-prof
 *   UPLOAD_BENCH_AGENT_CLI=/old/build/runner-agent/src/cli.js npm run bench -- upload   # another build
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { pathToFileURL } from 'node:url';
import { WebSocket } from 'ws';
import { connectAgent } from '../src/protocol/client.js';
import { writeSampleImage } from '../runner-agent/src/sample-image.js';
import { DEFAULT_HASH_ON_WORKER_FROM_BYTES } from '../runner-agent/src/store/image-store.js';
import { compileAgent } from './compile-agent.js';

const CHUNK = 1024 * 1024;
/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ; 100 on Linux). */
const TICKS_PER_SECOND = 100;

/**
 * The reference receiver, plain JavaScript for `node -e` (no loader in the way): `copy` or `sha256`,
 * the output file and the byte count as arguments; it prints its port, and answers the client's
 * last byte with `{bytes, sha256}` once the file is written and fsync'd.
 */
const REFERENCE_SERVER = `
const { WebSocketServer } = require('ws');
const fs = require('node:fs');
const { createHash } = require('node:crypto');
const [mode, outPath, sizeText] = process.argv.slice(1);
const size = Number(sizeText);
// Exit rather than die on the bench's SIGTERM, so that --cpu-prof writes its profile.
process.on('SIGTERM', () => process.exit(0));
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: ${CHUNK} + 65536 });
wss.on('listening', () => console.log('port=' + wss.address().port));
wss.on('connection', (ws) => {
  const fd = fs.openSync(outPath, 'w');
  const out = fs.createWriteStream(outPath, { fd, autoClose: false, highWaterMark: 4 * ${CHUNK} });
  const hash = mode === 'sha256' ? createHash('sha256') : undefined;
  let received = 0;
  ws.on('message', (data) => {
    if (hash) hash.update(data);
    received += data.length;
    if (!out.write(data)) {
      ws.pause();
      out.once('drain', () => ws.resume());
    }
    if (received >= size) out.end(() => {
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      ws.send(JSON.stringify({ bytes: received, sha256: hash ? hash.digest('hex') : '' }));
    });
  });
});
`;

interface Measured {
  mbps: number;
  cpuMsPerMB: number;
  peakRssMiB: number;
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * CHUNK })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** user + sys CPU of a process so far, in milliseconds. */
async function cpuMsOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // The fields after the command name (which may hold spaces) start at state; utime and stime are 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

/** `node --cpu-prof` for every receiver when UPLOAD_BENCH_PROF_DIR names a folder for the profiles. */
function profileArgs(): string[] {
  const dir = process.env.UPLOAD_BENCH_PROF_DIR;
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : [];
}

/** Starts a child and resolves with the first match of `ready` in its stdout. */
async function startChild(args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: string }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const match = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = ready.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited with ${code}: ${out}`)));
  });
  return { child, match };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  await once(child, 'exit');
}

/** A bare ws client sends the file in chunks, at most 4 in its socket buffer, to a reference receiver. */
async function referenceCopy(mode: 'copy' | 'sha256', file: string, out: string, size: number): Promise<Measured> {
  const { child, match: port } = await startChild(
    [...profileArgs(), '-e', REFERENCE_SERVER, mode, out, String(size)],
    /port=(\d+)/,
  );
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
    await once(ws, 'open');
    const answered = new Promise<{ bytes: number }>((resolve) =>
      ws.once('message', (d: Buffer) => resolve(JSON.parse(d.toString()) as { bytes: number })),
    );
    const cpuBefore = await cpuMsOf(child.pid!);
    const started = performance.now();
    const fh = await open(file, 'r');
    try {
      for (let offset = 0; offset < size; offset += CHUNK) {
        while (ws.bufferedAmount > 4 * CHUNK) await new Promise((r) => setTimeout(r, 1));
        const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - offset));
        await fh.read(buf, 0, buf.length, offset);
        ws.send(buf, { binary: true });
      }
    } finally {
      await fh.close();
    }
    const { bytes } = await answered;
    const seconds = (performance.now() - started) / 1000;
    const cpuMs = (await cpuMsOf(child.pid!)) - cpuBefore;
    if (bytes !== size) throw new Error(`the ${mode} reference received ${bytes} of ${size} bytes`);
    const peak = await peakRssMiB(child.pid!);
    ws.close();
    return { mbps: size / 1e6 / seconds, cpuMsPerMB: cpuMs / (size / 1e6), peakRssMiB: peak };
  } finally {
    await stopChild(child);
    await rm(out, { force: true });
  }
}

async function agentUpload(dir: string, cli: string, file: string, size: number, sha256: string): Promise<Measured> {
  await rm(path.join(dir, 'state'), { recursive: true, force: true });
  const token = 'bench-token-0123456789abcdef';
  await writeFile(path.join(dir, 'targets.csv'), 'name,mac,ip,reset\nbench,02:00:00:00:00:99,127.0.0.99,sim\n');
  await writeFile(
    path.join(dir, 'agent.json'),
    JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      token,
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      store: { maxBytes: `${Math.ceil((2 * size) / 1024 ** 3) + 1}GiB` },
      defaultLayout: 'whole',
    }),
  );
  const { child, match: url } = await startChild(
    [...profileArgs(), cli, '--config', path.join(dir, 'agent.json'), '--allow-root'],
    /"agent listening" url=(ws:\/\/\S+)/,
  );
  try {
    const conn = await connectAgent({ url, token, client: 'bench' });
    await conn.lease('bench');
    const cpuBefore = await cpuMsOf(child.pid!);
    const started = performance.now();
    const done = await conn.upload({ path: file, sha256, size, compression: 'none' });
    const seconds = (performance.now() - started) / 1000;
    const cpuMs = (await cpuMsOf(child.pid!)) - cpuBefore;
    if (done.skipped || done.size !== size) throw new Error(`unexpected upload answer ${JSON.stringify(done)}`);
    const peak = await peakRssMiB(child.pid!);
    conn.close();
    return { mbps: size / 1e6 / seconds, cpuMsPerMB: cpuMs / (size / 1e6), peakRssMiB: peak };
  } finally {
    // SIGTERM: the agent shuts down and writes its CPU profile, when asked for one.
    await stopChild(child);
  }
}

export async function runUploadBench(o: { sizeMiB?: number } = {}): Promise<void> {
  const sizeMiB = o.sizeMiB ?? sizeFromArgv() ?? 1024;
  const size = sizeMiB * CHUNK;
  const parent = await benchParent(size);
  const dir = await mkdtemp(path.join(parent, 'rpi-flash-upload-bench-'));
  try {
    const file = path.join(dir, 'image.img');
    await writeSampleImage(file, size, 3);
    const sha256 = await sha256File(file);
    // A build of another revision, for a before/after in the same conditions; this checkout by default.
    const cli =
      process.env.UPLOAD_BENCH_AGENT_CLI ?? (await compileAgent(path.join(dir, 'build'), 'runner-agent/src/cli.ts'));
    const rounds: Array<Record<'copy' | 'hashed' | 'agent', Measured>> = [];
    for (let round = 0; round < roundsFromArgv(); round++) {
      // Interleaved, so that a burst of load from elsewhere on the machine hits one round, not one receiver.
      rounds.push({
        copy: await referenceCopy('copy', file, path.join(dir, 'copy.out'), size),
        hashed: await referenceCopy('sha256', file, path.join(dir, 'copy.out'), size),
        agent: await agentUpload(dir, cli, file, size, sha256),
      });
    }
    const copy = median(rounds.map((r) => r.copy));
    const hashed = median(rounds.map((r) => r.hashed));
    const agent = median(rounds.map((r) => r.agent));
    const row = (name: string, m: Measured) =>
      `| ${name} | ${m.mbps.toFixed(0)} | ${(m.mbps / copy.mbps).toFixed(2)} | ${(m.mbps / hashed.mbps).toFixed(2)} ` +
      `| ${m.cpuMsPerMB.toFixed(2)} | ${(m.cpuMsPerMB / copy.cpuMsPerMB).toFixed(2)} ` +
      `| ${(m.cpuMsPerMB / hashed.cpuMsPerMB).toFixed(2)} | ${m.peakRssMiB.toFixed(0)} MiB |`;
    console.log(
      `\nWebSocket upload of ${sizeMiB} MiB on loopback, 1 MiB chunks, ${os.availableParallelism()} cores ` +
        `(the agent hashes on ${size >= DEFAULT_HASH_ON_WORKER_FROM_BYTES ? 'a worker thread' : 'its main thread'}), ` +
        `files in ${parent}, median of ${rounds.length} round(s)`,
    );
    console.log('| receiver | MB/s | × copy | × copy+sha256 | CPU ms/MB | × copy | × copy+sha256 | peak RSS |');
    console.log('|---|---|---|---|---|---|---|---|');
    console.log(row('bare ws → file (reference)', copy));
    console.log(row('bare ws → sha256 + file (reference)', hashed));
    console.log(row('protocol client → agent (store, sha256)', agent));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Where the files go: tmpfs (/dev/shm) when it has room for the image and both copies, so that the
 * figures are the receivers' CPU rather than this machine's disk (a Pi's SD card or USB disk is
 * another disk again); else the temp dir. `--dir=PATH` chooses.
 */
async function benchParent(size: number): Promise<string> {
  const chosen = process.argv.find((a) => a.startsWith('--dir='));
  if (chosen) return path.resolve(chosen.slice('--dir='.length));
  const shm = '/dev/shm';
  const free = await statfs(shm).then(
    (s) => s.bavail * s.bsize,
    () => 0,
  );
  return free > 3.5 * size ? shm : os.tmpdir();
}

/** Each figure on its own: the median of the rounds' values. */
function median(values: Measured[]): Measured {
  const mid = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
  return {
    mbps: mid(values.map((v) => v.mbps)),
    cpuMsPerMB: mid(values.map((v) => v.cpuMsPerMB)),
    peakRssMiB: mid(values.map((v) => v.peakRssMiB)),
  };
}

/** `--rounds=N`: each receiver N times, interleaved; 3 by default. */
function roundsFromArgv(): number {
  const given = process.argv.find((a) => a.startsWith('--rounds='));
  const n = given ? Number(given.slice('--rounds='.length)) : 3;
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--rounds must be a positive integer, got ${given}`);
  return n;
}

/** `--size-mib=N` or `--size-mib N`, also when run through bench/run.ts. */
function sizeFromArgv(): number | undefined {
  const argv = process.argv;
  const joined = argv.find((a) => a.startsWith('--size-mib='));
  if (joined) return Number(joined.slice('--size-mib='.length));
  const i = argv.indexOf('--size-mib');
  return i > 0 ? Number(argv[i + 1]) : undefined;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runUploadBench().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
