/**
 * Initramfs inspection on archives built here the way initramfs-tools builds them: newc cpio
 * (a small writer below; Debian's `cpio` is not needed), the early-microcode archive uncompressed
 * in front of the main one, compressed by Debian's own tools (gzip by zlib, zstd, xz, lzma, lz4).
 */
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  inspectInitramfs,
  requireNbdClient,
  type InitramfsContents,
  type InitramfsOptions,
  type InitramfsSource,
} from '../../runner-agent/src/netboot/initramfs.js';
import { patternBytes } from '../../runner-agent/src/sample-image.js';

interface Entry {
  name: string;
  mode?: number;
  data?: Buffer | string;
}

const FILE = 0o100755;
const DIR = 0o040755;
const LINK = 0o120777;

const pad4 = (b: Buffer) => (b.length % 4 ? Buffer.concat([b, Buffer.alloc(4 - (b.length % 4))]) : b);

/** A newc archive ("070701", or "070702" with `crc`), ended by TRAILER!!!, padded like GNU cpio to 512 bytes. */
function newc(entries: Entry[], o: { crc?: boolean; block?: number } = {}): Buffer {
  const parts: Buffer[] = [];
  const all = [...entries, { name: 'TRAILER!!!', mode: 0 }];
  all.forEach((e, i) => {
    const data = typeof e.data === 'string' ? Buffer.from(e.data) : (e.data ?? Buffer.alloc(0));
    const fields = [i + 1, e.mode ?? FILE, 0, 0, 1, 0, data.length, 0, 0, 0, 0, Buffer.byteLength(e.name) + 1, 0];
    const header = (o.crc ? '070702' : '070701') + fields.map((f) => f.toString(16).padStart(8, '0')).join('');
    parts.push(pad4(Buffer.concat([Buffer.from(header, 'latin1'), Buffer.from(e.name + '\0')])), pad4(data));
  });
  const archive = Buffer.concat(parts);
  const block = o.block ?? 512;
  return Buffer.concat([archive, Buffer.alloc((block - (archive.length % block)) % block)]);
}

/** The main archive of a small initramfs-tools image, with or without nbd-client. */
function mainArchive(withClient: boolean): Buffer {
  return newc([
    { name: '.', mode: DIR },
    { name: 'bin', mode: DIR },
    { name: 'bin/busybox', data: patternBytes(300_000, 3) },
    { name: 'bin/sh', mode: LINK, data: 'busybox' },
    { name: 'init', data: '#!/bin/sh\nexec /sbin/init\n' },
    { name: 'scripts/local-top/nbd', data: '#!/bin/sh\n' },
    ...(withClient ? [{ name: 'usr/sbin/nbd-client', data: patternBytes(70_000, 4) }] : []),
    { name: 'usr/lib/modules/6.1.0/kernel/drivers/block/nbd.ko', data: patternBytes(40_000, 5) },
  ]);
}

/** The early-microcode archive initramfs-tools puts first, uncompressed. */
const microcode = newc([
  { name: 'kernel', mode: DIR },
  { name: 'kernel/x86/microcode', mode: DIR },
  { name: 'kernel/x86/microcode/AuthenticAMD.bin', data: patternBytes(10_000, 9) },
]);

/** Compresses with Debian's tool, as mkinitramfs does. */
function compress(command: string, args: string[], data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`${command} ${code}: ${stderr}`)),
    );
    child.stdin.end(data);
  });
}

/** initramfs-tools' compressors (mkinitramfs's compress_cmd for each COMPRESS value). */
const compressors: Record<string, (data: Buffer) => Promise<Buffer>> = {
  gzip: (d) => Promise.resolve(gzipSync(d, { level: 9 })),
  zstd: (d) => compress('zstd', ['-q', '-1', '-T0', '-c'], d),
  xz: (d) => compress('xz', ['--check=crc32', '-c'], d),
  lzma: (d) => compress('xz', ['--format=lzma', '-c'], d),
  lz4: (d) => compress('lz4', ['-9', '-l', '-c'], d),
};

/** The bytes handed over in pieces of `size`, as a file read extent by extent arrives. */
function inPieces(data: Buffer, size: number): () => AsyncIterable<Uint8Array> {
  return async function* () {
    for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
  };
}

async function rejection(promise: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await promise;
  } catch (err) {
    return err as { code?: string; message: string };
  }
  throw new Error('expected a rejection');
}

/** Children of this process still running (a decompressor left behind). */
async function childProcesses(): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const ppid = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1];
    if (Number(ppid) === process.pid) found.push(`${pid} ${stat.slice(0, stat.lastIndexOf(')') + 1)}`);
  }
  return found;
}

const inspect = (source: InitramfsSource, o?: InitramfsOptions): Promise<InitramfsContents> =>
  inspectInitramfs(source, { name: 'initrd.img', ...o });

describe('inspectInitramfs', () => {
  it('lists an uncompressed newc archive and finds usr/sbin/nbd-client', async () => {
    const found = await inspect(mainArchive(true));
    expect(found.hasNbdClient).toBe(true);
    expect(found.nbdClient).toBe('usr/sbin/nbd-client');
    expect(found.files).toBe(8);
    expect(found.entries.map((e) => e.path)).toContain('usr/lib/modules/6.1.0/kernel/drivers/block/nbd.ko');
    expect(found.entries.find((e) => e.path === 'bin/sh')).toEqual({ path: 'bin/sh', type: 'symlink', size: 7 });
    expect(found.entries.find((e) => e.path === 'bin')).toEqual({ path: 'bin', type: 'directory', size: 0 });
    expect(found.parts).toEqual([{ offset: 0, compression: 'none', archives: 1, entries: 8 }]);
    expect(found.warnings).toEqual([]);
  });

  it('reads the checksummed newc variant (070702) and strips ./ from names', async () => {
    const found = await inspect(newc([{ name: './sbin/nbd-client', data: 'x' }], { crc: true }));
    expect(found.nbdClient).toBe('sbin/nbd-client');
  });

  for (const [format, squash] of Object.entries(compressors)) {
    it(`reads a ${format}-compressed archive behind the uncompressed microcode, with or without a client`, async () => {
      for (const withClient of [true, false]) {
        const main = await squash(mainArchive(withClient));
        const found = await inspect(Buffer.concat([microcode, main]));
        expect(found.hasNbdClient).toBe(withClient);
        expect(found.files).toBe(3 + (withClient ? 8 : 7));
        expect(found.entries[0]!.path).toBe('kernel');
        expect(found.parts).toEqual([
          { offset: 0, compression: 'none', archives: 1, entries: 3 },
          { offset: microcode.length, compression: format, archives: 1, entries: withClient ? 8 : 7 },
        ]);
        expect(found.warnings).toEqual([]);
        // The same bytes arriving in odd pieces (a magic number split across two of them).
        const pieces = await inspect(inPieces(Buffer.concat([microcode, main]), microcode.length + 3));
        expect(pieces.entries).toEqual(found.entries);
      }
    });
  }

  it('reads a compressed-only initramfs with several archives and zero padding between them (dracut)', async () => {
    const raw = Buffer.concat([
      newc([{ name: 'etc/a', data: 'a' }], { block: 4 }),
      Buffer.alloc(16),
      mainArchive(true),
    ]);
    const found = await inspect(await compressors.zstd!(raw));
    expect(found.parts).toEqual([{ offset: 0, compression: 'zstd', archives: 2, entries: 9 }]);
    expect(found.hasNbdClient).toBe(true);
  });

  it('reads in pieces of a few bytes, headers and names split anywhere', async () => {
    const data = Buffer.concat([microcode, mainArchive(true)]);
    const found = await inspect(inPieces(data, 7));
    expect(found.files).toBe(11);
    expect(found.hasNbdClient).toBe(true);
  });

  it('does not see an NBD client that is only a busybox applet (no nbd-client entry)', async () => {
    const found = await inspect(
      newc([
        { name: 'bin/busybox', data: Buffer.from('...nbd-client\0...') },
        { name: 'bin/sh', mode: LINK, data: 'busybox' },
      ]),
    );
    expect(found.hasNbdClient).toBe(false);
    // A directory of that name is not a client either.
    expect((await inspect(newc([{ name: 'etc/nbd-client', mode: DIR }]))).hasNbdClient).toBe(false);
  });

  it('keeps at most maxEntries entries but counts and searches them all', async () => {
    const many = newc([
      ...Array.from({ length: 50 }, (_, i) => ({ name: `lib/f${i}`, data: 'x' })),
      { name: 'sbin/nbd-client', data: 'x' },
    ]);
    const found = await inspect(many, { maxEntries: 10 });
    expect(found.entries).toHaveLength(10);
    expect(found.files).toBe(51);
    expect(found.nbdClient).toBe('sbin/nbd-client');
  });

  it('lists what came out before junk after a compressed stream, with a warning (zstd fails there)', async () => {
    const main = await compressors.zstd!(mainArchive(true));
    const found = await inspect(Buffer.concat([microcode, main, Buffer.from('junk after the frame')]));
    expect(found.hasNbdClient).toBe(true);
    expect(found.warnings).toHaveLength(1);
    expect(found.warnings[0]).toMatch(new RegExp(`^the zstd part at byte ${microcode.length} ends in an error after`));
  });

  it('warns that the kernel reads lz4 only in the legacy format', async () => {
    const frame = await compress('lz4', ['-c'], mainArchive(true));
    const found = await inspect(frame);
    expect(found.hasNbdClient).toBe(true);
    expect(found.warnings).toHaveLength(1);
    expect(found.warnings[0]).toMatch(/legacy format \(lz4 -l\)/);
  });

  describe('refuses with a code', () => {
    it('IMAGE_NO_KERNEL for a file that is not an initramfs', async () => {
      const kernel = Buffer.concat([Buffer.from('MZ\x40\xfa', 'latin1'), patternBytes(1000, 1)]);
      const cases: Array<[Buffer, RegExp]> = [
        [kernel, /^initrd.img is not an initramfs: it starts with 4d 5a 40 fa .*neither a cpio archive nor gzip/],
        [Buffer.alloc(0), /^initrd.img is empty$/],
        [Buffer.alloc(4096), /only zero bytes/],
        [
          Buffer.concat([microcode, Buffer.from('not compressed at all')]),
          new RegExp(`has bytes at ${microcode.length} \\(6e 6f 74 20 63 6f\\)`),
        ],
        [newc([{ name: 'a', data: 'a' }]).subarray(0, 100), /is cut short: it ends inside a cpio entry/],
        [Buffer.concat([microcode, Buffer.from([0x1f, 0x8b])]), /its gzip part at byte \d+ fails to decompress/],
        [Buffer.from('070707' + '0'.repeat(200), 'latin1'), /old portable format.*cpio -H newc/],
        [Buffer.from('070701' + 'zz'.repeat(52), 'latin1'), /field that is not hex/],
      ];
      for (const [bytes, message] of cases) {
        const err = await rejection(inspect(bytes));
        expect(err.code, String(message)).toBe('IMAGE_NO_KERNEL');
        expect(err.message).toMatch(message);
      }
    });

    it('IMAGE_NO_KERNEL for damaged compressed data, leaving no decompressor running', async () => {
      for (const format of ['gzip', 'zstd', 'xz', 'lz4']) {
        const main = await compressors[format]!(mainArchive(true));
        const broken = Buffer.from(main.subarray(0, 200)); // cut short long before the first archive ends
        const err = await rejection(inspect(Buffer.concat([microcode, broken])));
        expect(err.code, format).toBe('IMAGE_NO_KERNEL');
        expect(err.message).toMatch(new RegExp(`its ${format} part at byte ${microcode.length} fails to decompress`));
      }
      expect(await childProcesses()).toEqual([]);
    });

    it('IMAGE_NO_KERNEL past maxOutputBytes, the decompressor stopped', async () => {
      const big = await compressors.zstd!(newc([{ name: 'big', data: Buffer.alloc(8 * 1024 * 1024) }]));
      const err = await rejection(inspect(big, { maxOutputBytes: 1024 * 1024 }));
      expect(err.code).toBe('IMAGE_NO_KERNEL');
      expect(err.message).toMatch(/decompresses to more than 1048576 bytes/);
      expect(await childProcesses()).toEqual([]);
    });

    it('IMAGE_NO_NBD_CLIENT for a compression the agent does not read (bzip2)', async () => {
      const err = await rejection(inspect(Buffer.concat([microcode, Buffer.from('BZh91AY&SY')])));
      expect(err.code).toBe('IMAGE_NO_NBD_CLIENT');
      expect(err.message).toMatch(/bzip2-compressed.*COMPRESS=zstd/);
    });

    it('LAB_MISCONFIGURED naming the Debian package when the tool is missing', async () => {
      const main = await compressors.zstd!(mainArchive(true));
      const err = await rejection(inspect(main, { tools: { zstd: '/nonexistent/zstd' } }));
      expect(err.code).toBe('LAB_MISCONFIGURED');
      expect(err.message).toMatch(/zstd-compressed and `\/nonexistent\/zstd` is not installed.*Debian package zstd/);
    });
  });
});

describe('requireNbdClient', () => {
  it('returns the contents when the client is there and refuses with IMAGE_NO_NBD_CLIENT when not', async () => {
    const squash = compressors.zstd!;
    expect((await requireNbdClient(await squash(mainArchive(true)))).nbdClient).toBe('usr/sbin/nbd-client');
    const err = await rejection(requireNbdClient(await squash(mainArchive(false)), { name: 'initramfs8' }));
    expect(err.code).toBe('IMAGE_NO_NBD_CLIENT');
    expect(err.message).toMatch(/^initramfs8 holds no nbd-client \(7 files looked at\): install nbd-client/);
  });
});
