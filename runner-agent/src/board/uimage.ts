/**
 * Legacy U-Boot script images (DESIGN §3.5): what `mkimage -A arm -O linux -T script -C none -n NAME
 * -d FILE` writes, produced here so the agent needs no u-boot-tools at run time.
 *
 * Layout (all integers big-endian): a 64-byte header, then the data. For script images the data is
 * mkimage's multi-file table with one entry — the script's length, a zero terminator — followed
 * by the script itself, unpadded (mkimage pads only files that are not the last one). U-Boot's
 * `source` checks the magic, the header CRC, the data CRC (unless `verify=no`) and the type.
 */
import { crc32 } from 'node:zlib';
import { hex8 } from '../../../src/protocol/units.js';

export const UIMAGE_MAGIC = 0x27051956;
export const UIMAGE_HEADER_SIZE = 64;
/** ih_name is 32 bytes, NUL-padded; a 32-byte name has no terminator (mkimage truncates). */
export const UIMAGE_NAME_LENGTH = 32;

// Values of U-Boot's enums in include/image.h (2023.01) that a script image uses.
export const IH_OS_LINUX = 5;
export const IH_ARCH_ARM = 2;
export const IH_TYPE_SCRIPT = 6;
export const IH_COMP_NONE = 0;

const OFFSET = {
  magic: 0,
  hcrc: 4,
  time: 8,
  size: 12,
  load: 16,
  ep: 20,
  dcrc: 24,
  os: 28,
  arch: 29,
  type: 30,
  comp: 31,
  name: 32,
} as const;

export interface ScriptImageOptions {
  /** Image name shown by `mkimage -l` and `iminfo`; at most 32 bytes are kept, like mkimage. */
  name?: string;
  /** Seconds since the epoch for ih_time; defaults to now (mkimage uses the file's mtime or SOURCE_DATE_EPOCH). */
  timestamp?: number;
}

export function buildScriptImage(script: string, o: ScriptImageOptions = {}): Buffer {
  const body = Buffer.from(script, 'utf8');
  const data = Buffer.alloc(8 + body.length);
  data.writeUInt32BE(body.length, 0); // length table: one entry …
  data.writeUInt32BE(0, 4); // … and its zero terminator
  body.copy(data, 8);

  const header = Buffer.alloc(UIMAGE_HEADER_SIZE);
  const timestamp = o.timestamp ?? Math.floor(Date.now() / 1000);
  if (!Number.isInteger(timestamp) || timestamp < 0 || timestamp > 0xffff_ffff)
    throw new RangeError(`script image timestamp must be a 32-bit count of seconds, got ${timestamp}`);
  header.writeUInt32BE(UIMAGE_MAGIC, OFFSET.magic);
  header.writeUInt32BE(timestamp, OFFSET.time);
  header.writeUInt32BE(data.length, OFFSET.size);
  header.writeUInt32BE(0, OFFSET.load);
  header.writeUInt32BE(0, OFFSET.ep);
  header.writeUInt32BE(crc32(data), OFFSET.dcrc);
  header[OFFSET.os] = IH_OS_LINUX;
  header[OFFSET.arch] = IH_ARCH_ARM;
  header[OFFSET.type] = IH_TYPE_SCRIPT;
  header[OFFSET.comp] = IH_COMP_NONE;
  Buffer.from(o.name ?? '', 'utf8')
    .subarray(0, UIMAGE_NAME_LENGTH)
    .copy(header, OFFSET.name);
  header.writeUInt32BE(crc32(header), OFFSET.hcrc); // computed with the hcrc field still zero
  return Buffer.concat([header, data]);
}

export interface ScriptImageHeader {
  name: string;
  timestamp: number;
  /** Bytes of data after the header (length table + script). */
  dataSize: number;
  os: number;
  arch: number;
  type: number;
  comp: number;
}

/** Reads and checks the 64-byte header only (magic and header CRC); `size` is what the data must be. */
export function parseScriptImageHeader(buf: Buffer): ScriptImageHeader {
  if (buf.length < UIMAGE_HEADER_SIZE)
    throw new Error(
      `script image too short: ${buf.length} bytes, a U-Boot image header alone is ${UIMAGE_HEADER_SIZE}`,
    );
  const magic = buf.readUInt32BE(OFFSET.magic);
  if (magic !== UIMAGE_MAGIC)
    throw new Error(`not a U-Boot image: bad magic 0x${hex8(magic)} (expected 0x${hex8(UIMAGE_MAGIC)})`);
  const header = Buffer.from(buf.subarray(0, UIMAGE_HEADER_SIZE));
  const hcrc = header.readUInt32BE(OFFSET.hcrc);
  header.writeUInt32BE(0, OFFSET.hcrc);
  const actual = crc32(header);
  if (actual !== hcrc)
    throw new Error(`U-Boot image header CRC mismatch: header says 0x${hex8(hcrc)}, computed 0x${hex8(actual)}`);
  const nameBytes = header.subarray(OFFSET.name, OFFSET.name + UIMAGE_NAME_LENGTH);
  const nul = nameBytes.indexOf(0);
  return {
    name: nameBytes.subarray(0, nul < 0 ? UIMAGE_NAME_LENGTH : nul).toString('utf8'),
    timestamp: header.readUInt32BE(OFFSET.time),
    dataSize: header.readUInt32BE(OFFSET.size),
    os: header[OFFSET.os]!,
    arch: header[OFFSET.arch]!,
    type: header[OFFSET.type]!,
    comp: header[OFFSET.comp]!,
  };
}

/** Validates a script image like U-Boot's `source` does and returns its name and script text. */
export function parseScriptImage(buf: Buffer): { name: string; script: string } {
  const h = parseScriptImageHeader(buf);
  if (h.type !== IH_TYPE_SCRIPT)
    throw new Error(`U-Boot image "${h.name}" is not a script image (type ${h.type}, a script is ${IH_TYPE_SCRIPT})`);
  if (h.comp !== IH_COMP_NONE)
    throw new Error(
      `U-Boot script image "${h.name}" is compressed (comp ${h.comp}); only uncompressed scripts are supported`,
    );
  const end = UIMAGE_HEADER_SIZE + h.dataSize;
  if (buf.length < end)
    throw new Error(
      `U-Boot script image "${h.name}" is truncated: header announces ${h.dataSize} data bytes, ` +
        `only ${buf.length - UIMAGE_HEADER_SIZE} present`,
    );
  const data = buf.subarray(UIMAGE_HEADER_SIZE, end);
  const dcrc = buf.readUInt32BE(OFFSET.dcrc);
  const actual = crc32(data);
  if (actual !== dcrc)
    throw new Error(
      `U-Boot script image "${h.name}" data CRC mismatch: header says 0x${hex8(dcrc)}, computed 0x${hex8(actual)}`,
    );
  if (data.length < 8)
    throw new Error(`U-Boot script image "${h.name}" has no length table (${data.length} data bytes)`);
  const length = data.readUInt32BE(0);
  if (length === 0) throw new Error(`U-Boot script image "${h.name}" holds an empty script`);
  // Skip the zero-terminated length table, as U-Boot's source command does.
  let offset = 4;
  while (offset + 4 <= data.length && data.readUInt32BE(offset) !== 0) offset += 4;
  offset += 4;
  if (offset + length > data.length)
    throw new Error(
      `U-Boot script image "${h.name}": script length ${length} runs past the data ` +
        `(${data.length - offset} bytes after the length table)`,
    );
  return { name: h.name, script: data.subarray(offset, offset + length).toString('utf8') };
}
