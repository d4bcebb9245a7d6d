/**
 * The job's NBD export against real clients: libnbd's nbdcopy and nbdinfo, and qemu-io, reading
 * and writing nbd://127.0.0.1:<port>/ through the agent's front door into Debian's nbdkit.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  overlayDirFor,
  removeOverlayLeftovers,
  startNbdExport,
  type NbdExport,
  type NbdExportOptions,
} from '../../runner-agent/src/netboot/nbd-export.js';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { patternBytes } from '../../runner-agent/src/sample-image.js';
import { WAIT_MS, waitUntil } from '../support/wait.js';

const MiB = 1024 * 1024;
/** Two partitions: a small FAT one and a root one big enough that a read is still going when cut. */
const P1 = { index: 1, type: 0x0c, offset: 1 * MiB, size: 2 * MiB };
const P2 = { index: 2, type: 0x83, offset: 3 * MiB, size: 48 * MiB };
const IMAGE_SIZE = P2.offset + P2.size;

function buildImage(): Buffer {
  const image = patternBytes(IMAGE_SIZE, 7);
  image.fill(0, 0, 512);
  for (const [i, p] of [P1, P2].entries()) {
    const e = 446 + 16 * i;
    image[e + 4] = p.type;
    image.writeUInt32LE(p.offset / 512, e + 8);
    image.writeUInt32LE(p.size / 512, e + 12);
  }
  image[510] = 0x55;
  image[511] = 0xaa;
  return image;
}

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a client to its end, asynchronously: the export's relay lives in this process. */
function run(command: string, args: string[]): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr }));
  });
}

async function readExport(uri: string): Promise<Buffer> {
  const r = await run('nbdcopy', [uri, '-']);
  if (r.code !== 0) throw new Error(`nbdcopy ${uri} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

async function qemuIo(uri: string, command: string): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', '-c', command, uri]);
  if (r.code !== 0 || /error|failed/i.test(r.stderr + r.stdout.toString()))
    throw new Error(`qemu-io ${command} on ${uri}: ${r.code} ${r.stderr} ${r.stdout.toString()}`);
}

/** What a promise rejected with (fails the test when it resolves). */
async function rejection(promise: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await promise;
  } catch (err) {
    return err as { code?: string; message: string };
  }
  throw new Error('expected a rejection');
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Processes whose command line mentions `text` (e.g. an overlay directory): what a failure left running. */
async function processesMentioning(text: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(text)) found.push(`${pid}: ${cmdline.replaceAll('\0', ' ')}`);
  }
  return found;
}

function connectRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

let dir: string;
let imagePath: string;
let image: Buffer;
let imageSha: string;
const exports: NbdExport[] = [];
const records: LogRecord[] = [];
const log = createLogger({ level: 'debug', sink: (r) => records.push(r) });
let jobs = 0;

async function start(o: Partial<NbdExportOptions> = {}): Promise<NbdExport & { overlayDir: string }> {
  const overlayDir = join(dir, 'state', 'nbd', `job-${++jobs}`);
  const e = await startNbdExport({
    image: imagePath,
    partition: 2,
    bindAddress: '127.0.0.1',
    allowFrom: '127.0.0.1',
    overlayDir,
    log,
    ...o,
  });
  exports.push(e);
  return Object.assign(e, { overlayDir: o.overlayDir ?? overlayDir });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-export-'));
  imagePath = join(dir, 'image.img');
  image = buildImage();
  imageSha = sha256(image);
  await writeFile(imagePath, image);
  // As the store keeps it: nobody may write the image, so a write that reached it would fail loudly.
  await chmod(imagePath, 0o444);
});

afterEach(async () => {
  await Promise.all(exports.splice(0).map((e) => e.stop()));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('startNbdExport', () => {
  it('serves the partition byte for byte, and the whole image or a byte range when asked', async () => {
    const e = await start();
    expect(e.size).toBe(P2.size);
    expect(e.uri).toBe(`nbd://127.0.0.1:${e.port}/`);
    expect((await readExport(e.uri)).equals(image.subarray(P2.offset, P2.offset + P2.size))).toBe(true);

    const p1 = await start({ partition: 1 });
    expect((await readExport(p1.uri)).equals(image.subarray(P1.offset, P1.offset + P1.size))).toBe(true);

    const range = await start({ partition: undefined, offset: 512, size: 4096 });
    expect((await readExport(range.uri)).equals(image.subarray(512, 512 + 4096))).toBe(true);

    const whole = await start({ partition: undefined });
    expect(whole.size).toBe(IMAGE_SIZE);
    expect(sha256(await readExport(whole.uri))).toBe(imageSha);
  });

  it('lets the board write into the overlay in its directory: read back, the image unchanged', async () => {
    const e = await start();
    await qemuIo(e.uri, 'write -P 0xab 0 64k');
    await qemuIo(e.uri, `write -P 0x5c ${16 * MiB} 4k`);
    const after = await readExport(e.uri);
    const expected = Buffer.from(image.subarray(P2.offset, P2.offset + P2.size));
    expected.fill(0xab, 0, 64 * 1024);
    expected.fill(0x5c, 16 * MiB, 16 * MiB + 4096);
    expect(after.equals(expected)).toBe(true);
    expect(sha256(await readFile(imagePath))).toBe(imageSha);

    // The cow filter's temporary file (unlinked at once) is in the job's directory, not /var/tmp.
    const fds = await readdir(`/proc/${e.pid}/fd`);
    const targets = await Promise.all(fds.map((fd) => readlink(`/proc/${e.pid}/fd/${fd}`).catch(() => '')));
    expect(targets.filter((t) => t.startsWith(e.overlayDir + '/') && t.endsWith('(deleted)'))).toHaveLength(1);
    expect(targets.filter((t) => t.startsWith('/var/tmp/'))).toEqual([]);
  });

  it('starts a second export of the same image from the original bytes while the first holds writes', async () => {
    const first = await start();
    await qemuIo(first.uri, 'write -P 0xee 0 1M');
    const second = await start();
    expect((await readExport(second.uri)).equals(image.subarray(P2.offset, P2.offset + P2.size))).toBe(true);
    expect((await readExport(first.uri)).subarray(0, MiB).equals(Buffer.alloc(MiB, 0xee))).toBe(true);
    await first.stop();
    const third = await start();
    expect(sha256(await readExport(third.uri))).toBe(sha256(image.subarray(P2.offset, P2.offset + P2.size)));
  });

  it('admits only the board: a client from 127.0.0.1 is refused when the board is 127.0.0.2', async () => {
    const e = await start({ allowFrom: '127.0.0.2' });
    const refused = await run('nbdinfo', [e.uri]);
    expect(refused.code).not.toBe(0);
    expect(
      records.some((r) => r.msg === 'NBD connection refused: not the board' && r.fields.from === '127.0.0.1'),
    ).toBe(true);
    // From the board's address the same export greets with the NBD handshake's magic.
    const greeting = await new Promise<Buffer>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: e.port, localAddress: '127.0.0.2' });
      const got: Buffer[] = [];
      s.on('data', (d: Buffer) => {
        got.push(d);
        if (Buffer.concat(got).length >= 16) {
          s.destroy();
          resolve(Buffer.concat(got));
        }
      });
      s.on('error', reject);
      s.on('close', () => resolve(Buffer.concat(got)));
    });
    expect(greeting.subarray(0, 16).toString('latin1')).toBe('NBDMAGICIHAVEOPT');
    expect(alive(e.pid)).toBe(true);
  });

  it('asks for the export name when one is set', async () => {
    const e = await start({ exportName: 'rootfs' });
    expect(e.uri).toBe(`nbd://127.0.0.1:${e.port}/rootfs`);
    expect((await run('nbdinfo', [`nbd://127.0.0.1:${e.port}/other`])).code).not.toBe(0);
    expect((await readExport(e.uri)).length).toBe(P2.size);
  });

  it('stop() leaves no process, no overlay files and no listener', async () => {
    const e = await start();
    await qemuIo(e.uri, 'write -P 0x11 0 64k');
    expect((await stat(e.overlayDir)).mode & 0o777).toBe(0o700);
    await e.stop();
    expect(alive(e.pid)).toBe(false);
    expect(await processesMentioning(e.overlayDir)).toEqual([]);
    await expect(stat(e.overlayDir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await connectRefused(e.port)).toBe(true);
    expect(await e.exited).toMatchObject({ stopped: true });
    expect((await e.exited).failure).toBeUndefined();
    await e.stop(); // again: a no-op
  });

  it('keeps serving after a client vanishes mid-read or sends garbage', async () => {
    const e = await start();
    const reader = spawn('nbdcopy', [e.uri, '-'], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise<void>((resolve) => reader.stdout.once('data', () => resolve()));
    reader.kill('SIGKILL');
    await new Promise((resolve) => reader.once('close', resolve));

    await new Promise<void>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: e.port }, () => s.end(Buffer.alloc(4096, 0xff)));
      s.resume();
      s.on('error', () => resolve());
      s.on('close', () => resolve());
    });
    await waitUntil(() => e.connections() === 0, 'the cut connections to be dropped');

    expect(alive(e.pid)).toBe(true);
    expect((await readExport(e.uri)).equals(image.subarray(P2.offset, P2.offset + P2.size))).toBe(true);
  });

  it('stops while a client is mid-read: the client is cut off, nothing is left', async () => {
    const e = await start();
    // A reader whose output nobody drains: it stays connected, mid-read, until the export goes.
    const reader = spawn('nbdcopy', [e.uri, '-'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const readerClosed = new Promise<number | null>((resolve) => reader.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve) => reader.stdout.once('data', () => resolve()));
    reader.stdout.pause();
    expect(e.connections()).toBe(1);
    await e.stop();
    expect(alive(e.pid)).toBe(false);
    await expect(stat(e.overlayDir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await processesMentioning(e.overlayDir)).toEqual([]);
    reader.stdout.resume();
    expect(await readerClosed).not.toBe(0);
  });

  it('reports nbdkit dying during the job as NBD_SERVER_FAILED and leaves nothing behind', async () => {
    const e = await start();
    process.kill(e.pid, 'SIGKILL');
    const exit = await e.exited;
    expect(exit.stopped).toBe(false);
    expect(exit.signal).toBe('SIGKILL');
    expect(exit.failure?.code).toBe('NBD_SERVER_FAILED');
    expect(exit.failure?.message).toMatch(/SIGKILL/);
    await expect(stat(e.overlayDir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await connectRefused(e.port)).toBe(true);
    await e.stop();
  });

  it('refuses with LAB_MISCONFIGURED, naming the Debian package, when nbdkit is not on PATH', async () => {
    const path = process.env.PATH;
    const overlayDir = join(dir, 'state', 'nbd', 'no-nbdkit');
    process.env.PATH = join(dir, 'empty-bin');
    try {
      const err = await rejection(
        startNbdExport({
          image: imagePath,
          partition: 2,
          bindAddress: '127.0.0.1',
          allowFrom: '127.0.0.1',
          overlayDir,
          log,
        }),
      );
      expect(err.code).toBe('LAB_MISCONFIGURED');
      expect(err.message).toMatch(/not installed \(install the Debian package nbdkit\)/);
    } finally {
      process.env.PATH = path;
    }
    await expect(stat(overlayDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses with LAB_MISCONFIGURED when nbdkit lacks a filter, leaving nothing behind', async () => {
    const which = await run('/bin/sh', ['-c', 'command -v nbdkit']);
    const wrapper = join(dir, 'nbdkit-without-a-filter');
    // The real nbdkit, asked for one filter more than it has: its own error, as when one is missing.
    await writeFile(wrapper, `#!/bin/sh\nexec ${which.stdout.toString().trim()} --filter=rpi-flash-absent "$@"\n`);
    await chmod(wrapper, 0o755);
    const overlayDir = join(dir, 'state', 'nbd', 'no-filter');
    const err = await rejection(start({ nbdkit: wrapper, overlayDir }));
    expect(err.code).toBe('LAB_MISCONFIGURED');
    expect(err.message).toMatch(/nbdkit lacks its rpi-flash-absent filter.*Debian package nbdkit/);
    await expect(stat(overlayDir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await processesMentioning(overlayDir)).toEqual([]);
  });

  it('refuses a partition the image lacks before starting anything', async () => {
    const overlayDir = join(dir, 'state', 'nbd', 'no-partition');
    const err = await rejection(start({ partition: 3, overlayDir }));
    expect(err.code).toBe('IMAGE_NOT_DISK');
    expect(err.message).toMatch(/no partition 3 .*: 1 \(type 0x0c\), 2 \(type 0x83\)$/);
    await expect(
      start({ partition: undefined, offset: IMAGE_SIZE - 512, size: 1024, overlayDir }),
    ).rejects.toMatchObject({ code: 'IMAGE_TRUNCATED' });
    await expect(stat(overlayDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it(
    'refuses a bind address the machine does not have as LAB_MISCONFIGURED, leaving nothing behind',
    async () => {
      const overlayDir = join(dir, 'state', 'nbd', 'bad-bind');
      // 192.0.2.0/24 is TEST-NET-1: never an address of this machine, so listen() fails (nothing is sent).
      await expect(start({ bindAddress: '192.0.2.1', overlayDir })).rejects.toMatchObject({
        code: 'LAB_MISCONFIGURED',
      });
      await expect(stat(overlayDir)).rejects.toMatchObject({ code: 'ENOENT' });
      expect(await processesMentioning(overlayDir)).toEqual([]);
    },
    WAIT_MS,
  );
});

describe('removeOverlayLeftovers', () => {
  it('removes the overlay folders a killed agent left, and nothing else of the state directory', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'nbd-leftovers-'));
    try {
      expect(await removeOverlayLeftovers(stateDir)).toEqual([]);
      for (const job of ['j1', 'j2']) {
        const dir = overlayDirFor(stateDir, job);
        await mkdir(dir, { recursive: true });
        await writeFile(join(dir, 'nbdkit.pid'), '1\n');
      }
      await writeFile(join(stateDir, 'boards.json'), '{}\n');
      expect((await removeOverlayLeftovers(stateDir)).sort()).toEqual(['j1', 'j2']);
      expect(await readdir(join(stateDir, 'netboot'))).toEqual([]);
      expect(await readdir(stateDir)).toEqual(expect.arrayContaining(['boards.json']));
    } finally {
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});
