/**
 * The per-job stage-2 script (`flash.scr`, DESIGN §3.5): the board downloads every part over
 * TFTP, checks its CRC32, writes it with `mmc write`, reads it back, checks again, reports each
 * step with a beacon (beacons.ts), reports the result and resets. Before writing anything it
 * probes the card's size by reading the image's last block, and reports `too-large` if that fails
 * (U-Boot's `mmc read` past the end fails without touching the card — checked under QEMU).
 *
 * Written for the hush shell of U-Boot 2023.01 as Debian builds it for the Pi (facts checked in
 * the 2023.01 sources, common/cli_hush.c, cmd/*.c):
 * - No loops: retries are `run` chains joined with `||`. Hush's `||`/`&&` skip "the rest of the
 *   chain" rather than one command, so `a && b || c` does NOT run c when a fails: never mix them.
 * - `run X` returns the status of the last command X ran; an `if` whose condition fails and has
 *   no `else` returns failure. Procedures therefore end in the command whose status matters.
 * - Procedures are stored single-quoted so `${…}` is expanded when they run, not when defined.
 *   A command holding `$` is re-parsed after expansion (make_string), so values must not contain
 *   quotes; ours are hex numbers and path-safe names. `|` and `&` are shell syntax even as
 *   setexpr operators: only `+ * / %` are used.
 * - Command arguments are hex (`hextoul`, `0x` accepted); `tftpblocksize`/`tftpwindowsize` are
 *   read as decimal; `mmc dev` takes a decimal device number.
 * - `setexpr.l v *addr` prints the 32-bit word at addr, native (little-endian) order, as `%lx`.
 * - `crc32 addr len dest` stores its result in two ways depending on the build: with the
 *   multi-hash code (any of SHA256/384/512, CMD_SHA1SUM, CMD_HASH, CRC32_VERIFY enabled) it
 *   writes 4 bytes big-endian; without it — every Debian Pi build, and the QEMU test build, which
 *   is configured like them — it stores a native `ulong` (little-endian; 8 bytes on arm64), so
 *   `setexpr.l` reads the real value. The script calibrates once — the CRC of 4 known bytes — and
 *   byte-swaps only on a multi-hash build, so every CRC it compares and reports is the real one.
 * - U-Boot's TFTP file names are at most 127 characters and must not contain ':'.
 * - `help <cmd>` returns 1 for a known command too (cmd_usage() returns 1), so it cannot tell
 *   whether a command exists; an unknown command returns 1 like a failing one. Whether `unzip`
 *   exists is therefore asked by running it on a known gzip stream (`rpf_zprobe`).
 * - `unzip src dst [dstsize]` inflates a gzip stream, sets `filesize` to the inflated size and
 *   returns 0; corrupt data ("Error: inflate() returned -3") or more output than `dstsize` returns
 *   1. It reads no length of its input (it stops at the stream's end) and ignores the gzip trailer
 *   (the script checks its own CRC of the inflated part). 64-bit Pi builds only (uboot/README.md).
 * Generated scripts run in CI on the QEMU test U-Boot (over TFTP, test/qemu/agent-flash.test.ts)
 * and on Debian's six Pi builds on QEMU's Pi machines (the preloaded transfer,
 * test/qemu/pi-builds.test.ts): byte-exact cards, beacons as the shell model predicts.
 */
import { crc32, gzipSync } from 'node:zlib';
import { JOB_ID_PATTERN, macDir, reportPrefix } from '../../../src/protocol/tftp-names.js';
import { beaconText } from './beacons.js';
import { FIRMWARE_DTB_WINDOW, RAM_MARGIN, UBOOT_RESERVE } from './ram.js';

export const SECTOR = 512;

export interface PartPlan {
  index: number /* 1-based */;
  imageOffset: number;
  size: number /* raw bytes of the image */;
  servedSize: number /* size padded with zeros to a multiple of 512 */;
  startBlock: number;
  blockCount: number;
}

/** Splits an image into parts of `partSize` bytes (the last one shorter), each written at its own offset. */
export function planParts(imageSize: number, partSize: number): PartPlan[] {
  if (!Number.isSafeInteger(imageSize) || imageSize <= 0)
    throw new RangeError(`image size must be a positive number of bytes, got ${imageSize}`);
  if (!Number.isSafeInteger(partSize) || partSize <= 0 || partSize % SECTOR !== 0)
    throw new RangeError(`part size must be a positive multiple of ${SECTOR} bytes, got ${partSize}`);
  const parts: PartPlan[] = [];
  for (let offset = 0, index = 1; offset < imageSize; offset += partSize, index++) {
    const size = Math.min(partSize, imageSize - offset);
    const servedSize = Math.ceil(size / SECTOR) * SECTOR;
    parts.push({
      index,
      imageOffset: offset,
      size,
      servedSize,
      startBlock: offset / SECTOR,
      blockCount: servedSize / SECTOR,
    });
  }
  return parts;
}

/** A byte range of the image that the board writes (store/mapped-ranges.ts derives them). */
export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * The sorted union of byte ranges, each widened to whole 512-byte sectors (the board writes whole
 * blocks); ranges that touch or overlap become one.
 */
export function unionRanges(ranges: readonly ByteRange[]): ByteRange[] {
  const widened = ranges
    .filter((r) => r.length > 0)
    .map((r) => {
      const start = Math.floor(r.offset / SECTOR) * SECTOR;
      return { offset: start, end: Math.ceil((r.offset + r.length) / SECTOR) * SECTOR };
    })
    .sort((a, b) => a.offset - b.offset);
  const out: Array<{ offset: number; end: number }> = [];
  for (const r of widened) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ ...r });
  }
  return out.map((r) => ({ offset: r.offset, length: r.end - r.offset }));
}

/**
 * Parts for the mapped ranges only (bmaptool's semantics: the card keeps what lies outside them):
 * each range is cut into parts of at most `partSize` bytes, each written at its own offset. A
 * range past the image's end is cut there (the last part is padded to a sector, as in planParts).
 */
export function planMappedParts(ranges: readonly ByteRange[], imageSize: number, partSize: number): PartPlan[] {
  planParts(imageSize, partSize); // the same checks of both sizes
  const parts: PartPlan[] = [];
  for (const range of unionRanges(ranges)) {
    const end = Math.min(range.offset + range.length, imageSize);
    for (let offset = range.offset; offset < end; offset += partSize) {
      const size = Math.min(partSize, end - offset);
      const servedSize = Math.ceil(size / SECTOR) * SECTOR;
      parts.push({
        index: parts.length + 1,
        imageOffset: offset,
        size,
        servedSize,
        startBlock: offset / SECTOR,
        blockCount: servedSize / SECTOR,
      });
    }
  }
  if (!parts.length) throw new RangeError('the image has no mapped bytes: nothing to write');
  return parts;
}

export interface Stage2Part extends PartPlan {
  file: string /* TFTP path, partFile() from src/protocol/tftp-names.ts */;
  crc32: number /* CRC32 of the servedSize bytes (padded) */;
  /** With the compressed transfer: the TFTP path of the part's gzip stream and its size in bytes. */
  zip?: { file: string; size: number };
}

/** How stage 2 runs on a board: the agent's `flash` settings (config.ts) are these and a few more. */
export interface Stage2Settings {
  /** Extra download attempts per part on CRC mismatch or TFTP failure (the agent's default is 2). */
  retries: number;
  /** Where each part is downloaded and read back; needs the largest part's servedSize of free RAM. */
  loadAddr: number;
  /** 8 bytes for `crc32`'s result (a 64-bit store on arm64 Pi builds). */
  crcAddr: number;
  /** Where beacon answers and the size probe's block land; BEACON_RESERVE bytes. */
  beaconAddr: number;
  mmcDev: number;
  /** Sent to U-Boot as `tftpblocksize` / `tftpwindowsize` when set. */
  tftpBlockSize?: number;
  tftpWindowSize?: number;
}

/**
 * How the board gets each part: over TFTP (every real board), or copied from RAM where a test put
 * the whole image beforehand (QEMU's Pi machines have no NIC these U-Boot builds drive: the tests
 * of the real Pi builds preload the image with QEMU's `-device loader` at `imageAddr`). The two
 * scripts differ in the one line that defines `rpf_get`, so the preloaded runs test everything else.
 */
export type Stage2Transfer = { kind: 'tftp' } | { kind: 'preloaded'; imageAddr: number };

export interface Stage2Options extends Stage2Settings {
  /** Default: TFTP. */
  transfer?: Stage2Transfer;
  /**
   * Compressed parts: each part's gzip stream (`Stage2Part.zip`) is loaded at `zipAddr` and
   * `unzip`ped into the load buffer, whose CRC is then checked as for a raw part. The script first
   * checks that the board's U-Boot can `unzip` (beacon `no-unzip` and nothing written if not).
   */
  unzip?: { zipAddr: number };
  /** Ask the board whether its U-Boot can `unzip` (beacon `caps-unzip`); implied by `unzip`. */
  probeUnzip?: boolean;
  /**
   * Read each part from the card before downloading it and skip it when its CRC already matches
   * (beacon `part-<n>-same-<crc>`): the board's reading of its own card is then all the proof.
   */
  readCompare?: boolean;
  /**
   * The image's size, for the card-size probe: the card must hold the whole image even where its
   * tail is unmapped (its partitions reach there). Default: the end of the last part.
   */
  imageSize?: number;
  jobId: string;
  mac: string;
  /** The job's report secret (REPORT_SECRET_PATTERN): part of every beacon name, nowhere else. */
  reportSecret: string;
  parts: Stage2Part[];
}

/** RAM the script may touch at beaconAddr: the agent's beacon answers must stay below this. */
export const BEACON_RESERVE = 0x1000;
const CRC_RESERVE = 8;
/** U-Boot keeps TFTP file names in a 128-byte buffer (CONFIG_TFTP_FILE_NAME_MAX_LEN), NUL included. */
export const UBOOT_TFTP_NAME_MAX = 127;
/** Fills the load buffer before each read-back, so a read that moves no data cannot pass the check. */
const POISON_WORD = 0x5a5aa5a5;
/** Calibration input: `mw.l` stores it little-endian; its CRC tells which way `crc32` stores results. */
const CALIBRATION_WORD = 0x12345678;
/** The unzip probe: its gzip stream goes to beaconAddr + ZPROBE_IN, inflates to beaconAddr + ZPROBE_OUT. */
const ZPROBE_IN = 0x400;
const ZPROBE_OUT = 0x800;
const ZPROBE_TEXT = Buffer.from('rpi-flash unzip probe '.repeat(4));

/** The probe's gzip stream as little-endian words (mw.l), and the first word it must inflate to. */
export function unzipProbe(): { words: number[]; expect: number; outSize: number } {
  const gz = gzipSync(ZPROBE_TEXT, { level: 9 });
  const padded = Buffer.concat([gz, Buffer.alloc((4 - (gz.length % 4)) % 4)]);
  const words = Array.from({ length: padded.length / 4 }, (_, i) => padded.readUInt32LE(i * 4));
  return { words, expect: ZPROBE_TEXT.readUInt32LE(0), outSize: ZPROBE_TEXT.length };
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function swap32(n: number): number {
  return (((n & 0xff) << 24) | ((n & 0xff00) << 8) | ((n >>> 8) & 0xff00) | (n >>> 24)) >>> 0;
}

/** The CRC32 of CALIBRATION_WORD as it lies in a little-endian board's memory. */
export function calibrationCrc(): number {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32LE(CALIBRATION_WORD);
  return crc32(bytes);
}

/** `setenv name '<procedure>'`: single quotes keep `${…}` for run time. */
function procedure(name: string, commands: string[]): string {
  const body = commands.join('; ');
  if (/['\n]/.test(body)) throw new Error(`internal: procedure ${name} contains a quote or newline`);
  return `setenv ${name} '${body}'`;
}

const v = (name: string) => `\${${name}}`;

function check(condition: boolean, message: string): void {
  if (!condition) throw new RangeError(message);
}

/** The RAM the script itself uses on the board: [what, start, size]. */
function bufferRegions(o: Stage2Options): Array<[string, number, number]> {
  const largest = Math.max(...o.parts.map((p) => p.servedSize));
  const regions: Array<[string, number, number]> = [
    ['load buffer', o.loadAddr, largest],
    ['CRC slot', o.crcAddr, CRC_RESERVE],
    ['beacon buffer', o.beaconAddr, BEACON_RESERVE],
  ];
  if (o.unzip) regions.push(['compressed buffer', o.unzip.zipAddr, Math.max(...o.parts.map((p) => p.zip?.size ?? 0))]);
  return regions;
}

/**
 * The lowest top of RAM (a byte address) with which the script's buffers still fit below U-Boot's
 * reserve and the margin: the RAM probe on the board refuses to write anything below it. A
 * preloaded image is the test's RAM, not the script's, so both transfers ask the same.
 */
export function ramTopNeeded(o: Stage2Options): number {
  const end = Math.max(...bufferRegions(o).map(([, start, size]) => start + size));
  return end + UBOOT_RESERVE + RAM_MARGIN;
}

function validate(o: Stage2Options): void {
  check(JOB_ID_PATTERN.test(o.jobId), `job id "${o.jobId}" must match ${JOB_ID_PATTERN}`);
  macDir(o.mac); // throws on a bad MAC
  check(o.parts.length > 0, 'a stage-2 script needs at least one part');
  check(
    Number.isInteger(o.retries) && o.retries >= 0 && o.retries <= 20,
    `retries must be an integer 0..20, got ${o.retries}`,
  );
  check(
    Number.isInteger(o.mmcDev) && o.mmcDev >= 0 && o.mmcDev <= 9,
    `mmcDev must be an integer 0..9, got ${o.mmcDev}`,
  );
  if (o.tftpBlockSize !== undefined)
    check(
      Number.isInteger(o.tftpBlockSize) && o.tftpBlockSize >= 8 && o.tftpBlockSize <= 65464,
      `tftpBlockSize must be an integer 8..65464 (RFC 2348), got ${o.tftpBlockSize}`,
    );
  if (o.tftpWindowSize !== undefined)
    check(
      Number.isInteger(o.tftpWindowSize) && o.tftpWindowSize >= 1 && o.tftpWindowSize <= 65535,
      `tftpWindowSize must be an integer 1..65535 (RFC 7440), got ${o.tftpWindowSize}`,
    );
  const address = (name: string, value: number, align: number) =>
    check(
      Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff && value % align === 0,
      `${name} must be a 32-bit address aligned to ${align} bytes, got ${value}`,
    );
  address('loadAddr', o.loadAddr, 64);
  address('crcAddr', o.crcAddr, 8);
  address('beaconAddr', o.beaconAddr, 8);
  if (o.transfer?.kind === 'preloaded') address('imageAddr', o.transfer.imageAddr, SECTOR);
  if (o.unzip) address('zipAddr', o.unzip.zipAddr, 64);
  o.parts.forEach((p, i) => {
    const at = `part ${p.index}`;
    check(p.index === i + 1, `parts must be numbered 1..n in order; position ${i + 1} holds part ${p.index}`);
    check(
      Number.isSafeInteger(p.servedSize) && p.servedSize > 0 && p.servedSize % SECTOR === 0,
      `${at}: servedSize must be a positive multiple of ${SECTOR}, got ${p.servedSize}`,
    );
    check(
      p.blockCount * SECTOR === p.servedSize,
      `${at}: blockCount ${p.blockCount} does not cover servedSize ${p.servedSize}`,
    );
    check(
      Number.isSafeInteger(p.startBlock) && p.startBlock >= 0 && p.startBlock + p.blockCount <= 0xffff_ffff,
      `${at}: startBlock ${p.startBlock} is out of range for mmc write`,
    );
    check(
      Number.isInteger(p.crc32) && p.crc32 >= 0 && p.crc32 <= 0xffff_ffff,
      `${at}: crc32 must be a 32-bit unsigned value, got ${p.crc32}`,
    );
    check(
      /^[A-Za-z0-9._/-]+$/.test(p.file) && p.file.length <= UBOOT_TFTP_NAME_MAX,
      `${at}: TFTP name "${p.file}" must be at most ${UBOOT_TFTP_NAME_MAX} path-safe characters without ':'`,
    );
    if (!o.unzip) return;
    check(p.zip !== undefined, `${at}: the compressed transfer needs the part's gzip file`);
    const zip = p.zip!;
    check(
      Number.isSafeInteger(zip.size) && zip.size > 0,
      `${at}: the gzip size must be a positive number, got ${zip.size}`,
    );
    check(
      /^[A-Za-z0-9._/-]+$/.test(zip.file) && zip.file.length <= UBOOT_TFTP_NAME_MAX,
      `${at}: TFTP name "${zip.file}" must be at most ${UBOOT_TFTP_NAME_MAX} path-safe characters without ':'`,
    );
    // A preloaded compressed part lies where the raw one would: it must not be larger.
    if (o.transfer?.kind === 'preloaded')
      check(zip.size <= p.servedSize, `${at}: a preloaded gzip stream (${zip.size}) must fit the part's place`);
  });
  const regions = bufferRegions(o);
  if (o.transfer?.kind === 'preloaded') {
    const end = Math.max(...o.parts.map((p) => (p.startBlock + p.blockCount) * SECTOR));
    regions.push(['preloaded image', o.transfer.imageAddr, end]);
  }
  for (const [name, start, size] of regions)
    check(start + size <= 0x1_0000_0000, `${name} at ${hex(start)} (+${hex(size)}) runs past 4 GiB`);
  for (let i = 0; i < regions.length; i++) {
    for (let j = i + 1; j < regions.length; j++) {
      const [an, as, al] = regions[i]!;
      const [bn, bs, bl] = regions[j]!;
      check(as + al <= bs || bs + bl <= as, `${an} (${hex(as)}+${hex(al)}) overlaps the ${bn} (${hex(bs)}+${hex(bl)})`);
    }
  }
  const longest =
    reportPrefix(o.mac, o.jobId, o.reportSecret) +
    beaconText.partRetry(String(o.parts.length), String(o.retries), beaconText.retryReasonCrc('ffffffff'));
  check(
    longest.length <= UBOOT_TFTP_NAME_MAX,
    `beacon names would reach ${longest.length} characters, over U-Boot's ${UBOOT_TFTP_NAME_MAX}: use a shorter job id`,
  );
}

/** What the beacon procedure prints before each report: `rpi-flash: report <message>`. */
export const BEACON_ECHO = 'rpi-flash: report ';

/**
 * The commands that put part `${rpf_part}` at the load address and then check it: the only text in
 * which the two transfers differ. A preloaded part lies at imageAddr + its byte offset in the image
 * (startBlock × 512, from `rpf_blk`).
 */
function transferCommands(t: Stage2Transfer, load: string, zip: string | undefined): string[] {
  // Compressed: the gzip stream goes to the compressed buffer and rpf_unzip inflates it to `load`.
  const [dest, file, len, then] = zip
    ? [zip, v('rpf_zfile'), v('rpf_zlen'), 'rpf_unzip']
    : [load, v('rpf_file'), v('rpf_len'), 'rpf_dlcheck'];
  if (t.kind === 'tftp') return [`tftpboot ${dest} ${file} && run ${then}`];
  return [
    `setexpr rpf_src ${v('rpf_blk')} * ${hex(SECTOR)}`,
    `setexpr rpf_src ${v('rpf_src')} + ${hex(t.imageAddr)}`,
    `cp.b ${v('rpf_src')} ${dest} ${len} && run ${then}`,
  ];
}

/** The unzip probe (`rpf_zprobe`: 0 when this U-Boot inflated a known stream) and its failure path. */
function unzipProbeProcedures(o: Stage2Options): string[] {
  const probe = unzipProbe();
  const input = o.beaconAddr + ZPROBE_IN;
  const output = o.beaconAddr + ZPROBE_OUT;
  return [
    '# Can this U-Boot unzip? Inflate a known gzip stream (help <cmd> returns 1 either way).',
    procedure('rpf_zprobe', [
      `mw.l ${hex(output)} 0x0 ${hex(probe.outSize / 4)}`,
      ...probe.words.map((w, i) => `mw.l ${hex(input + 4 * i)} ${hex(w)}`),
      `unzip ${hex(input)} ${hex(output)} 0x100 && itest.l *${hex(output)} == ${hex(probe.expect)}`,
    ]),
    procedure('rpf_nozip', [`setenv rpf_msg ${beaconText.noUnzip()}`, 'run rpf_abort']),
  ];
}

export function generateStage2Script(o: Stage2Options): string {
  validate(o);
  const load = hex(o.loadAddr);
  const zip = o.unzip && hex(o.unzip.zipAddr);
  const crcSlot = hex(o.crcAddr);
  const beaconBuf = hex(o.beaconAddr);
  const calibration = calibrationCrc();
  if (calibration === swap32(calibration)) throw new Error('internal: calibration CRC is byte-order symmetric');
  const total = o.parts.reduce((sum, p) => sum + p.size, 0);
  const partsEnd = Math.max(...o.parts.map((p) => p.startBlock + p.blockCount));
  const lastBlock = Math.max(partsEnd, Math.ceil((o.imageSize ?? 0) / SECTOR)) - 1;
  const part = v('rpf_part');
  const report = (message: string) => [`setenv rpf_msg ${message}`, 'run rpf_beacon'];

  const lines: string[] = [
    `# rpi-flash stage 2 for job ${o.jobId}: ${o.parts.length} part(s), ${total} bytes, to mmc ${o.mmcDev}.`,
    '# Generated by the agent for this job only; see runner-agent/src/board/stage2-script.ts.',
    'setenv autostart no',
    `setenv rpf_rep ${reportPrefix(o.mac, o.jobId, o.reportSecret)}`,
  ];
  if (o.tftpBlockSize !== undefined) lines.push(`setenv tftpblocksize ${o.tftpBlockSize}`);
  if (o.tftpWindowSize !== undefined) lines.push(`setenv tftpwindowsize ${o.tftpWindowSize}`);
  lines.push(
    '# A beacon: read <macdir>/<job>/<secret>/<message>; the agent records the name. Failures are ignored.',
    '# The echo names the message on the console (never the secret): a board without a network still says',
    '# what it would have reported.',
    procedure('rpf_beacon', [
      `echo ${BEACON_ECHO}${v('rpf_msg')}`,
      `tftpboot ${beaconBuf} ${v('rpf_rep')}${v('rpf_msg')}`,
    ]),
    '# Byte-swap rpf_crc (for builds whose crc32 stores big-endian), using only + * / %.',
    procedure('rpf_swap', [
      `setexpr rpf_s ${v('rpf_crc')} % 0x100`,
      `setexpr rpf_s ${v('rpf_s')} * 0x1000000`,
      `setexpr rpf_b ${v('rpf_crc')} / 0x100`,
      `setexpr rpf_b ${v('rpf_b')} % 0x100`,
      `setexpr rpf_b ${v('rpf_b')} * 0x10000`,
      `setexpr rpf_s ${v('rpf_s')} + ${v('rpf_b')}`,
      `setexpr rpf_b ${v('rpf_crc')} / 0x10000`,
      `setexpr rpf_b ${v('rpf_b')} % 0x100`,
      `setexpr rpf_b ${v('rpf_b')} * 0x100`,
      `setexpr rpf_s ${v('rpf_s')} + ${v('rpf_b')}`,
      `setexpr rpf_b ${v('rpf_crc')} / 0x1000000`,
      `setexpr rpf_crc ${v('rpf_s')} + ${v('rpf_b')}`,
    ]),
    '# rpf_crc := CRC32 of the rpf_len bytes at the load address.',
    procedure('rpf_check', [
      `crc32 ${load} ${v('rpf_len')} ${crcSlot}`,
      `setexpr.l rpf_crc *${crcSlot}`,
      'run rpf_fix',
    ]),
    '# One download attempt; succeeds only if the CRC matches. rpf_why/rpf_fail say why it failed.',
    procedure('rpf_get', [
      'setenv rpf_why download',
      'setenv rpf_fail download',
      ...transferCommands(o.transfer ?? { kind: 'tftp' }, load, zip),
    ]),
    procedure('rpf_dlcheck', [
      'run rpf_check',
      `setenv rpf_why ${beaconText.retryReasonCrc(v('rpf_crc'))}`,
      `setenv rpf_fail ${beaconText.failedWithCrc('download', v('rpf_crc'))}`,
      `itest.l ${v('rpf_crc')} == ${v('rpf_want')}`,
    ]),
  );
  if (zip)
    lines.push(
      '# Inflate the compressed part into the load buffer (at most rpf_len bytes), then check its CRC.',
      procedure('rpf_unzip', [
        'setenv rpf_why unzip',
        'setenv rpf_fail unzip',
        `unzip ${zip} ${load} ${v('rpf_len')} && run rpf_dlcheck`,
      ]),
    );
  lines.push(
    procedure('rpf_retry', [...report(beaconText.partRetry(part, v('rpf_att'), v('rpf_why'))), 'run rpf_get']),
  );
  for (let attempt = 1; attempt <= o.retries; attempt++)
    lines.push(procedure(`rpf_r${attempt}`, [`setenv rpf_att ${attempt}`, 'run rpf_retry']));
  lines.push(
    '# Failures: report the part, report the result, reset (stage 1 then finds no flash.scr).',
    procedure('rpf_abort', ['run rpf_beacon', ...report(beaconText.done(false)), 'reset']),
    procedure('rpf_dlfail', [`setenv rpf_msg ${beaconText.partFailed(part, v('rpf_fail'))}`, 'run rpf_abort']),
    procedure('rpf_wfail', [`setenv rpf_msg ${beaconText.partFailed(part, 'write')}`, 'run rpf_abort']),
    procedure('rpf_rfail', [`setenv rpf_msg ${beaconText.partFailed(part, 'readback')}`, 'run rpf_abort']),
    procedure('rpf_vfail', [
      `setenv rpf_msg ${beaconText.partFailed(part, beaconText.failedWithCrc('verify', v('rpf_crc')))}`,
      'run rpf_abort',
    ]),
    ...(zip || o.probeUnzip ? unzipProbeProcedures(o) : []),
    "# The image's last block did not read: if block 0 does, the card is smaller than the image.",
    procedure('rpf_size', [`mmc read ${beaconBuf} 0x0 0x1 && run rpf_toolarge`]),
    procedure('rpf_toolarge', [`setenv rpf_msg ${beaconText.tooLarge()}`, 'run rpf_abort']),
    '# Write, poison the buffer, read back, verify, report.',
    procedure('rpf_put', [
      `mmc write ${load} ${v('rpf_blk')} ${v('rpf_cnt')} || run rpf_wfail`,
      `mw.l ${load} ${hex(POISON_WORD)} ${v('rpf_words')}`,
      `mmc read ${load} ${v('rpf_blk')} ${v('rpf_cnt')} || run rpf_rfail`,
      'run rpf_check',
      `if itest.l ${v('rpf_crc')} == ${v('rpf_want')}; ` +
        `then ${report(beaconText.partOk(part, v('rpf_crc'))).join('; ')}; else run rpf_vfail; fi`,
    ]),
    procedure(o.readCompare ? 'rpf_fetch' : 'rpf_one', [
      [`run rpf_get`, ...Array.from({ length: o.retries }, (_, i) => `run rpf_r${i + 1}`), 'run rpf_dlfail'].join(
        ' || ',
      ),
      'run rpf_put',
    ]),
    ...(o.readCompare
      ? [
          '# Read-compare: read the part from the card first (the buffer poisoned, so a read that moves',
          '# nothing cannot match) and skip its download and write when its CRC is already the one wanted.',
          "# Only the board's own reading of its card proves it.",
          procedure('rpf_same', [
            `mw.l ${load} ${hex(POISON_WORD)} ${v('rpf_words')}`,
            `mmc read ${load} ${v('rpf_blk')} ${v('rpf_cnt')} && run rpf_check && ` +
              `itest.l ${v('rpf_crc')} == ${v('rpf_want')}`,
          ]),
          procedure('rpf_one', [
            `if run rpf_same; then ${report(beaconText.partSame(part, v('rpf_crc'))).join('; ')}; ` +
              'else run rpf_fetch; fi',
          ]),
        ]
      : []),
    '# RAM probe. The firmware hands U-Boot its device tree (fdt_addr, set by the Pi board code); its',
    '# /memory node holds the RAM the ARM has, after gpu_mem. U-Boot keeps its reserve below that top,',
    '# or below the tree when the tree lies within the window under the top. rpf_cell reads cell',
    '# rpf_o of the reg property (big-endian) into rpf_crc; only the low cells are read (RAM the',
    '# script can address lies below 4 GiB). A board without fdt_addr, or whose tree has no',
    '# /memory, skips the probe; a download past the end would still fail its CRC.',
    procedure('rpf_cell', [
      `setexpr rpf_o ${v('rpf_o')} * 4`,
      `setexpr rpf_o ${v('rpf_o')} + ${v('rpf_p')}`,
      `setexpr.l rpf_crc *${v('rpf_o')}`,
      'run rpf_swap',
    ]),
    procedure('rpf_memtop', [
      `setexpr rpf_o ${v('rpf_ac')} - 1`,
      'run rpf_cell',
      `setenv rpf_top ${v('rpf_crc')}`,
      `setexpr rpf_o ${v('rpf_ac')} + ${v('rpf_sc')}`,
      `setexpr rpf_o ${v('rpf_o')} - 1`,
      'run rpf_cell',
      `setexpr rpf_top ${v('rpf_top')} + ${v('rpf_crc')}`,
      `setexpr rpf_o ${v('rpf_top')} - ${hex(FIRMWARE_DTB_WINDOW)}`,
      `if itest ${v('fdt_addr')} -gt ${v('rpf_o')} && itest ${v('fdt_addr')} -lt ${v('rpf_top')}; ` +
        `then setenv rpf_top ${v('fdt_addr')}; fi`,
      `if itest ${v('rpf_top')} -lt ${hex(ramTopNeeded(o))}; ` +
        `then setenv rpf_msg ${beaconText.noRoom(v('rpf_top'))}; run rpf_abort; fi`,
    ]),
    procedure('rpf_ram', [
      `fdt addr ${v('fdt_addr')} && fdt get value rpf_ac / "#address-cells" && ` +
        'fdt get value rpf_sc / "#size-cells" && fdt get addr rpf_p /memory reg && run rpf_memtop',
    ]),
    '# Calibrate: how does this build store crc32 results?',
    `mw.l ${beaconBuf} ${hex(CALIBRATION_WORD)}; crc32 ${beaconBuf} 0x4 ${crcSlot}; ` +
      `if itest.l *${crcSlot} == ${hex(calibration)}; then setenv rpf_fix true; else setenv rpf_fix run rpf_swap; fi`,
    report(beaconText.start()).join('; '),
  );
  if (zip)
    lines.push(
      '# Compressed parts: nothing is written unless this U-Boot can unzip.',
      'run rpf_zprobe || run rpf_nozip',
    );
  else if (o.probeUnzip) lines.push(`if run rpf_zprobe; then ${report(beaconText.capsUnzip()).join('; ')}; fi`);
  lines.push(
    'if env exists fdt_addr; then run rpf_ram; fi',
    `mmc dev ${o.mmcDev}`,
    '# Card size probe, before anything is written (only the board knows its card): reading past',
    '# the end fails ("block number … exceeds max"). A card that reads nothing at all is left to',
    '# the write path, which reports it as such.',
    `mmc read ${beaconBuf} ${hex(lastBlock)} 0x1 || run rpf_size`,
  );
  for (const p of o.parts) {
    lines.push(
      [
        `setenv rpf_part ${p.index}`,
        `setenv rpf_file ${p.file}`,
        ...(p.zip && o.unzip ? [`setenv rpf_zfile ${p.zip.file}`, `setenv rpf_zlen ${hex(p.zip.size)}`] : []),
        `setenv rpf_len ${hex(p.servedSize)}`,
        `setenv rpf_words ${hex(p.servedSize / 4)}`,
        `setenv rpf_want ${hex(p.crc32)}`,
        `setenv rpf_blk ${hex(p.startBlock)}`,
        `setenv rpf_cnt ${hex(p.blockCount)}`,
        'run rpf_one',
      ].join('; '),
    );
  }
  lines.push(report(beaconText.done(true)).join('; '), 'reset');
  return lines.join('\n') + '\n';
}
