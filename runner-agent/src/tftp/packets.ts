/**
 * TFTP packet encoding and decoding (RFC 1350, options RFC 2347).
 * Pure functions over Buffers, shared by the server and the client.
 */

export const Opcode = {
  RRQ: 1,
  WRQ: 2,
  DATA: 3,
  ACK: 4,
  ERROR: 5,
  OACK: 6,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

/** Error codes of RFC 1350 and RFC 2347. */
export const TftpErrorCode = {
  NOT_DEFINED: 0,
  FILE_NOT_FOUND: 1,
  ACCESS_VIOLATION: 2,
  DISK_FULL: 3,
  ILLEGAL_OPERATION: 4,
  UNKNOWN_TID: 5,
  FILE_EXISTS: 6,
  NO_SUCH_USER: 7,
  OPTION_REFUSED: 8,
} as const;

export type RequestPacket = {
  op: typeof Opcode.RRQ | typeof Opcode.WRQ;
  path: string;
  mode: string;
  /** Option names lower-cased (RFC 2347: case-insensitive); values as sent. */
  options: Record<string, string>;
};
export type DataPacket = { op: typeof Opcode.DATA; block: number; data: Buffer };
export type AckPacket = { op: typeof Opcode.ACK; block: number };
export type ErrorPacket = { op: typeof Opcode.ERROR; code: number; message: string };
export type OackPacket = { op: typeof Opcode.OACK; options: Record<string, string> };
export type Packet = RequestPacket | DataPacket | AckPacket | ErrorPacket | OackPacket;

export class TftpPacketError extends Error {
  override name = 'TftpPacketError';
}

/** Splits NUL-terminated strings starting at `offset`; a missing final NUL is malformed. */
function readStrings(buf: Buffer, offset: number): string[] {
  const out: string[] = [];
  let start = offset;
  while (start < buf.length) {
    const end = buf.indexOf(0, start);
    if (end < 0) throw new TftpPacketError('string field is not NUL-terminated');
    // latin1 keeps every byte as is, so a path with odd bytes is refused by the path rules, not mangled.
    out.push(buf.toString('latin1', start, end));
    start = end + 1;
  }
  return out;
}

function readOptions(fields: string[], what: string): Record<string, string> {
  if (fields.length % 2 !== 0) throw new TftpPacketError(`${what}: option "${fields[fields.length - 1]}" has no value`);
  const options: Record<string, string> = {};
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i]!.toLowerCase();
    if (name === '') continue;
    // RFC 2347 does not allow repeats; the first one wins rather than failing the transfer. An own
    // property only: `in` would also see Object.prototype's names ("constructor", "tostring"…).
    if (!Object.hasOwn(options, name)) options[name] = fields[i + 1]!;
  }
  return options;
}

export function decodePacket(buf: Buffer): Packet {
  if (buf.length < 2) throw new TftpPacketError(`packet of ${buf.length} bytes is too short`);
  const op = buf.readUInt16BE(0);
  switch (op) {
    case Opcode.RRQ:
    case Opcode.WRQ: {
      const fields = readStrings(buf, 2);
      if (fields.length < 2) throw new TftpPacketError('request without file name or mode');
      // Lenient with requests: some clients pad with NULs, which reads as empty or unpaired fields.
      const optionFields = fields.slice(2);
      if (optionFields.length % 2 !== 0) optionFields.pop();
      return { op, path: fields[0]!, mode: fields[1]!.toLowerCase(), options: readOptions(optionFields, 'request') };
    }
    case Opcode.DATA:
      if (buf.length < 4) throw new TftpPacketError('DATA packet shorter than its header');
      return { op, block: buf.readUInt16BE(2), data: buf.subarray(4) };
    case Opcode.ACK:
      if (buf.length < 4) throw new TftpPacketError('ACK packet shorter than its header');
      return { op, block: buf.readUInt16BE(2) };
    case Opcode.ERROR: {
      if (buf.length < 4) throw new TftpPacketError('ERROR packet shorter than its header');
      const end = buf.indexOf(0, 4);
      return { op, code: buf.readUInt16BE(2), message: buf.toString('utf8', 4, end < 0 ? buf.length : end) };
    }
    case Opcode.OACK:
      return { op, options: readOptions(readStrings(buf, 2), 'OACK') };
    default:
      throw new TftpPacketError(`unknown opcode ${op}`);
  }
}

function encodeStrings(op: number, strings: string[]): Buffer {
  const parts = strings.map((s) => Buffer.from(s, 'latin1'));
  const buf = Buffer.alloc(2 + parts.reduce((n, p) => n + p.length + 1, 0));
  buf.writeUInt16BE(op, 0);
  let at = 2;
  for (const p of parts) {
    p.copy(buf, at);
    at += p.length + 1; // the NUL is already there (alloc zero-fills)
  }
  return buf;
}

export function encodeRequest(
  op: typeof Opcode.RRQ | typeof Opcode.WRQ,
  path: string,
  mode: string,
  options: Record<string, string> = {},
): Buffer {
  return encodeStrings(op, [path, mode, ...Object.entries(options).flat()]);
}

export function encodeOack(options: Record<string, string>): Buffer {
  return encodeStrings(Opcode.OACK, Object.entries(options).flat());
}

export function encodeAck(block: number): Buffer {
  const buf = Buffer.allocUnsafe(4);
  buf.writeUInt16BE(Opcode.ACK, 0);
  buf.writeUInt16BE(block & 0xffff, 2);
  return buf;
}

/** A DATA header; the payload travels as a second buffer of the same datagram (no copy). */
export function encodeDataHeader(block: number): Buffer {
  const buf = Buffer.allocUnsafe(4);
  buf.writeUInt16BE(Opcode.DATA, 0);
  buf.writeUInt16BE(block & 0xffff, 2);
  return buf;
}

export function encodeData(block: number, data: Buffer): Buffer {
  return Buffer.concat([encodeDataHeader(block), data]);
}

export function encodeError(code: number, message: string): Buffer {
  const text = Buffer.from(message, 'utf8');
  const buf = Buffer.alloc(5 + text.length);
  buf.writeUInt16BE(Opcode.ERROR, 0);
  buf.writeUInt16BE(code, 2);
  text.copy(buf, 4);
  return buf;
}
