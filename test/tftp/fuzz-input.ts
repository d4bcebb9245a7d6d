/**
 * Generated TFTP input for fuzz tests: a seeded pseudo-random generator (the same seed gives the
 * same packets, so a failure can be replayed with TFTP_FUZZ_SEED) and a driver that throws the
 * packets at a server over real UDP sockets for a bounded time, from many source ports and 127/8
 * addresses, alone and in the middle of transfers it starts.
 *
 * What it sends: random datagrams of every length up to the UDP maximum; every opcode with and
 * without a body; requests truncated anywhere, without their final NUL, oversize; bad modes;
 * option storms (thousands of options, huge values, repeated names, non-UTF-8 bytes, values
 * beside the RFC ranges); file names that are very long, climb with `..`, are absolute, hold NULs,
 * backslashes or control bytes; and inside transfers ACKs for any block, DATA for reads, errors
 * mid-transfer, garbage, requests on the transfer port, and packets from a stranger's port.
 */
import dgram from 'node:dgram';
import { seededRandom } from '../support/lossy-udp-relay.js';

/** The largest UDP payload over IPv4. */
export const MAX_DATAGRAM = 65_507;

const OP = { RRQ: 1, WRQ: 2, DATA: 3, ACK: 4, ERROR: 5, OACK: 6 } as const;
const KNOWN_OPTIONS = ['blksize', 'windowsize', 'timeout', 'tsize', 'BLKSIZE', 'WindowSize', 'multicast', 'rollover'];
const ODD_VALUES = [
  '0',
  '1',
  '7',
  '8',
  '512',
  '1468',
  '65464',
  '65465',
  '65535',
  '65536',
  '255',
  '256',
  '-1',
  '+5',
  ' 512',
  '0x200',
  '1e3',
  '99999999999',
  '4294967296',
  '',
  'NaN',
];

export interface FuzzNames {
  /** Files the server has: requests for them start real transfers. */
  read: string[];
  /** Names a write request may be accepted for. */
  write: string[];
}

export class FuzzInput {
  private readonly rnd: () => number;

  constructor(
    readonly seed: number,
    private readonly names: FuzzNames,
  ) {
    this.rnd = seededRandom(seed);
  }

  int(n: number): number {
    return Math.floor(this.rnd() * n);
  }
  chance(p: number): boolean {
    return this.rnd() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** Mostly small, sometimes up to `max`: most bugs are in short input, some only in long. */
  size(max: number): number {
    return this.chance(0.8) ? this.int(Math.min(64, max + 1)) : this.int(max + 1);
  }

  /** A file name as bytes: one that exists, a missing one, or a malformed one. */
  name(kind: 'read' | 'write' = 'read'): Buffer {
    const existing = kind === 'read' ? this.names.read : this.names.write;
    switch (this.int(12)) {
      case 0:
      case 1:
      case 2:
        return Buffer.from(this.pick(existing), 'latin1');
      case 3:
        return Buffer.from(`missing/${this.int(1e6)}`);
      case 4:
        return Buffer.from(this.pick(['..', '../etc/passwd', 'a/../../b', `${this.pick(existing)}/../..`, './../x']));
      case 5:
        return Buffer.from(this.pick(['/etc/passwd', '/', '//x', 'a\\..\\b', '\\\\host\\share', '.', './/./']));
      case 6: // a NUL inside: on the wire it ends the name early
        return Buffer.concat([Buffer.from(this.pick(existing), 'latin1'), Buffer.from([0]), this.bytes(this.int(8))]);
      case 7: // very long
        return Buffer.alloc(this.pick([1024, 1025, 4096, 20_000, 60_000]), this.pick(['a', '/', '.', '%']));
      case 8:
        return Buffer.from(`${this.pick(existing)}${'/'.repeat(this.int(3))}${this.pick(['', '.', 'x'])}`, 'latin1');
      case 9: // control and high bytes (non-UTF-8)
        return Buffer.from([0x1b, 0x5b, 0x33, 0x31, 0x6d, 0xff, 0xfe, 0x80, 0x0a, 0x0d, 0x7f]);
      case 10:
        return Buffer.alloc(0);
      default:
        return Buffer.from(this.bytes(this.size(300)).map((b) => b || 1));
    }
  }

  mode(): Buffer {
    return Buffer.from(
      this.pick(['octet', 'octet', 'octet', 'OCTET', 'netascii', 'mail', '', 'binary', 'octet\n', 'x'.repeat(3000)]),
    );
  }

  /** Option fields, name and value alternating, each without its NUL. */
  options(): Buffer[] {
    const fields: Buffer[] = [];
    switch (this.int(6)) {
      case 0:
        break;
      case 1: // what a real client asks, with odd values
        for (const name of ['blksize', 'windowsize', 'timeout', 'tsize'])
          if (this.chance(0.6)) fields.push(Buffer.from(name), Buffer.from(this.pick(ODD_VALUES)));
        break;
      case 2: {
        // a storm: many options
        const count = this.pick([17, 100, 1000, 3000]);
        for (let i = 0; i < count; i++) fields.push(Buffer.from(`o${i}`), Buffer.from(String(i)));
        break;
      }
      case 3: // huge values
        fields.push(Buffer.from(this.pick(KNOWN_OPTIONS)), Buffer.alloc(this.pick([65, 1000, 30_000]), '9'));
        break;
      case 4: // the same name again and again
        for (let i = 0; i < 1 + this.int(50); i++)
          fields.push(Buffer.from(this.pick(['blksize', 'BlkSize', 'windowsize'])), Buffer.from(this.pick(ODD_VALUES)));
        break;
      default: // non-UTF-8 names and values, and names the prototype knows
        fields.push(
          Buffer.from(this.bytes(1 + this.int(20)).map((b) => b || 0x80)),
          Buffer.from(this.bytes(this.int(20)).map((b) => b || 0xff)),
        );
        fields.push(
          Buffer.from(this.pick(['__proto__', 'constructor', 'tostring', 'hasownproperty'])),
          Buffer.from('1'),
        );
    }
    return fields;
  }

  /** A request; `wellFormed` keeps it parseable (for starting transfers), else anything goes. */
  request(op: 1 | 2, wellFormed = false): Buffer {
    const fields = [this.name(op === OP.RRQ ? 'read' : 'write'), wellFormed ? Buffer.from('octet') : this.mode()];
    if (!wellFormed || this.chance(0.5)) fields.push(...this.options());
    else if (this.chance(0.7))
      fields.push(Buffer.from('blksize'), Buffer.from(this.pick(['512', '1024', '1468', '8'])));
    if (wellFormed && this.chance(0.5))
      fields.push(Buffer.from('windowsize'), Buffer.from(this.pick(['1', '4', '16', '64'])));
    if (wellFormed && this.chance(0.3)) fields.push(Buffer.from('timeout'), Buffer.from(this.pick(['1', '2', '255'])));
    if (wellFormed && this.chance(0.3)) fields.push(Buffer.from('tsize'), Buffer.from('0'));
    const parts: Buffer[] = [u16(op)];
    for (const f of fields) parts.push(f, Buffer.from([0]));
    let packet = Buffer.concat(parts);
    if (!wellFormed && this.chance(0.2)) packet = packet.subarray(0, this.int(packet.length + 1)); // truncated
    if (!wellFormed && this.chance(0.1)) packet = packet.subarray(0, packet.length - 1); // no final NUL
    if (!wellFormed && this.chance(0.05)) packet = Buffer.concat([packet, Buffer.alloc(this.int(500))]); // NUL padding
    return packet.subarray(0, MAX_DATAGRAM);
  }

  /** Anything for the request port. */
  datagram(): Buffer {
    switch (this.int(8)) {
      case 0:
        return this.bytes(this.size(this.chance(0.05) ? MAX_DATAGRAM : 1500));
      case 1:
        return this.bytes(this.int(4)); // shorter than any header
      case 2:
      case 3:
        return this.request(this.chance(0.7) ? OP.RRQ : OP.WRQ);
      case 4: // every opcode, known or not, with a random body
        return Buffer.concat([u16(this.pick([0, 3, 4, 5, 6, 7, 255, 0xffff])), this.bytes(this.size(600))]);
      case 5:
        return this.ack(this.int(65536));
      case 6:
        return this.data(this.int(65536), this.size(1500));
      default:
        return this.error();
    }
  }

  /** Anything for a transfer's port, given the block the transfer is at. */
  inTransfer(block: number, blksize: number): Buffer {
    switch (this.int(10)) {
      case 0:
      case 1:
        return this.ack(block);
      case 2:
        return this.ack(this.pick([0, block - 1, block + 1, block + 1000, 65535, this.int(65536)]) & 0xffff);
      case 3:
        return this.data(this.pick([block, block + 1, this.int(65536)]) & 0xffff, this.pick([0, blksize, blksize + 1]));
      case 4:
        return this.error();
      case 5:
        return this.bytes(this.int(4));
      case 6:
        return this.bytes(this.size(1500));
      case 7:
        return this.request(this.chance(0.5) ? OP.RRQ : OP.WRQ);
      case 8: // an OACK from the client
        return Buffer.concat([u16(OP.OACK), Buffer.from('blksize\x0016\x00')]);
      default:
        return this.ack(block);
    }
  }

  ack(block: number): Buffer {
    return Buffer.concat([u16(OP.ACK), u16(block & 0xffff), this.chance(0.05) ? this.bytes(8) : Buffer.alloc(0)]);
  }
  data(block: number, length: number): Buffer {
    return Buffer.concat([u16(OP.DATA), u16(block & 0xffff), this.bytes(length)]);
  }
  error(): Buffer {
    const message = this.chance(0.5) ? Buffer.from('client gives up') : this.bytes(this.size(2000)); // not UTF-8
    const tail = this.chance(0.7) ? Buffer.from([0]) : Buffer.alloc(0);
    return Buffer.concat([u16(OP.ERROR), u16(this.pick([0, 1, 2, 5, 8, 99, 0xffff])), message, tail]);
  }
}

function u16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n & 0xffff, 0);
  return b;
}

export interface FuzzOptions {
  host: string;
  port: number;
  seed: number;
  /** How long to fuzz. */
  ms: number;
  /** Concurrent fuzzing loops, each with its own generator (seed + index) and sockets. */
  workers: number;
  /** Source addresses (127/8) the sockets bind to. */
  addresses: string[];
  names: FuzzNames;
}

export interface FuzzStats {
  datagrams: number;
  sessions: number;
  /** Sessions in which the server answered from a transfer port. */
  transfers: number;
  /** Answers by opcode, and error answers by code. */
  answers: Record<number, number>;
  errorCodes: Record<number, number>;
}

/** A socket that counts what comes back and remembers the latest answer. */
class FuzzSocket {
  readonly socket = dgram.createSocket('udp4');
  latest?: { port: number; op: number; block: number };
  private waiter?: () => void;

  constructor(private readonly stats: FuzzStats) {
    this.socket.on('message', (msg, rinfo) => {
      const op = msg.length >= 2 ? msg.readUInt16BE(0) : -1;
      const block = msg.length >= 4 ? msg.readUInt16BE(2) : -1;
      stats.answers[op] = (stats.answers[op] ?? 0) + 1;
      if (op === OP.ERROR) stats.errorCodes[block] = (stats.errorCodes[block] ?? 0) + 1;
      this.latest = { port: rinfo.port, op, block };
      this.waiter?.();
    });
    this.socket.on('error', () => {}); // e.g. ICMP port unreachable on a closed TID: not the point
  }

  bind(address: string): Promise<void> {
    return new Promise((resolve) => this.socket.bind(0, address, () => resolve()));
  }

  send(packet: Buffer, port: number, host: string): void {
    this.stats.datagrams++;
    this.socket.send(packet, port, host);
  }

  /** Waits for the next answer, at most `ms`. */
  answer(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        resolve();
      }, ms);
      this.waiter = () => {
        clearTimeout(t);
        this.waiter = undefined;
        resolve();
      };
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

/** Fuzzes the server at host:port for `ms`; resolves with what was sent and answered. */
export async function fuzzTftp(o: FuzzOptions): Promise<FuzzStats> {
  const stats: FuzzStats = { datagrams: 0, sessions: 0, transfers: 0, answers: {}, errorCodes: {} };
  const deadline = performance.now() + o.ms;
  const worker = async (index: number) => {
    const input = new FuzzInput(o.seed + index, o.names);
    while (performance.now() < deadline) {
      // A fresh socket per round: many source ports, so the server sees many clients.
      const s = new FuzzSocket(stats);
      await s.bind(input.pick(o.addresses));
      try {
        if (input.chance(0.4)) {
          for (let i = 1 + input.int(8); i > 0; i--) s.send(input.datagram(), o.port, o.host);
          await s.answer(5);
        } else {
          await session(input, s, o, stats);
        }
      } finally {
        await s.close();
      }
    }
  };
  await Promise.all(Array.from({ length: o.workers }, (_, i) => worker(i)));
  return stats;
}

/** Starts a transfer and then does anything in it, as a client that is wrong in every way might. */
async function session(input: FuzzInput, s: FuzzSocket, o: FuzzOptions, stats: FuzzStats): Promise<void> {
  stats.sessions++;
  const request = input.request(input.chance(0.8) ? OP.RRQ : OP.WRQ, true);
  s.send(request, o.port, o.host);
  await s.answer(100);
  const tid = s.latest && s.latest.port !== o.port ? s.latest.port : undefined;
  if (tid === undefined) return;
  stats.transfers++;
  const blksize = 512;
  const stranger = input.chance(0.3) ? new FuzzSocket(stats) : undefined;
  if (stranger) await stranger.bind(input.pick(o.addresses));
  try {
    for (let step = input.int(40); step > 0; step--) {
      const at = s.latest;
      // Mostly follow the transfer (ACK what came, so it moves), else do something odd in it.
      const block = at?.op === OP.DATA ? at.block : at?.op === OP.ACK ? (at.block + 1) & 0xffff : 0;
      const packet =
        input.chance(0.5) && at?.op === OP.DATA
          ? input.ack(block)
          : input.chance(0.5) && at?.op === OP.ACK
            ? input.data(block, input.chance(0.7) ? blksize : input.int(blksize))
            : input.inTransfer(block, blksize);
      if (stranger && input.chance(0.2)) stranger.send(packet, tid, o.host);
      else if (input.chance(0.05))
        s.send(request, o.port, o.host); // the request again
      else s.send(packet, tid, o.host);
      await s.answer(input.chance(0.9) ? 2 : 30);
    }
    // End it cleanly, with an error, or not at all (the server times it out).
    if (input.chance(0.3)) s.send(input.error(), tid, o.host);
  } finally {
    await stranger?.close();
  }
}
