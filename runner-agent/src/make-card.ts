/**
 * `rpi-flash-agent make-card`: the first card for a board. Writes an OS image (raw, .gz, .xz or
 * .zst) to a card image file or an SD card, with U-Boot, stage 1 and the env file carried into its
 * boot partition exactly as the agent's `inject` layout does for every flashed image.
 *
 * This entry ties the parts together: make-card/args.ts (the command line), make-card/write-card.ts
 * (the image: its format, the plan, the writing) and make-card/block-device.ts (the guards in front
 * of a device). The image is checked (and the injection planned) before a single byte reaches a
 * device, so a bad image never wipes a card.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatBytes } from '../../src/protocol/units.js';
import { buildScriptImage, parseScriptImage } from './board/uimage.js';
import { InjectError, type InjectResult } from './image/inject.js';
import { debianUbootPath } from './image/models.js';
import { MAKE_CARD_HELP, parseMakeCardArgs, type MakeCardOptions } from './make-card/args.js';
import {
  classifyOutput,
  guardDevice,
  type BlockDeviceInfo,
  type SystemFiles,
  type Terminal,
} from './make-card/block-device.js';
import { MakeCardError } from './make-card/error.js';
import { imageCompression, planFromSource, writeCardFile, writeImage } from './make-card/write-card.js';

export interface MakeCardIo extends SystemFiles, Terminal {
  stderr: NodeJS.WritableStream;
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
    const { imageSize, injection } = await makeCard(options, io);
    io.stdout.write(
      `wrote ${options.out}: ${formatBytes(imageSize)}, boot partition ${injection.bootPartition.index} ` +
        `(${injection.bootPartition.fat}) now starts U-Boot (${options.model.ubootBuild}) and stage 1, ` +
        `which boots ${injection.env.rpf_kernel}\n`,
    );
    return 0;
  } catch (err) {
    const code = err instanceof InjectError ? ` [${err.code}]` : '';
    io.stderr.write(`rpi-flash-agent make-card: ${(err as Error).message}${code}\n`);
    return 1;
  }
}

export interface MakeCardResult {
  imageSize: number;
  injection: InjectResult;
  device?: BlockDeviceInfo;
}

export async function makeCard(o: MakeCardOptions, io: MakeCardIo = DEFAULT_IO): Promise<MakeCardResult> {
  const inject = {
    ubootBin: await loadUboot(o),
    bootScr: await loadStage1(o.bootScr),
    model: o.model,
    ...(o.env ? { extraEnv: o.env } : {}),
    ...(o.now ? { now: o.now } : {}),
  };
  const format = await imageCompression(o.image);
  if ((await classifyOutput(o.out)) === 'file') return writeCardFile(o.image, format, o.out, inject);

  // A device: plan first (nothing written yet), show it, check it, ask, then write in one pass.
  const { imageSize, injection } = await planFromSource(o.image, format, inject);
  const what = `${path.basename(o.image)} (${formatBytes(imageSize)}, U-Boot ${o.model.ubootBuild})`;
  const device = await guardDevice(o.out, { imageSize, what, yes: Boolean(o.yes) }, io);
  await writeImage(o.image, format, device.path, { sparse: false, patches: injection.patches });
  return { imageSize, injection, device };
}

/** U-Boot from --uboot, else where Debian's u-boot-rpi package puts the model's build. */
async function loadUboot(o: MakeCardOptions): Promise<Buffer> {
  const ubootPath = o.uboot ?? debianUbootPath(o.model);
  return readFile(ubootPath).catch((err: NodeJS.ErrnoException) => {
    throw new MakeCardError(
      o.uboot
        ? `cannot read U-Boot ${ubootPath}: ${err.message}`
        : `no U-Boot for model ${o.model.name} at ${ubootPath}: install Debian's u-boot-rpi package ` +
            `or pass --uboot FILE (${err.code ?? err.message})`,
    );
  });
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
