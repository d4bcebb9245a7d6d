/**
 * The guards in front of a block device: `make-card` writes one only when it is a whole disk (not a
 * partition), nothing on it is mounted or used as swap, it holds the image, and the user confirms
 * after seeing its size, model and partitions (or passed --yes). A path under /dev that is not a
 * block device is refused, so a typo never creates a file there.
 */
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { formatBytes } from '../../../src/protocol/units.js';
import { MakeCardError } from './error.js';

/** Where the system describes its devices; tests point these at files of their own. */
export interface SystemFiles {
  /** Where sysfs is. */
  sysRoot: string;
  /** The mount table and swap list read to refuse a device in use. */
  mountsFile: string;
  swapsFile: string;
}

export interface Terminal {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  stdout: NodeJS.WritableStream;
}

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

/** A block device, or a path for a file; throws for a path under /dev that is no block device. */
export async function classifyOutput(out: string): Promise<'file' | 'device'> {
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

/**
 * Shows the device, refuses it when it is a partition, in use or too small for `imageSize`, and
 * asks (unless `yes`) whether to write `what` to it. Resolves to the device once it may be written.
 */
export async function guardDevice(
  devPath: string,
  o: { imageSize: number; what: string; yes: boolean },
  io: SystemFiles & Terminal,
): Promise<BlockDeviceInfo> {
  const device = await describeBlockDevice(devPath, io);
  io.stdout.write(formatDeviceInfo(device));
  checkDeviceWritable(device, o.imageSize);
  if (!o.yes) {
    const question = `Write ${o.what} to ${device.path}? Everything on it is lost. [y/N] `;
    if (!(await confirm(question, io))) throw new MakeCardError(`not confirmed: nothing was written to ${device.path}`);
  }
  return device;
}

async function readSys(file: string): Promise<string | undefined> {
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

export async function describeBlockDevice(devPath: string, io: SystemFiles): Promise<BlockDeviceInfo> {
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
async function confirm(question: string, io: Terminal): Promise<boolean> {
  if (!io.stdin.isTTY) {
    io.stdout.write(`${question}\n`);
    throw new MakeCardError(
      'not confirmed: standard input is not a terminal, so nobody can answer; ' +
        'pass --yes to write without asking. Nothing was written',
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
