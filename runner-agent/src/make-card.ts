/**
 * `rpi-flash-agent make-card`: the first card for a board. Writes an OS image (raw, .gz, .xz or
 * .zst) to a card image file or an SD card, with U-Boot, stage 1 and the env file carried into its
 * boot partition exactly as the agent's `inject` layout does for every flashed image.
 *
 * Writing a device is guarded: it must be a whole block device, not mounted (nor any partition of
 * it), at least as large as the image, and the user confirms after seeing its size, model and
 * partitions (or passes --yes). The image is checked (and the injection planned) before a single
 * byte reaches the device, so a bad image never wipes a card.
 */
import { createReadStream, existsSync } from 'node:fs';
import { mkdtemp, open, readdir, readFile, realpath, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildScriptImage, parseScriptImage } from './board/uimage.js';
import { applyPatchesToFile, createPatchTransform, type Patch } from './image/disk.js';
import { formatBytes } from '../../src/protocol/units.js';
import { InjectError, planInjection, type InjectResult } from './image/inject.js';
import { findBootPartition, parseMbr } from './image/mbr.js';
import { debianUbootPath, getPiModel, PI_MODELS, type PiModel } from './image/models.js';
import { createDecompressor, type CompressedFormat } from './store/decompress.js';

export const MAKE_CARD_HELP = `rpi-flash-agent make-card — write a board's first card: an OS image with U-Boot and stage 1

Usage:
  rpi-flash-agent make-card --image FILE --model MODEL --out card.img|/dev/sdX [options]

Options:
  --image FILE      OS image: raw, .gz, .xz or .zst (Raspberry Pi OS style: MBR, FAT boot partition)
  --model MODEL     board model, picks the U-Boot build and the config.txt sections:
${Object.values(PI_MODELS)
  .map((m) => `                      ${m.name.padEnd(7)} ${m.description}, Debian u-boot-rpi build ${m.ubootBuild}`)
  .join('\n')}
  --out PATH        a file (written whole, then renamed into place) or a whole block device
  --uboot FILE      U-Boot binary; default /usr/lib/u-boot/<build>/u-boot.bin from Debian's
                    u-boot-rpi package (apt-get install u-boot-rpi)
  --boot-scr FILE   stage 1 script image; default the project's uboot/boot.scr (built from
                    uboot/boot.cmd when boot.scr is missing)
  --env KEY=VALUE   extra line for the card's rpi-flash.env, e.g. --env rpf_serverip=10.0.0.1
                    (static network values for stage 1: rpf_ipaddr, rpf_netmask, rpf_gatewayip,
                    rpf_serverip); repeatable
  --yes             write a block device without asking
  -h, --help        this help

A device is written only when it is a whole disk, nothing on it is mounted, and you confirm
after seeing its size, model and partitions. A path under /dev that is not a block device is
refused (a typo must not create a file in /dev).
`;

const MiB = 1024 * 1024;
const CHUNK = MiB;

export interface MakeCardIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Where sysfs is (tests point it at a tree of their own). */
  sysRoot: string;
  /** The mount table and swap list read to refuse a device in use. */
  mountsFile: string;
  swapsFile: string;
}

export interface MakeCardOptions {
  image: string;
  model: PiModel;
  out: string;
  uboot?: string;
  bootScr?: string;
  env?: Record<string, string>;
  yes?: boolean;
  /** Timestamp of the files written into the boot partition; default now (tests fix it). */
  now?: Date;
}

export class MakeCardError extends Error {
  override name = 'MakeCardError';
}

const DEFAULT_IO: MakeCardIo = {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  sysRoot: '/sys',
  mountsFile: '/proc/self/mounts',
  swapsFile: '/proc/swaps',
};

/** The subcommand's entry: returns the exit code (0 written, 1 failed or refused, 2 bad usage). */
export async function makeCardMain(argv: string[], ioOverrides: Partial<MakeCardIo> = {}): Promise<number> {
  const io = { ...DEFAULT_IO, ...ioOverrides };
  let options: MakeCardOptions;
  try {
    const parsed = parseMakeCardArgs(argv);
    if (parsed === 'help') {
      io.stdout.write(MAKE_CARD_HELP);
      return 0;
    }
    options = parsed;
  } catch (err) {
    io.stderr.write(`rpi-flash-agent make-card: ${(err as Error).message} (see --help)\n`);
    return 2;
  }
  try {
    const result = await makeCard(options, io);
    io.stdout.write(
      `wrote ${options.out}: ${formatBytes(result.imageSize)}, boot partition ${result.injection.bootPartition.index} (${result.injection.bootPartition.fat}) ` +
        `now starts U-Boot (${options.model.ubootBuild}) and stage 1, which boots ${result.injection.env.rpf_kernel}\n`,
    );
    return 0;
  } catch (err) {
    const code = err instanceof InjectError ? ` [${err.code}]` : '';
    io.stderr.write(`rpi-flash-agent make-card: ${(err as Error).message}${code}\n`);
    return 1;
  }
}

export function parseMakeCardArgs(argv: string[]): MakeCardOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      image: { type: 'string' },
      model: { type: 'string' },
      out: { type: 'string' },
      uboot: { type: 'string' },
      'boot-scr': { type: 'string' },
      env: { type: 'string', multiple: true },
      yes: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const missing = (['image', 'model', 'out'] as const).filter((k) => !values[k]);
  if (missing.length) throw new Error(`missing ${missing.map((m) => `--${m}`).join(', ')}`);
  const env: Record<string, string> = {};
  for (const kv of values.env ?? []) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(kv);
    if (!m) throw new Error(`--env "${kv}": expected KEY=VALUE with a U-Boot variable name`);
    env[m[1]!] = m[2]!;
  }
  return {
    image: values.image!,
    model: getPiModel(values.model!),
    out: values.out!,
    ...(values.uboot ? { uboot: values.uboot } : {}),
    ...(values['boot-scr'] ? { bootScr: values['boot-scr'] } : {}),
    env,
    yes: Boolean(values.yes),
  };
}

export interface MakeCardResult {
  imageSize: number;
  injection: InjectResult;
  device?: BlockDeviceInfo;
}

export async function makeCard(o: MakeCardOptions, io: MakeCardIo = DEFAULT_IO): Promise<MakeCardResult> {
  const ubootPath = o.uboot ?? debianUbootPath(o.model);
  const ubootBin = await readFile(ubootPath).catch((err: NodeJS.ErrnoException) => {
    throw new MakeCardError(
      o.uboot
        ? `cannot read U-Boot ${ubootPath}: ${err.message}`
        : `no U-Boot for model ${o.model.name} at ${ubootPath}: install Debian's u-boot-rpi package or pass --uboot FILE (${err.code ?? err.message})`,
    );
  });
  const bootScr = await loadStage1(o.bootScr);
  const format = await detectCompression(o.image);
  const inject = {
    ubootBin,
    bootScr,
    model: o.model,
    ...(o.env ? { extraEnv: o.env } : {}),
    ...(o.now ? { now: o.now } : {}),
  };
  const target = await classifyOutput(o.out);

  if (target === 'file') {
    // One pass: the image lands in a temporary file beside the output, is patched in place, renamed.
    const partial = `${o.out}.partial`;
    try {
      const imageSize = await writeImage(o.image, format, partial, { sparse: true, patches: [] });
      const injection = await planInjection(partial, imageSize, inject);
      await applyPatchesToFile(partial, injection.patches);
      await rename(partial, o.out);
      return { imageSize, injection };
    } finally {
      await rm(partial, { force: true });
    }
  }

  // A device: plan first (nothing written yet), show it, check it, ask, then write in one pass.
  const { imageSize, injection } = await planFromSource(o.image, format, inject);
  const device = await describeBlockDevice(o.out, io);
  io.stdout.write(formatDeviceInfo(device));
  checkDeviceWritable(device, imageSize);
  if (!o.yes) {
    const question = `Write ${path.basename(o.image)} (${formatBytes(imageSize)}, U-Boot ${o.model.ubootBuild}) to ${device.path}? Everything on it is lost. [y/N] `;
    if (!(await confirm(question, io))) throw new MakeCardError(`not confirmed: nothing was written to ${device.path}`);
  }
  await writeImage(o.image, format, device.path, { sparse: false, patches: injection.patches });
  return { imageSize, injection, device };
}

/** Stage 1 from --boot-scr, else the project's uboot/boot.scr, else built from uboot/boot.cmd. */
async function loadStage1(given: string | undefined): Promise<Buffer> {
  let image: Buffer;
  let from: string;
  if (given) {
    image = await readFile(given);
    from = given;
  } else {
    const here = path.dirname(fileURLToPath(import.meta.url));
    // runner-agent/src (tsx) or build/runner-agent/src (compiled): the repository's uboot/ is above.
    const dirs = [path.resolve(here, '../../uboot'), path.resolve(here, '../../../uboot')];
    const scr = dirs.map((d) => path.join(d, 'boot.scr')).find((f) => existsSync(f));
    const cmd = dirs.map((d) => path.join(d, 'boot.cmd')).find((f) => existsSync(f));
    if (scr) {
      image = await readFile(scr);
      from = scr;
    } else if (cmd) {
      image = buildScriptImage(await readFile(cmd, 'utf8'), { name: 'rpi-flash stage 1', timestamp: 0 });
      from = cmd;
    } else
      throw new MakeCardError(
        `no stage 1 found (looked for boot.scr and boot.cmd in ${dirs.join(', ')}); pass --boot-scr FILE`,
      );
  }
  try {
    parseScriptImage(image);
  } catch (err) {
    throw new MakeCardError(`stage 1 ${from} is not a valid U-Boot script image: ${(err as Error).message}`);
  }
  return image;
}

/** By content, not name: a renamed file still decompresses. */
export async function detectCompression(file: string): Promise<CompressedFormat | 'none'> {
  const fh = await open(file, 'r').catch((err: Error) => {
    throw new MakeCardError(`cannot read image ${file}: ${err.message}`);
  });
  try {
    const head = Buffer.alloc(6);
    await fh.read(head, 0, 6, 0);
    if (head[0] === 0x1f && head[1] === 0x8b) return 'gz';
    if (head.equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
    if (head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zst';
    return 'none';
  } finally {
    await fh.close();
  }
}

async function classifyOutput(out: string): Promise<'file' | 'device'> {
  const st = await stat(out).catch(() => undefined);
  if (st?.isBlockDevice()) return 'device';
  const resolved = path.resolve(out);
  if (resolved === '/dev' || resolved.startsWith('/dev/')) {
    throw new MakeCardError(
      `${out} is not a block device${st ? '' : ' (it does not exist)'}: refusing to write a file under /dev`,
    );
  }
  if (st && !st.isFile()) throw new MakeCardError(`${out} exists and is neither a regular file nor a block device`);
  return 'file';
}

/** The image's bytes, decompressed when needed, into `sinks`; resolves to the image size. */
async function streamImage(
  image: string,
  format: CompressedFormat | 'none',
  sinks: [...NodeJS.ReadWriteStream[], NodeJS.WritableStream],
): Promise<void> {
  if (format === 'none') {
    await pipeline(createReadStream(image, { highWaterMark: CHUNK }), ...(sinks as [NodeJS.WritableStream]));
    return;
  }
  const dec = createDecompressor(format, sinks);
  try {
    for await (const chunk of createReadStream(image, { highWaterMark: CHUNK }) as Readable)
      await dec.write(chunk as Buffer);
    await dec.end();
  } catch (err) {
    await dec.abort();
    throw err;
  }
}

/** Writes the image (patched on the way) to a file or device; a sparse file skips zero blocks. */
async function writeImage(
  image: string,
  format: CompressedFormat | 'none',
  out: string,
  o: { sparse: boolean; patches: Patch[] },
): Promise<number> {
  const fh = await open(out, o.sparse ? 'w' : 'r+');
  const writer = new PositionedWriter(fh, o.sparse);
  try {
    await streamImage(image, format, [createPatchTransform(o.patches), writer]);
    if (o.sparse) await fh.truncate(writer.position);
    await fh.sync();
    return writer.position;
  } finally {
    await fh.close();
  }
}

class PositionedWriter extends Writable {
  position = 0;
  private static readonly zeros = Buffer.alloc(CHUNK);
  constructor(
    private readonly fh: FileHandle,
    private readonly sparse: boolean,
  ) {
    super({ highWaterMark: 4 * CHUNK });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    const at = this.position;
    this.position += chunk.length;
    if (this.sparse && chunk.length <= CHUNK && chunk.equals(PositionedWriter.zeros.subarray(0, chunk.length))) {
      done();
      return;
    }
    writeAll(this.fh, chunk, at).then(() => done(), done);
  }
}

async function writeAll(fh: FileHandle, buf: Buffer, at: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, at + done);
    if (bytesWritten === 0)
      throw new MakeCardError(`the output accepted no bytes at offset ${at + done}: is the card full or read-only?`);
    done += bytesWritten;
  }
}

/**
 * Plans the injection from the source image before anything is written. A compressed image is
 * decompressed once to learn its size, keeping only its head (up to the end of the boot
 * partition) in a temporary file — all that planning reads.
 */
async function planFromSource(
  image: string,
  format: CompressedFormat | 'none',
  inject: Parameters<typeof planInjection>[2],
): Promise<{ imageSize: number; injection: InjectResult }> {
  if (format === 'none') {
    const imageSize = (await stat(image)).size;
    return { imageSize, injection: await planInjection(image, imageSize, inject) };
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'rpi-flash-card-'));
  const head = path.join(dir, 'head.img');
  const fh = await open(head, 'w');
  try {
    let size = 0;
    /** Bytes to keep: known once sector 0 has arrived (the end of the boot partition). */
    let keep: number | undefined;
    let sector0 = Buffer.alloc(0);
    const take = async (chunk: Buffer, at: number) => {
      if (keep === undefined) {
        sector0 = Buffer.concat([sector0, chunk.subarray(0, 512 - sector0.length)]);
        if (sector0.length === 512) {
          try {
            const boot = findBootPartition(parseMbr(sector0, Number.MAX_SAFE_INTEGER));
            keep = boot.offset + boot.size;
          } catch {
            keep = 512; // planning reports what is wrong with the table
          }
        }
      }
      const limit = keep ?? 512;
      if (at < limit) await writeAll(fh, chunk.subarray(0, Math.min(chunk.length, limit - at)), at);
    };
    const sink = new Writable({
      highWaterMark: 4 * CHUNK,
      write(chunk: Buffer, _enc, done) {
        const at = size;
        size += chunk.length;
        take(chunk, at).then(() => done(), done);
      },
    });
    await streamImage(image, format, [sink]);
    await fh.sync();
    return { imageSize: size, injection: await planInjection(head, size, inject) };
  } finally {
    await fh.close();
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- block devices -----------------------------------------------------------------------------

export interface BlockDeviceInfo {
  path: string;
  /** Kernel name, e.g. sdb, mmcblk0. */
  name: string;
  size: number;
  model?: string;
  vendor?: string;
  removable?: boolean;
  partitions: { name: string; size: number; mountpoint?: string }[];
  /** Mount points (and swap) of the device or its partitions: any one refuses the write. */
  inUse: string[];
  /** The path names a partition, not a whole disk. */
  isPartition: boolean;
}

async function readSys(file: string): Promise<string | undefined> {
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

export async function describeBlockDevice(
  devPath: string,
  io: Pick<MakeCardIo, 'sysRoot' | 'mountsFile' | 'swapsFile'>,
): Promise<BlockDeviceInfo> {
  const real = await realpath(devPath);
  const name = path.basename(real);
  const classDir = path.join(io.sysRoot, 'class', 'block', name);
  const sizeText = await readSys(path.join(classDir, 'size'));
  if (sizeText === undefined)
    throw new MakeCardError(
      `${devPath} (${name}) is not in ${io.sysRoot}/class/block: cannot tell what it is, refusing to write it`,
    );
  const isPartition = (await readSys(path.join(classDir, 'partition'))) !== undefined;
  const blockDir = path.join(io.sysRoot, 'block', name);
  const model =
    (await readSys(path.join(blockDir, 'device', 'model'))) ?? (await readSys(path.join(blockDir, 'device', 'name')));
  const vendor = await readSys(path.join(blockDir, 'device', 'vendor'));
  const removable = await readSys(path.join(blockDir, 'removable'));
  const partNames = (await readdir(blockDir).catch(() => [] as string[])).filter(
    (n) => n.startsWith(name) && n !== name,
  );
  const partitions: BlockDeviceInfo['partitions'] = [];
  for (const p of partNames.sort()) {
    if ((await readSys(path.join(blockDir, p, 'partition'))) === undefined) continue;
    partitions.push({ name: p, size: Number(await readSys(path.join(blockDir, p, 'size'))) * 512 });
  }
  const inUse: string[] = [];
  const mine = new Set([name, ...partitions.map((p) => p.name)]);
  const owner = async (source: string): Promise<string | undefined> => {
    if (!source.startsWith('/dev/')) return undefined;
    const base = path.basename(await realpath(source).catch(() => source));
    return mine.has(base) ? base : undefined;
  };
  for (const line of ((await readSys(io.mountsFile)) ?? '').split('\n')) {
    const [source, mountpoint] = line.split(' ');
    if (!source || !mountpoint) continue;
    const dev = await owner(source);
    if (!dev) continue;
    const where = mountpoint.replace(/\\040/g, ' ');
    inUse.push(`${source} mounted on ${where}`);
    const part = partitions.find((p) => p.name === dev);
    if (part) part.mountpoint = where;
  }
  for (const line of ((await readSys(io.swapsFile)) ?? '').split('\n').slice(1)) {
    const source = line.split(/\s+/)[0];
    if (source && (await owner(source))) inUse.push(`${source} is in use as swap`);
  }
  return {
    path: devPath,
    name,
    size: Number(sizeText) * 512,
    ...(model ? { model } : {}),
    ...(vendor ? { vendor } : {}),
    ...(removable !== undefined ? { removable: removable === '1' } : {}),
    partitions,
    inUse,
    isPartition,
  };
}

export function formatDeviceInfo(d: BlockDeviceInfo): string {
  const lines = [
    `Device ${d.path} (${d.name}): ${formatBytes(d.size)}` +
      `${d.vendor || d.model ? `, ${[d.vendor, d.model].filter(Boolean).join(' ')}` : ''}` +
      `${d.removable === undefined ? '' : d.removable ? ', removable' : ', NOT removable'}`,
  ];
  if (!d.partitions.length) lines.push('  no partitions');
  for (const p of d.partitions)
    lines.push(`  ${p.name}: ${formatBytes(p.size)}${p.mountpoint ? `, mounted on ${p.mountpoint}` : ''}`);
  return lines.join('\n') + '\n';
}

/** Refuses a partition, a device in use, or one smaller than the image. */
export function checkDeviceWritable(d: BlockDeviceInfo, imageSize: number): void {
  if (d.isPartition)
    throw new MakeCardError(`${d.path} is a partition (${d.name}); give the whole card, e.g. /dev/sdX or /dev/mmcblkN`);
  if (d.inUse.length)
    throw new MakeCardError(`${d.path} is in use: ${d.inUse.join('; ')}. Unmount it first; nothing was written`);
  if (d.size < imageSize)
    throw new MakeCardError(
      `${d.path} holds ${formatBytes(d.size)}, the image needs ${formatBytes(imageSize)}; nothing was written`,
    );
}

/** Asks on the terminal; without one (a script, CI) the answer is no: use --yes. */
async function confirm(question: string, io: Pick<MakeCardIo, 'stdin' | 'stdout'>): Promise<boolean> {
  if (!io.stdin.isTTY) {
    io.stdout.write(`${question}\n`);
    throw new MakeCardError(
      'not confirmed: standard input is not a terminal, so nobody can answer; pass --yes to write without asking. Nothing was written',
    );
  }
  const rl = createInterface({ input: io.stdin, output: io.stdout, terminal: false });
  try {
    io.stdout.write(question);
    const answer = await new Promise<string>((resolve) => {
      rl.once('line', resolve);
      rl.once('close', () => resolve(''));
    });
    return /^(y|yes)$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}
