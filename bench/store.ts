/**
 * Image store bench.
 *
 * 1. A raw image (1 GiB by default) stored through `UploadSession.write` in 1 MiB chunks (hash,
 *    part CRCs, fsync, publish), against a plain `fs.createWriteStream` copy of the same chunks
 *    (fsync'd too) in the same run. Each runs in its own child process so its peak RSS is its own.
 * 2. Compressed uploads (256 MiB image as .xz and .zst) stored through the store, against the bare
 *    tool writing the image file itself (`xz -dc < in > out`, fsync'd) in the same run: MB/s of
 *    decompressed image.
 * A `baseline` child (loads the same modules, does nothing) shows the RSS every child starts with.
 *
 *   npx tsx bench/store.ts [--raw-mib 1024] [--compressed-mib 256]
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Compression } from '../src/protocol/messages.js';
import { silentLogger } from '../runner-agent/src/log.js';
import { ImageStore } from '../runner-agent/src/store/image-store.js';

const MiB = 1024 * 1024;
const CHUNK = MiB;

/**
 * The chunks of a disk-image-like stream, made on the fly so the bench itself holds 16 MiB at most:
 * random blocks (compressed files), zeros (free space) and text, in a fixed pattern.
 */
function makeChunks(): Buffer[] {
  const text = Buffer.alloc(MiB);
  text.write(
    'line of text /usr/lib/arm-linux-gnueabihf/libfoo.so.6 lorem ipsum dolor sit amet\n'.repeat(13000).slice(0, MiB),
  );
  const chunks: Buffer[] = [];
  for (let i = 0; i < 16; i++) {
    const kind = i % 10;
    chunks.push(kind < 4 ? randomBytes(MiB) : kind < 7 ? Buffer.alloc(MiB) : text);
  }
  return chunks;
}

function* imageChunks(chunks: Buffer[], sizeMiB: number): Generator<Buffer> {
  for (let i = 0; i < sizeMiB; i++) yield chunks[(i * 7) % chunks.length]!;
}

async function writeImageFile(file: string, chunks: Buffer[], sizeMiB: number): Promise<void> {
  const out = createWriteStream(file);
  for (const chunk of imageChunks(chunks, sizeMiB)) if (!out.write(chunk)) await once(out, 'drain');
  out.end();
  await once(out, 'close');
  // Flush it now, or its writeback would slow down whichever measurement runs first.
  const handle = await fs.open(file, 'r+');
  await handle.sync();
  await handle.close();
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * MiB })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

interface ChildResult {
  seconds: number;
  maxRssMiB: number;
}

/** Runs one measurement in a fresh process (so peak RSS is its own); the work reads `source` in 1 MiB chunks. */
async function inChild(mode: string, args: string[]): Promise<ChildResult> {
  const self = fileURLToPath(import.meta.url);
  const child = spawn(process.execPath, ['--import', 'tsx', self, '--child', mode, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (text: string) => (out += text));
  const [code] = (await once(child, 'close')) as [number | null];
  if (code !== 0) throw new Error(`bench child "${mode}" exited with ${code}: ${out}`);
  return JSON.parse(out.trim().split('\n').pop()!) as ChildResult;
}

async function readChunks(source: string, each: (chunk: Buffer) => Promise<void> | void): Promise<void> {
  for await (const chunk of createReadStream(source, { highWaterMark: CHUNK })) await each(chunk as Buffer);
}

/** Child side: `plain <source> <dest>` or `store <source> <dir> <sha256> <size> <compression>`. */
async function child(mode: string, args: string[]): Promise<void> {
  const started = performance.now();
  if (mode === 'plain') {
    const [source, dest] = args as [string, string];
    const out = createWriteStream(dest);
    await readChunks(source, async (chunk) => {
      if (!out.write(chunk)) await once(out, 'drain');
    });
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    const handle = await fs.open(dest, 'r+');
    await handle.sync(); // the store syncs before publishing: same work for the reference
    await handle.close();
  } else if (mode === 'store') {
    const [source, dir, sha256, size, compression] = args as [string, string, string, string, Compression];
    const store = new ImageStore({ dir, maxBytes: 64 * 1024 * MiB, log: silentLogger });
    await store.init();
    const session = await store.begin({ sha256, size: Number(size), compression });
    await readChunks(source, (chunk) => session.write(chunk));
    await session.finish();
    await store.close();
  } else if (mode === 'tool') {
    // The tool writing the image file itself (as `xz -dc < in > out` would): decompression and
    // storage with no Node stream in the output path.
    const [source, command, dest] = args as [string, string, string];
    const out = await fs.open(dest, 'w');
    const tool = spawn(command, ['-dc', ...(command === 'xz' ? ['-T0'] : ['-q'])], {
      stdio: ['pipe', out.fd, 'inherit'],
    });
    const stdin = tool.stdin!;
    await readChunks(source, async (chunk) => {
      if (!stdin.write(chunk)) await once(stdin, 'drain');
    });
    stdin.end();
    const [code] = (await once(tool, 'close')) as [number | null];
    if (code !== 0) throw new Error(`${command} -dc exited with ${code}`);
    await out.sync(); // the store syncs before publishing
    await out.close();
  } else if (mode !== 'baseline') {
    throw new Error(`unknown child mode ${mode}`);
  }
  const seconds = (performance.now() - started) / 1000;
  // maxRSS is in KiB on Linux.
  console.log(JSON.stringify({ seconds, maxRssMiB: process.resourceUsage().maxRSS / 1024 }));
}

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 ? Number(process.argv[at + 1]) : fallback;
}

async function compressFile(source: string, compression: 'xz' | 'zst'): Promise<string> {
  const dest = `${source}.${compression}`;
  // Fast levels: the bench measures decompression; compressing is setup and not timed.
  const [command, args] = compression === 'xz' ? ['xz', ['-1', '-T0', '-c']] : ['zstd', ['-3', '-T0', '-q', '-c']];
  const proc = spawn(command, [...args, source], { stdio: ['ignore', 'pipe', 'inherit'] });
  const out = createWriteStream(dest);
  proc.stdout.pipe(out);
  const [code] = (await once(proc, 'close')) as [number | null];
  if (out.writable) await once(out, 'close');
  if (code !== 0) throw new Error(`${command} exited with ${code}`);
  return dest;
}

const mbps = (bytes: number, seconds: number) => bytes / 1e6 / seconds;

export async function runStoreBench(): Promise<void> {
  const rawMiB = option('raw-mib', 1024);
  const compressedMiB = option('compressed-mib', 256);
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'rpi-flash-bench-store-'));
  try {
    const chunks = makeChunks();
    const rows: string[] = [];
    const row = (what: string, bytes: number, r: ChildResult, reference?: ChildResult) => {
      const rate = bytes > 0 ? mbps(bytes, r.seconds).toFixed(0) : '-';
      const ratio = reference ? (mbps(bytes, r.seconds) / mbps(bytes, reference.seconds)).toFixed(2) : '';
      rows.push(
        `${what.padEnd(44)} ${rate.padStart(6)} MB/s ${r.seconds.toFixed(2).padStart(7)} s ` +
          `${r.maxRssMiB.toFixed(0).padStart(5)} MiB RSS ${ratio ? `  ratio ${ratio}` : ''}`,
      );
    };

    row('baseline: child process, no work', 0, await inChild('baseline', []));

    // 1. raw
    const raw = path.join(tmp, 'raw.img');
    await writeImageFile(raw, chunks, rawMiB);
    const rawSha = await sha256File(raw);
    const rawBytes = rawMiB * MiB;
    const plain = await inChild('plain', [raw, path.join(tmp, 'plain-copy.img')]);
    await fs.rm(path.join(tmp, 'plain-copy.img'));
    const stored = await inChild('store', [raw, path.join(tmp, 'store-raw'), rawSha, String(rawBytes), 'none']);
    await fs.rm(path.join(tmp, 'store-raw'), { recursive: true });
    await fs.rm(raw);
    row(`plain createWriteStream copy, ${rawMiB} MiB`, rawBytes, plain);
    row(`store raw upload (write → finish), ${rawMiB} MiB`, rawBytes, stored, plain);

    // 2. compressed
    const image = path.join(tmp, 'image.img');
    await writeImageFile(image, chunks, compressedMiB);
    const imageBytes = compressedMiB * MiB;
    for (const compression of ['xz', 'zst'] as const) {
      const wire = await compressFile(image, compression);
      const wireSize = (await fs.stat(wire)).size;
      const command = compression === 'xz' ? 'xz' : 'zstd';
      const tool = await inChild('tool', [wire, command, path.join(tmp, 'tool-out.img')]);
      await fs.rm(path.join(tmp, 'tool-out.img'));
      const viaStore = await inChild('store', [
        wire,
        path.join(tmp, `store-${compression}`),
        await sha256File(wire),
        String(wireSize),
        compression,
      ]);
      await fs.rm(path.join(tmp, `store-${compression}`), { recursive: true });
      await fs.rm(wire);
      row(`${command} -dc > file (fsync), ${compressedMiB} MiB image`, imageBytes, tool);
      row(
        `store .${compression} upload (${(wireSize / MiB).toFixed(0)} MiB wire), decompressed`,
        imageBytes,
        viaStore,
        tool,
      );
    }
    console.log(`${'what'.padEnd(44)} ${'rate'.padStart(11)} ${'time'.padStart(9)} ${'peak'.padStart(13)}`);
    for (const line of rows) console.log(line);
    console.log('(compressed rates are MB/s of decompressed image; ratio = store ÷ reference above it)');
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

if (process.argv.includes('--child')) {
  const at = process.argv.indexOf('--child');
  await child(process.argv[at + 1]!, process.argv.slice(at + 2));
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await runStoreBench();
}
