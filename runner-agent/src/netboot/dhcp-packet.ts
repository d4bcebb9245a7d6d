/**
 * BOOTP/DHCP messages (RFC 2131, options RFC 2132): the fixed header, the magic cookie and the
 * options, decoded from and encoded to Buffers. Pure functions, shared by the responder and the
 * tests that play a board.
 *
 * Decoding is total: any datagram either becomes a `DhcpPacket` or throws a `DhcpPacketError`
 * saying why; every length is checked against the bytes that are there. Option overload (option
 * 52: options carried in `sname`/`file`) is not followed: no Pi firmware, U-Boot or udhcpc sends it,
 * and a server may ignore it.
 */

export const BootOp = { REQUEST: 1, REPLY: 2 } as const;

/** Option 53's values (RFC 2132 §9.6). */
export const DhcpMessageType = {
  DISCOVER: 1,
  OFFER: 2,
  REQUEST: 3,
  DECLINE: 4,
  ACK: 5,
  NAK: 6,
  RELEASE: 7,
  INFORM: 8,
} as const;
export type DhcpMessageType = (typeof DhcpMessageType)[keyof typeof DhcpMessageType];

const MESSAGE_TYPE_NAMES = Object.fromEntries(Object.entries(DhcpMessageType).map(([k, v]) => [v, k])) as Record<
  number,
  keyof typeof DhcpMessageType
>;

/** `DISCOVER`, `OFFER`…, or `type 42` for a value RFC 2132 does not name. */
export function messageTypeName(type: number | undefined): string {
  return type === undefined ? 'none' : (MESSAGE_TYPE_NAMES[type] ?? `type ${type}`);
}

/** The option codes this project reads or writes (RFC 2132, RFC 4578 for 93/94/97). */
export const DhcpOption = {
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  VENDOR_SPECIFIC: 43,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAMETER_LIST: 55,
  MAX_MESSAGE_SIZE: 57,
  VENDOR_CLASS: 60,
  CLIENT_ID: 61,
  TFTP_SERVER_NAME: 66,
  BOOTFILE_NAME: 67,
  CLIENT_ARCH: 93,
  CLIENT_NDI: 94,
  CLIENT_UUID: 97,
  END: 255,
} as const;

/** The `flags` bit a client sets when it cannot receive unicast before it has an address (RFC 2131 §2). */
export const BROADCAST_FLAG = 0x8000;

export const MAGIC_COOKIE = 0x63825363;
/** op … file: the fixed BOOTP header, before the cookie. */
export const HEADER_LENGTH = 236;
const OPTIONS_OFFSET = HEADER_LENGTH + 4;
/**
 * The largest datagram decoded. DHCP messages are at most a few hundred bytes (576 is every
 * client's guaranteed minimum); anything far larger is not a board's and costs no parsing.
 */
export const MAX_PACKET_LENGTH = 4096;
/** BOOTP's minimum message (RFC 1542 §2.1): replies are padded to it, after the end option. */
export const MIN_REPLY_LENGTH = 300;

export interface DhcpPacket {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  /** Transaction id, as an unsigned 32-bit number. */
  xid: number;
  secs: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** The 16-byte client hardware address field as sent (the MAC is its first `hlen` bytes). */
  chaddr: Buffer;
  /** Server host name and boot file name, up to their first NUL (latin1). */
  sname: string;
  file: string;
  /**
   * Options by code, in the order first seen; a code sent twice is one option with the parts
   * joined (RFC 3396). Pad and end are not kept.
   */
  options: Map<number, Buffer>;
}

export class DhcpPacketError extends Error {
  override name = 'DhcpPacketError';
}

function ipv4At(buf: Buffer, at: number): string {
  return `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`;
}

function cString(buf: Buffer, start: number, length: number): string {
  const field = buf.subarray(start, start + length);
  const nul = field.indexOf(0);
  return field.toString('latin1', 0, nul < 0 ? field.length : nul);
}

/** Decode one datagram; throws DhcpPacketError for anything that is not a well-formed DHCP message. */
export function decodeDhcpPacket(buf: Buffer): DhcpPacket {
  if (buf.length > MAX_PACKET_LENGTH)
    throw new DhcpPacketError(`packet of ${buf.length} bytes is longer than ${MAX_PACKET_LENGTH}`);
  if (buf.length < OPTIONS_OFFSET)
    throw new DhcpPacketError(`packet of ${buf.length} bytes is shorter than a DHCP header (${OPTIONS_OFFSET})`);
  const op = buf[0]!;
  if (op !== BootOp.REQUEST && op !== BootOp.REPLY) throw new DhcpPacketError(`op ${op} is neither request nor reply`);
  const hlen = buf[2]!;
  if (hlen > 16) throw new DhcpPacketError(`hardware address length ${hlen} is over 16`);
  const cookie = buf.readUInt32BE(HEADER_LENGTH);
  if (cookie !== MAGIC_COOKIE)
    throw new DhcpPacketError(`no DHCP magic cookie (0x${cookie.toString(16).padStart(8, '0')}): plain BOOTP`);

  const options = new Map<number, Buffer>();
  let at = OPTIONS_OFFSET;
  // A missing end option is tolerated: the datagram's end is unambiguous.
  while (at < buf.length) {
    const code = buf[at]!;
    if (code === DhcpOption.PAD) {
      at += 1;
      continue;
    }
    if (code === DhcpOption.END) break;
    if (at + 1 >= buf.length) throw new DhcpPacketError(`option ${code} at byte ${at} has no length`);
    const length = buf[at + 1]!;
    const end = at + 2 + length;
    if (end > buf.length)
      throw new DhcpPacketError(`option ${code} at byte ${at} claims ${length} bytes, ${buf.length - at - 2} remain`);
    const data = Buffer.from(buf.subarray(at + 2, end));
    const earlier = options.get(code);
    options.set(code, earlier ? Buffer.concat([earlier, data]) : data);
    at = end;
  }

  return {
    op,
    htype: buf[1]!,
    hlen,
    hops: buf[3]!,
    xid: buf.readUInt32BE(4),
    secs: buf.readUInt16BE(8),
    flags: buf.readUInt16BE(10),
    ciaddr: ipv4At(buf, 12),
    yiaddr: ipv4At(buf, 16),
    siaddr: ipv4At(buf, 20),
    giaddr: ipv4At(buf, 24),
    chaddr: Buffer.from(buf.subarray(28, 44)),
    sname: cString(buf, 44, 64),
    file: cString(buf, 108, 128),
    options,
  };
}

function writeIpv4(buf: Buffer, at: number, ip: string, field: string): void {
  const bytes = ipv4Bytes(ip);
  if (!bytes) throw new DhcpPacketError(`${field} "${ip}" is not a dotted IPv4 address`);
  bytes.copy(buf, at);
}

function writeCString(buf: Buffer, at: number, length: number, value: string, field: string): void {
  const bytes = Buffer.from(value, 'latin1');
  // One byte stays for the NUL a C reader looks for.
  if (bytes.length >= length) throw new DhcpPacketError(`${field} is ${bytes.length} bytes, at most ${length - 1} fit`);
  bytes.copy(buf, at);
}

/**
 * Encode a message: header, cookie, the options in the map's order (one longer than 255 bytes
 * split into parts, RFC 3396), the end option, then zeros up to MIN_REPLY_LENGTH. The zeros follow
 * the end option, never precede it: early Pi 4 EEPROMs dropped replies with pad options among the
 * options (rpi-eeprom #82), and old U-Boots warn about them.
 */
export function encodeDhcpPacket(p: DhcpPacket): Buffer {
  const parts: Buffer[] = [];
  for (const [code, data] of p.options) {
    if (!Number.isInteger(code) || code <= DhcpOption.PAD || code >= DhcpOption.END)
      throw new DhcpPacketError(`option code ${code} cannot carry data`);
    if (data.length === 0) parts.push(Buffer.from([code, 0]));
    for (let at = 0; at < data.length; at += 255) {
      const chunk = data.subarray(at, at + 255);
      parts.push(Buffer.from([code, chunk.length]), chunk);
    }
  }
  const optionBytes = Buffer.concat(parts);
  const length = Math.max(MIN_REPLY_LENGTH, OPTIONS_OFFSET + optionBytes.length + 1);
  const buf = Buffer.alloc(length);
  buf[0] = p.op;
  buf[1] = p.htype;
  buf[2] = p.hlen;
  buf[3] = p.hops;
  buf.writeUInt32BE(p.xid >>> 0, 4);
  buf.writeUInt16BE(p.secs, 8);
  buf.writeUInt16BE(p.flags, 10);
  writeIpv4(buf, 12, p.ciaddr, 'ciaddr');
  writeIpv4(buf, 16, p.yiaddr, 'yiaddr');
  writeIpv4(buf, 20, p.siaddr, 'siaddr');
  writeIpv4(buf, 24, p.giaddr, 'giaddr');
  if (p.chaddr.length > 16) throw new DhcpPacketError(`chaddr is ${p.chaddr.length} bytes, at most 16 fit`);
  p.chaddr.copy(buf, 28);
  writeCString(buf, 44, 64, p.sname, 'sname');
  writeCString(buf, 108, 128, p.file, 'file');
  buf.writeUInt32BE(MAGIC_COOKIE, HEADER_LENGTH);
  optionBytes.copy(buf, OPTIONS_OFFSET);
  buf[OPTIONS_OFFSET + optionBytes.length] = DhcpOption.END;
  return buf;
}

/** `192.168.1.1` → its 4 bytes; undefined when not a dotted IPv4 address. */
export function ipv4Bytes(ip: string): Buffer | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m) return undefined;
  const bytes = m.slice(1).map(Number);
  return bytes.every((b) => b <= 255) ? Buffer.from(bytes) : undefined;
}

/** An option's data as an IPv4 address, when it is 4 bytes long. */
export function optionIpv4(p: DhcpPacket, code: number): string | undefined {
  const data = p.options.get(code);
  return data?.length === 4 ? ipv4At(data, 0) : undefined;
}

/** An option's data as text (latin1), when present. */
export function optionText(p: DhcpPacket, code: number): string | undefined {
  return p.options.get(code)?.toString('latin1');
}

/** Option 53, when it is one byte long. */
export function messageTypeOf(p: DhcpPacket): number | undefined {
  const data = p.options.get(DhcpOption.MESSAGE_TYPE);
  return data?.length === 1 ? data[0] : undefined;
}

/** The client's MAC (`b8:27:eb:28:f6:6d`), when the hardware is Ethernet with a 6-byte address. */
export function clientMac(p: DhcpPacket): string | undefined {
  if (p.htype !== 1 || p.hlen !== 6) return undefined;
  return [...p.chaddr.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** `b8:27:eb:28:f6:6d` (or with `-`) → the 16-byte chaddr field. */
export function chaddrOf(mac: string): Buffer {
  const hex = mac.replace(/[:-]/g, '');
  if (!/^[0-9a-f]{12}$/i.test(hex)) throw new DhcpPacketError(`"${mac}" is not a MAC address`);
  const field = Buffer.alloc(16);
  Buffer.from(hex, 'hex').copy(field);
  return field;
}

/** A 4-byte option value holding an unsigned number (lease time). */
export function uint32Option(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  return b;
}
