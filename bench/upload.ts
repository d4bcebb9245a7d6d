/**
 * Upload bench: a 1 GiB image over the WebSocket on loopback into the real agent (a child process
 * running the CLI, so its peak RSS is its own), against a bare `ws` client→server copy of the same
 * bytes in the same run. The agent hashes while storing; the client's sha256 is computed before
 * (as the action does) and not timed.
 *
 *   npx tsx bench/upload.ts [--size-mib 1024]
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile, open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { pathToFileURL } from 'node:url';
import { WebSocketServer, WebSocket } from 'ws';
import { connectAgent } from '../src/protocol/client.js';
import { writeSampleImage } from '../runner-agent/src/sample-image.js';

const CHUNK = 1024 * 1024;

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * CHUNK })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Reference: a plain ws server that counts bytes, a plain ws client that sends the file with backpressure. */
async function bareWsCopy(file: string, size: number): Promise<number> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: CHUNK + 65536 });
  await once(wss, 'listening');
  const port = (wss.address() as { port: number }).port;
  let received = 0;
  const allIn = new Promise<void>((resolve) => {
    wss.on('connection', (ws) =>
      ws.on('message', (d: Buffer) => {
        received += d.length;
        if (received >= size) resolve();
      }),
    );
  });
  const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
  await once(ws, 'open');
  const started = performance.now();
  const fh = await open(file, 'r');
  try {
    for (let offset = 0; offset < size; offset += CHUNK) {
      while (ws.bufferedAmount > 4 * CHUNK) await new Promise((r) => setTimeout(r, 2));
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - offset));
      await fh.read(buf, 0, buf.length, offset);
      ws.send(buf, { binary: true });
    }
    await allIn;
  } finally {
    await fh.close();
  }
  const seconds = (performance.now() - started) / 1000;
  ws.close();
  wss.close();
  return size / 1e6 / seconds;
}

async function peakRssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

async function agentUpload(
  dir: string,
  file: string,
  size: number,
  sha256: string,
): Promise<{ mbps: number; rssMiB: number }> {
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
      store: { maxBytes: '8GiB' },
      defaultLayout: 'whole',
    }),
  );
  // The agent as a lab runs it: compiled (npm run build), not through tsx's loader.
  execFileSync(process.execPath, [path.resolve('node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
    stdio: 'inherit',
  });
  const child = spawn(
    process.execPath,
    [path.resolve('build/runner-agent/src/cli.js'), '--config', path.join(dir, 'agent.json'), '--allow-root'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let url = '';
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /"agent listening" url=(ws:\/\/\S+)/.exec(out);
      if (m && !url) {
        url = m[1]!;
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`agent exited with ${code}: ${out}`)));
  });
  try {
    const conn = await connectAgent({ url, token, client: 'bench' });
    await conn.lease('bench');
    const started = performance.now();
    await conn.upload({ path: file, sha256, size, compression: 'none' });
    const seconds = (performance.now() - started) / 1000;
    const rss = await peakRssKiB(child.pid!);
    conn.close();
    return { mbps: size / 1e6 / seconds, rssMiB: rss / 1024 };
  } finally {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
}

export async function runUploadBench(o: { sizeMiB?: number } = {}): Promise<void> {
  const sizeMiB = o.sizeMiB ?? 1024;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-upload-bench-'));
  try {
    const file = path.join(dir, 'image.img');
    const size = sizeMiB * CHUNK;
    await writeSampleImage(file, size, 3);
    const sha256 = await sha256File(file);
    const bare = await bareWsCopy(file, size);
    const agent = await agentUpload(dir, file, size, sha256);
    console.log(`\nWebSocket upload of ${sizeMiB} MiB on loopback (agent stores + hashes; 1 MiB chunks)`);
    console.log('| path | MB/s | ratio vs bare ws | agent peak RSS |');
    console.log('|---|---|---|---|');
    console.log(`| bare ws client → server (reference) | ${bare.toFixed(0)} | 1.00 | - |`);
    console.log(
      `| protocol client → agent (store, sha256) ` +
        `| ${agent.mbps.toFixed(0)} | ${(agent.mbps / bare).toFixed(2)} | ${agent.rssMiB.toFixed(0)} MiB |`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const i = process.argv.indexOf('--size-mib');
  runUploadBench(i > 0 ? { sizeMiB: Number(process.argv[i + 1]) } : {}).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
