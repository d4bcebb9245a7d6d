/** Shared pieces of the TFTP tests: a raw UDP peer that records what it receives, temp dirs, hashes. */
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodePacket, type Packet } from '../../runner-agent/src/tftp/packets.js';

export interface Received {
  packet: Packet;
  port: number;
}

/** A hand-driven TFTP peer: tests send exact packets and read exactly what comes back, in order. */
export class RawPeer {
  private readonly socket = dgram.createSocket('udp4');
  private readonly queue: Received[] = [];
  private waiter?: () => void;

  /** `address`: any of 127/8 (Linux routes it all to loopback), so tests can play several clients. */
  static async open(address = '127.0.0.1'): Promise<RawPeer> {
    const peer = new RawPeer();
    await new Promise<void>((resolve) => peer.socket.bind(0, address, () => resolve()));
    peer.socket.on('message', (msg, rinfo) => {
      peer.queue.push({ packet: decodePacket(msg), port: rinfo.port });
      peer.waiter?.();
    });
    return peer;
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(packet: Buffer, port: number): void {
    this.socket.send(packet, port, '127.0.0.1');
  }

  /** The next packet; fails the test if none comes within `ms` (a hang guard, not a timing assertion). */
  async next(ms = 5000): Promise<Received> {
    const deadline = Date.now() + ms;
    while (this.queue.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no packet within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    return this.queue.shift()!;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

export async function makeTempDir(prefix = 'tftp-test-'): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Deterministic bytes that differ at every block, so a misplaced block cannot go unnoticed. */
export function patternedData(size: number, seed = 1): Buffer {
  const buf = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
  return buf;
}
