/**
 * Stage 2 as the agent generates it, run by one of Debian's real Pi U-Boot builds on its QEMU Pi
 * machine (pi-board.ts). The machines have no NIC these builds drive, so the script is the
 * generator's `preloaded` variant (the TFTP variant with one other line: parts copied from where
 * QEMU's loader put the image) and the beacons are read off the console, where the script echoes
 * each message it reports; the agent's own parser reads them.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseBeacon, type Beacon } from '../../runner-agent/src/board/beacons.js';
import { BEACON_ECHO, generateStage2Script, type Stage2Part } from '../../runner-agent/src/board/stage2-script.js';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';
import { DEFAULTS } from '../../runner-agent/src/config.js';
import { JOB, MAC, SECRET, stageParts } from '../board/flash-harness.js';
import { withConsoleOnFailure } from './qemu-board.js';
import { PI_MACHINES, startPiBoard, stopAutoboot, typeCommand, type PiBuild } from './pi-board.js';

/** Where the loader puts flash.scr, and the image after it (above the pre-relocation stack). */
export const SCRIPT_ADDR = 0x1400_0000;
export const IMAGE_ADDR = 0x1410_0000;
/** What the card holds before the job: not zero, so an untouched sector is told from a zeroed one. */
export const CARD_FILL = 0x5a;

export interface PiStage2Options {
  folder: string;
  build: PiBuild;
  workDir: string;
  image: Buffer;
  partSize: number;
  /** Bytes; a power of two. */
  cardSize: number;
  /** Stage 2's load buffer; default the agent's `flash.loadAddr`. */
  loadAddr?: number;
  /** This part's bytes differ in RAM from what the script's CRC says (every attempt sees it). */
  corruptPart?: number;
  /**
   * Compressed parts (issue 13 item 2): each part's gzip stream is preloaded where its raw bytes
   * would lie, and the script unzips it at the agent's default `flash.zipAddr`.
   */
  gzip?: boolean;
  /** This part's gzip stream is broken (its first deflate block has the reserved type 3). */
  corruptZip?: number;
  /** A raw job that asks the board whether it can unzip (beacon caps-unzip). */
  probeUnzip?: boolean;
  /** Read-compare (issue 13 item 4): stage 2 reads each part from the card first. */
  readCompare?: boolean;
  /** What the card holds from its start before the job (else CARD_FILL throughout). */
  cardHolds?: Buffer;
  timeoutMs: number;
}

export interface PiStage2Result {
  parts: Stage2Part[];
  /** The bytes each part is served as (padded to whole sectors), by part number. */
  served: Buffer[];
  /** The messages the board reported, in order, and what the agent's parser makes of them. */
  reports: string[];
  beacons: Array<Beacon | null>;
  /** `rpf_fix` after the script's calibration line: `true` where crc32 stores natively. */
  crcFix: string;
  /** What `bdinfo` says before the script runs. */
  memory: PiMemory;
  /** The build's top-level commands, from `help`. */
  commands: Set<string>;
  /** `$?` after `help unzip` (a compressed run only): 1 even where unzip exists (cmd_usage returns 1). */
  helpUnzipStatus?: string;
  card: Buffer;
  /** From QEMU's start to its exit after the script's `reset`. */
  ms: number;
  console: string;
}

/** RAM as U-Boot's `bdinfo` reports it: the bank, and where U-Boot's reserved top of RAM begins. */
export interface PiMemory {
  ramSize: number;
  /** The lowest address U-Boot reserves for itself (lmb: relocated code, malloc, stack, EFI). */
  reservedFrom: number;
}

export function parseBdinfo(text: string): PiMemory {
  const size = /^-> size\s*=\s*(0x[0-9a-f]+)/m.exec(text);
  // lmb's reserved regions; [0x0-0xfff] is the page at 0 that U-Boot keeps out of every load.
  const reserved = [...text.matchAll(/reserved\[\d+\]\s*\[(0x[0-9a-f]+)-/g)]
    .map((m) => Number(m[1]))
    .filter((a) => a >= 0x1000);
  if (!size || reserved.length === 0) throw new Error(`bdinfo printed no RAM size or reserved region:\n${text}`);
  return { ramSize: Number(size[1]), reservedFrom: Math.min(...reserved) };
}

/** The command names `help` lists, one a line: `name      - what it does`. */
export function parseHelp(text: string): Set<string> {
  const names = [...text.matchAll(/^([a-z0-9_.?-]+)\s+- /gm)].map((m) => m[1]!);
  if (names.length < 20) throw new Error(`help listed ${names.length} commands:\n${text}`);
  return new Set(names);
}

/** The calibration line of a generated script (the one that sets rpf_fix). */
export function calibrationLine(script: string): string {
  const line = script.split('\n').find((l) => l.startsWith('mw.l ') && l.includes('rpf_fix'));
  if (!line) throw new Error('the generated script has no calibration line');
  return line;
}

export async function runStage2OnPi(o: PiStage2Options): Promise<PiStage2Result> {
  const { parts, served } = stageParts(o.image, o.partSize, { gzip: o.gzip ?? false });
  const flash = DEFAULTS.flash;
  const script = generateStage2Script({
    jobId: JOB,
    mac: MAC,
    reportSecret: SECRET,
    parts,
    retries: flash.retries,
    loadAddr: o.loadAddr ?? flash.loadAddr,
    crcAddr: flash.crcAddr,
    beaconAddr: flash.beaconAddr,
    mmcDev: flash.mmcDev,
    transfer: { kind: 'preloaded', imageAddr: IMAGE_ADDR },
    ...(o.gzip ? { unzip: { zipAddr: flash.zipAddr } } : {}),
    ...(o.probeUnzip ? { probeUnzip: true } : {}),
    ...(o.readCompare ? { readCompare: true } : {}),
  });
  const servedParts = parts.map((p) => served.get(p.file)!);
  const inRam = Buffer.concat(servedParts);
  if (o.gzip) {
    inRam.fill(0);
    for (const p of parts) served.get(p.zip!.file)!.copy(inRam, p.imageOffset);
    if (o.corruptZip !== undefined) inRam[parts[o.corruptZip - 1]!.imageOffset + 10]! |= 0x06;
  }
  if (o.corruptPart !== undefined) {
    const p = parts[o.corruptPart - 1]!;
    inRam[p.imageOffset + Math.floor(p.servedSize / 2)]! ^= 0xff;
  }
  const scriptFile = join(o.workDir, 'flash.scr');
  const imageFile = join(o.workDir, 'image-in-ram.bin');
  const sdImage = join(o.workDir, 'sd.img');
  await writeFile(scriptFile, buildScriptImage(script, { name: `rpi-flash ${JOB}` }));
  await writeFile(imageFile, inRam);
  const card = Buffer.alloc(o.cardSize, CARD_FILL);
  o.cardHolds?.copy(card, 0);
  await writeFile(sdImage, card);

  const started = performance.now();
  const board = await startPiBoard({
    folder: o.folder,
    build: o.build,
    sdImage,
    preload: [
      { file: scriptFile, addr: SCRIPT_ADDR },
      { file: imageFile, addr: IMAGE_ADDR },
    ],
    workDir: o.workDir,
    timeoutMs: o.timeoutMs,
  });
  try {
    return await withConsoleOnFailure(board, async () => {
      await stopAutoboot(board, o.timeoutMs);
      const memory = parseBdinfo(await typeCommand(board, 'bdinfo', o.timeoutMs));
      const commands = parseHelp(await typeCommand(board, 'help', o.timeoutMs));
      const helpUnzip = o.gzip ? await typeCommand(board, 'help unzip; echo help-status=$?', o.timeoutMs) : '';
      const helpUnzipStatus = /^help-status=(\d+)/m.exec(helpUnzip)?.[1];
      const fix = await typeCommand(board, `${calibrationLine(script)}; printenv rpf_fix`, o.timeoutMs);
      const crcFix = /^rpf_fix=(.*)$/m.exec(fix)?.[1] ?? `(not set: ${fix})`;
      board.type(`source 0x${SCRIPT_ADDR.toString(16)}\n`);
      const code = await board.waitForExit(o.timeoutMs);
      if (code !== 0) throw new Error(`QEMU ended with ${code} instead of exiting at the script's reset`);
      const ms = performance.now() - started;
      const text = board.console().replace(/\r/g, '');
      const reports = [...text.matchAll(new RegExp(`^${BEACON_ECHO}(\\S+)$`, 'gm'))].map((m) => m[1]!);
      return {
        parts,
        served: servedParts,
        reports,
        beacons: reports.map(parseBeacon),
        crcFix,
        memory,
        commands,
        ...(helpUnzipStatus !== undefined ? { helpUnzipStatus } : {}),
        card: await readFile(sdImage),
        ms,
        console: text,
      };
    });
  } finally {
    await board.kill();
  }
}

/** The machine a build runs on, for test names. */
export function machineOf(build: PiBuild): string {
  const m = PI_MACHINES[build];
  return `${m.machine}, ${m.ramMiB} MiB`;
}
