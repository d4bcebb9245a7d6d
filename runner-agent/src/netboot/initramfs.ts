/**
 * What an initramfs holds, read the way the Linux kernel unpacks it (init/initramfs.c): a run of
 * newc cpio archives ("070701", or "070702" with checksums), zero bytes between them, and where
 * something else begins, a compressed blob whose output is again cpio archives. Debian's
 * initramfs-tools builds exactly that: the early-microcode cpio uncompressed, then the main cpio
 * compressed (gzip, zstd, xz, lzma or lz4, by its COMPRESS setting). Network boot needs one fact
 * from it before the reset: is there an NBD client to bring the root file system up?
 *
 * The file is read once, front to back, from a stream of chunks (a file of the image's boot
 * partition, read through the image view: nothing is copied or unpacked to disk). Uncompressed
 * archives are parsed as they pass; a compressed blob goes through Node's zlib (gzip) or Debian's
 * own tools (`zstd`, `xz` for xz and lzma, `lz4`), as the store does for images, with their memory
 * capped and their output counted: past `maxOutputBytes` the tool is stopped. Only headers and
 * names are kept; file contents are skipped as they stream by.
 *
 * Two limits of reading it this way, both harmless for what initramfs-tools and dracut build:
 * a compressed blob is taken to run to the end of the file (the kernel would carry on after it,
 * but a decompressing tool does not say where its input ended), and only names are looked at, so
 * an NBD client that is a busybox applet (one `busybox` binary, no `nbd-client` entry) is not seen:
 * a busybox with that applet lists it only inside its own binary. Debian's nbd-client package adds
 * its own `nbd-client` binary to the initramfs through its initramfs-tools hook, which this finds.
 */
import { spawn } from 'node:child_process';
import zlib from 'node:zlib';
import { CodedError } from '../../../src/protocol/errors.js';

export type InitramfsCompression = 'none' | 'gzip' | 'zstd' | 'xz' | 'lzma' | 'lz4';

export interface InitramfsEntry {
  /** The archive's name for it, without a leading `./` or `/` (`usr/sbin/nbd-client`). */
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'other';
  /** Bytes of content (a symlink's target length). */
  size: number;
}

/** One run of archives as found in the file: at which byte it starts and how it is stored. */
export interface InitramfsPart {
  offset: number;
  compression: InitramfsCompression;
  /** Complete archives (ended by a TRAILER!!! entry) in this part. */
  archives: number;
  entries: number;
}

export interface InitramfsContents {
  /** Every entry, in archive order, up to `maxEntries` (the count and the answer cover them all). */
  entries: InitramfsEntry[];
  /** How many entries were looked at. */
  files: number;
  parts: InitramfsPart[];
  /** An entry whose basename is `nbd-client` (a file or a symlink) is in the initramfs. */
  hasNbdClient: boolean;
  /** Its path, when there is one. */
  nbdClient?: string;
  /** Oddities the kernel would tolerate or stop at (junk after an archive, lz4 in the frame format). */
  warnings: string[];
}

/** The initramfs's bytes: a buffer, or chunks in file order (the iterable is read once). */
export type InitramfsSource = Uint8Array | AsyncIterable<Uint8Array> | (() => AsyncIterable<Uint8Array>);

export interface InitramfsOptions {
  /** Its name, for messages (`initrd.img`). */
  name?: string;
  /** Decompressed bytes read at most (default 1 GiB): a larger initramfs is refused. */
  maxOutputBytes?: number;
  /** Entries kept in `entries` (default 100 000). */
  maxEntries?: number;
  /** Commands for the formats Node cannot decompress; tests point these elsewhere. */
  tools?: { zstd?: string; xz?: string; lz4?: string };
}

const HEADER = 110;
/** The kernel's PATH_MAX: a longer name is skipped by the kernel, refused here. */
const NAME_MAX = 4096;
const TRAILER = 'TRAILER!!!';
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const CLIENT = 'nbd-client';
const STDERR_KEEP = 2048;

/** A cpio header or name that cannot be read: the caller says where and in what. */
class CpioDamage extends Error {}

interface Magic {
  compression: Exclude<InitramfsCompression, 'none'>;
  bytes: readonly number[];
  warning?: string;
}

/** The kernel's decompress_method() table, in the formats Debian's tools read. */
const MAGICS: readonly Magic[] = [
  { compression: 'gzip', bytes: [0x1f, 0x8b] },
  { compression: 'xz', bytes: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00] },
  { compression: 'zstd', bytes: [0x28, 0xb5, 0x2f, 0xfd] },
  { compression: 'lzma', bytes: [0x5d, 0x00, 0x00] },
  { compression: 'lz4', bytes: [0x02, 0x21, 0x4c, 0x18] },
  {
    compression: 'lz4',
    bytes: [0x04, 0x22, 0x4d, 0x18],
    warning: 'the initramfs is lz4 in the frame format; the kernel unpacks only the legacy format (lz4 -l)',
  },
];
/** Formats the kernel reads that the agent does not look inside. */
const UNREAD: ReadonlyArray<{ name: string; bytes: readonly number[] }> = [
  { name: 'bzip2', bytes: [0x42, 0x5a, 0x68] },
  { name: 'lzo', bytes: [0x89, 0x4c, 0x5a, 0x4f] },
];
const MAGIC_LENGTH = 6;

function startsWith(head: Uint8Array, bytes: readonly number[]): boolean {
  return head.length >= bytes.length && bytes.every((b, i) => head[i] === b);
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes)
    .toString('hex')
    .replace(/(..)(?!$)/g, '$1 ');
}

const align4 = (n: number) => (n + 3) & ~3;

/**
 * A newc cpio stream parser that takes bytes as they come. `feed` returns where, in the chunk it
 * was given, bytes begin that are neither cpio nor the zero padding between archives (-1 when
 * none): at top level that is a compressed blob, inside one it is junk.
 */
class NewcScanner {
  /** Offset in the stream of the next byte fed. */
  pos = 0;
  archives = 0;
  entries = 0;
  private state: 'boundary' | 'header' | 'name' | 'skip' = 'boundary';
  private collected: Buffer[] = [];
  private collectedLength = 0;
  private headerStart = 0;
  private nameLength = 0;
  private mode = 0;
  private size = 0;
  private next = 0;

  constructor(private readonly onEntry: (entry: InitramfsEntry) => void) {}

  /** True when the stream stopped inside an entry rather than between entries. */
  get midEntry(): boolean {
    return this.state !== 'boundary';
  }

  feed(chunk: Buffer): number {
    let i = 0;
    while (i < chunk.length) {
      switch (this.state) {
        case 'boundary': {
          const byte = chunk[i]!;
          if (byte === 0) {
            i++;
            this.pos++;
            continue;
          }
          // The kernel takes '0' as a cpio header only on a 4-byte boundary.
          if (byte !== 0x30 || this.pos & 3) return i;
          this.state = 'header';
          this.headerStart = this.pos;
          continue;
        }
        case 'header':
        case 'name': {
          const want = (this.state === 'header' ? HEADER : this.nameLength) - this.collectedLength;
          const take = Math.min(want, chunk.length - i);
          this.collected.push(chunk.subarray(i, i + take));
          this.collectedLength += take;
          i += take;
          this.pos += take;
          if (take < want) continue;
          const bytes = Buffer.concat(this.collected);
          this.collected = [];
          this.collectedLength = 0;
          if (this.state === 'header') this.parseHeader(bytes);
          else this.parseName(bytes);
          continue;
        }
        case 'skip': {
          const take = Math.min(this.next - this.pos, chunk.length - i);
          i += take;
          this.pos += take;
          if (this.pos === this.next) this.state = 'boundary';
          continue;
        }
      }
    }
    return -1;
  }

  private parseHeader(h: Buffer): void {
    const magic = h.toString('latin1', 0, 6);
    if (magic !== '070701' && magic !== '070702') {
      throw new CpioDamage(
        magic === '070707'
          ? 'a cpio archive in the old portable format (the kernel reads only newc: cpio -H newc)'
          : `no cpio magic at byte ${this.headerStart} (found ${JSON.stringify(magic)})`,
      );
    }
    const field = (n: number): number => {
      const text = h.toString('latin1', 6 + 8 * n, 14 + 8 * n);
      if (!/^[0-9a-fA-F]{8}$/.test(text))
        throw new CpioDamage(
          `cpio header at byte ${this.headerStart} has a field that is not hex: ${JSON.stringify(text)}`,
        );
      return parseInt(text, 16);
    };
    this.mode = field(1);
    this.size = field(6);
    this.nameLength = field(11);
    if (this.nameLength < 1 || this.nameLength > NAME_MAX)
      throw new CpioDamage(`cpio header at byte ${this.headerStart} names a ${this.nameLength}-byte file name`);
    this.next = align4(align4(this.headerStart + HEADER + this.nameLength) + this.size);
    this.state = 'name';
  }

  private parseName(bytes: Buffer): void {
    const end = bytes.indexOf(0);
    const raw = bytes.toString('utf8', 0, end < 0 ? bytes.length : end);
    if (raw === TRAILER) this.archives++;
    else {
      this.entries++;
      const kind = this.mode & S_IFMT;
      this.onEntry({
        path: raw.replace(/^(\.\/|\/)+/, ''),
        type: kind === S_IFREG ? 'file' : kind === S_IFDIR ? 'directory' : kind === S_IFLNK ? 'symlink' : 'other',
        size: this.size,
      });
    }
    this.state = this.pos === this.next ? 'boundary' : 'skip';
  }
}

/** A running decompressor: bytes in, output handed to `onData` as it comes. */
interface Inflater {
  write(chunk: Buffer): Promise<void>;
  /** No more input: resolves with how the decompressor ended. */
  end(): Promise<{ ok: true } | { ok: false; why: string }>;
  /** Stop now (output no longer wanted). */
  abort(): void;
}

interface ToolSpec {
  command: string;
  args: string[];
  debianPackage: string;
}

function toolFor(
  compression: Exclude<InitramfsCompression, 'none' | 'gzip'>,
  tools: InitramfsOptions['tools'],
): ToolSpec {
  // Memory caps: what a kernel-bootable initramfs needs is far below them (the kernel's own
  // decompressors work in a few MiB), so only a hostile file meets them.
  switch (compression) {
    case 'zstd':
      return { command: tools?.zstd ?? 'zstd', args: ['-dcq', '--memory=128MB'], debianPackage: 'zstd' };
    case 'xz':
      return { command: tools?.xz ?? 'xz', args: ['-dc', '--memlimit-decompress=256MiB'], debianPackage: 'xz-utils' };
    case 'lzma':
      return {
        command: tools?.xz ?? 'xz',
        args: ['-dc', '--format=lzma', '--memlimit-decompress=256MiB'],
        debianPackage: 'xz-utils',
      };
    case 'lz4':
      return { command: tools?.lz4 ?? 'lz4', args: ['-dc'], debianPackage: 'lz4' };
  }
}

function startInflater(
  compression: Exclude<InitramfsCompression, 'none'>,
  onData: (chunk: Buffer) => void,
  tools: InitramfsOptions['tools'],
): Inflater {
  let failed: string | undefined;
  let aborted = false;
  let input: NodeJS.WritableStream & { destroy(): void };
  let ended: Promise<void>;
  let kill = () => {};
  if (compression === 'gzip') {
    const gunzip = zlib.createGunzip();
    input = gunzip;
    gunzip.on('data', (d: Buffer) => !aborted && onData(d));
    ended = new Promise((resolve) => {
      gunzip.once('end', resolve);
      gunzip.once('close', resolve);
      gunzip.once('error', (err) => {
        failed ??= `gunzip: ${err.message}`;
        resolve();
      });
    });
    kill = () => gunzip.destroy();
  } else {
    const tool = toolFor(compression, tools);
    const child = spawn(tool.command, tool.args, { stdio: ['pipe', 'pipe', 'pipe'] });
    input = child.stdin;
    // The tool closing its input early (it failed, or was stopped) is EPIPE here; its exit says why.
    child.stdin.on('error', () => {});
    child.stdout.on('data', (d: Buffer) => !aborted && onData(d));
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (t: string) => (stderr = (stderr + t).slice(-STDERR_KEEP)));
    ended = new Promise((resolve, reject) => {
      child.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT')
          reject(
            new CodedError(
              'LAB_MISCONFIGURED',
              `the initramfs is ${compression}-compressed and \`${tool.command}\` is not installed ` +
                `(install the Debian package ${tool.debianPackage}) to look inside it`,
            ),
          );
        else {
          failed ??= `${tool.command}: ${err.message}`;
          resolve();
        }
      });
      child.once('close', (code, signal) => {
        const how = stderr.trim() || (signal ? `killed by ${signal}` : `exit code ${code}`);
        if (code !== 0) failed ??= `${tool.command} ${tool.args.join(' ')}: ${how}`;
        resolve();
      });
    });
    kill = () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    };
  }
  ended.catch(() => {}); // observed by end()

  return {
    async write(chunk) {
      if (aborted || failed) return;
      // Not events.once(): it rejects on the EPIPE a failed tool gives, and the exit says more.
      if (!input.write(chunk)) await Promise.race([new Promise((resolve) => input.once('drain', resolve)), ended]);
    },
    async end() {
      if (!aborted) input.end();
      await ended;
      return failed && !aborted ? { ok: false, why: failed } : { ok: true };
    },
    abort() {
      aborted = true;
      kill();
      input.destroy();
    },
  };
}

async function* chunksOf(source: InitramfsSource): AsyncIterable<Uint8Array> {
  if (source instanceof Uint8Array) {
    yield source;
    return;
  }
  yield* typeof source === 'function' ? source() : source;
}

/**
 * Lists an initramfs and answers whether it holds an NBD client. Throws IMAGE_NO_KERNEL when the
 * file is not an initramfs (empty, or neither cpio nor a compression the kernel reads), is cut
 * short, damaged, or decompresses past `maxOutputBytes`; IMAGE_NO_NBD_CLIENT when it is compressed
 * in a format the agent does not read (bzip2, lzo), so no client can be found; LAB_MISCONFIGURED
 * when the tool for its compression is not installed.
 */
export async function inspectInitramfs(
  source: InitramfsSource,
  options: InitramfsOptions = {},
): Promise<InitramfsContents> {
  const name = options.name ?? 'the initramfs';
  const maxOutput = options.maxOutputBytes ?? 1024 * 1024 * 1024;
  const maxEntries = options.maxEntries ?? 100_000;
  const entries: InitramfsEntry[] = [];
  const warnings: string[] = [];
  const parts: InitramfsPart[] = [];
  let files = 0;
  let nbdClient: string | undefined;
  const record = (entry: InitramfsEntry) => {
    files++;
    if (entries.length < maxEntries) entries.push(entry);
    const base = entry.path.slice(entry.path.lastIndexOf('/') + 1);
    if (nbdClient === undefined && base === CLIENT && (entry.type === 'file' || entry.type === 'symlink'))
      nbdClient = entry.path;
  };
  const noKernel = (why: string) => new CodedError('IMAGE_NO_KERNEL', `${name} ${why}`);

  const top = new NewcScanner(record);
  let offset = 0; // bytes of the file consumed so far
  let pending: Buffer | undefined; // the start of a compressed blob, until its magic is complete
  let blob: { part: InitramfsPart; scanner: NewcScanner; inflater: Inflater; out: number } | undefined;
  let blobError: CodedError | undefined;

  const startBlob = (head: Buffer, at: number) => {
    const magic = MAGICS.find((m) => startsWith(head, m.bytes));
    if (!magic) {
      const unread = UNREAD.find((u) => startsWith(head, u.bytes));
      if (unread)
        throw new CodedError(
          'IMAGE_NO_NBD_CLIENT',
          `${name} is ${unread.name}-compressed, which the agent does not look inside, so it cannot tell ` +
            'whether it holds an NBD client: rebuild it with COMPRESS=zstd (or gzip, xz, lz4) in ' +
            '/etc/initramfs-tools/initramfs.conf and update-initramfs -u',
        );
      throw noKernel(
        at === 0
          ? `is not an initramfs: it starts with ${hex(head)}, neither a cpio archive nor gzip, zstd, xz, lzma or lz4`
          : `has bytes at ${at} (${hex(head)}) that are neither a cpio archive nor a compressed one`,
      );
    }
    if (magic.warning) warnings.push(magic.warning);
    const part: InitramfsPart = { offset: at, compression: magic.compression, archives: 0, entries: 0 };
    parts.push(part);
    const scanner = new NewcScanner(record);
    let junk = false;
    const inflater = startInflater(
      magic.compression,
      (chunk) => {
        if (junk || blobError || !blob) return;
        blob.out += chunk.length;
        if (blob.out > maxOutput) {
          blobError = noKernel(`decompresses to more than ${maxOutput} bytes; the agent reads no more`);
          inflater.abort();
          return;
        }
        try {
          const stop = scanner.feed(chunk);
          if (stop >= 0) {
            junk = true;
            warnings.push(
              `the ${magic.compression} part at byte ${at} holds junk after its archives ` +
                `(decompressed byte ${scanner.pos}); the kernel stops unpacking there`,
            );
            inflater.abort();
          }
        } catch (err) {
          // Thrown in a stream's 'data' handler nothing would catch it: keep it for the caller.
          blobError = noKernel(`is damaged: in its ${magic.compression} part at byte ${at}, ${(err as Error).message}`);
          inflater.abort();
        }
      },
      options.tools,
    );
    blob = { part, scanner, inflater, out: 0 };
  };

  const topPart: InitramfsPart = { offset: 0, compression: 'none', archives: 0, entries: 0 };
  try {
    for await (const piece of chunksOf(source)) {
      let chunk = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      if (blob) {
        await blob.inflater.write(chunk);
        if (blobError) break;
        continue;
      }
      if (pending) {
        chunk = Buffer.concat([pending, chunk]);
        pending = undefined;
      } else {
        let stop: number;
        try {
          stop = top.feed(chunk);
        } catch (err) {
          if (err instanceof CpioDamage) throw noKernel(`is damaged: ${err.message}`);
          throw err;
        }
        if (stop < 0) {
          offset += chunk.length;
          continue;
        }
        offset += stop;
        chunk = chunk.subarray(stop);
      }
      if (chunk.length < MAGIC_LENGTH) {
        pending = chunk;
        continue;
      }
      startBlob(chunk.subarray(0, MAGIC_LENGTH), offset);
      await blob!.inflater.write(chunk);
      if (blobError) break;
    }
    if (pending) {
      startBlob(pending, offset);
      await blob!.inflater.write(pending);
    }
  } catch (err) {
    blob?.inflater.abort();
    if (blob) await blob.inflater.end().catch(() => {});
    throw err;
  }

  if (top.pos > 0 || !blob) {
    topPart.archives = top.archives;
    topPart.entries = top.entries;
    parts.unshift(topPart);
  }
  if (top.midEntry) throw noKernel(`is cut short: it ends inside a cpio entry (at byte ${top.pos})`);

  if (blob) {
    // Set from the decompressor's output handler, so read through a call after each await.
    const failure = () => blobError;
    if (failure()) blob.inflater.abort();
    const ended = await blob.inflater.end();
    const failed = failure();
    if (failed) throw failed;
    blob.part.archives = blob.scanner.archives;
    blob.part.entries = blob.scanner.entries;
    if (!ended.ok) {
      // What the kernel unpacked before the failure stays in its root file system: once a whole
      // archive came out, the listing is what the board would get (trailing junk after a stream
      // makes zstd and lz4 fail this way).
      if (blob.scanner.archives === 0)
        throw noKernel(
          `is damaged: its ${blob.part.compression} part at byte ${blob.part.offset} ` +
            `fails to decompress (${ended.why})`,
        );
      warnings.push(
        `the ${blob.part.compression} part at byte ${blob.part.offset} ends in an error after its archives: ` +
          ended.why,
      );
    } else if (blob.scanner.midEntry) {
      throw noKernel(`is damaged: its ${blob.part.compression} part ends inside a cpio entry`);
    }
  }
  if (files === 0 && top.archives === 0 && !(blob && blob.scanner.archives > 0))
    throw noKernel(top.pos > 0 ? 'is not an initramfs: it holds only zero bytes' : 'is empty');

  return { entries, files, parts, hasNbdClient: nbdClient !== undefined, nbdClient, warnings };
}

/**
 * `inspectInitramfs`, then IMAGE_NO_NBD_CLIENT unless an NBD client is in it: the check a network
 * boot makes before the reset.
 */
export async function requireNbdClient(
  source: InitramfsSource,
  options: InitramfsOptions = {},
): Promise<InitramfsContents> {
  const contents = await inspectInitramfs(source, options);
  if (!contents.hasNbdClient) {
    const name = options.name ?? 'the initramfs';
    throw new CodedError(
      'IMAGE_NO_NBD_CLIENT',
      `${name} holds no nbd-client (${contents.files} files looked at): install nbd-client in the image ` +
        '(Debian and Raspberry Pi OS: apt install nbd-client; its hook adds it to the initramfs ' +
        'at update-initramfs -u)',
    );
  }
  return contents;
}
