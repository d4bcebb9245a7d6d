/**
 * A UDP relay on loopback that drops, duplicates and reorders datagrams in both directions, with a
 * seeded PRNG so a failing run can be replayed. It understands TFTP's TID switch: the server answers
 * each transfer from a new port, so for every (client, server port) pair the relay opens a matching
 * client-facing socket — the client sees a server that also changes port, as it should.
 */
import dgram from 'node:dgram';

export interface LossyUdpRelayOptions {
  /** Where requests go (the TFTP server's listening port). */
  target: { address: string; port: number };
  seed?: number;
  /** Probabilities per datagram, 0..1. */
  drop?: number;
  duplicate?: number;
  /** A reordered datagram is held back 1–4 ms, letting later ones overtake it. */
  reorder?: number;
  /** Datagrams that must never be harmed, e.g. the first request while testing data loss only. */
  spare?(packet: Buffer, direction: 'toServer' | 'toClient'): boolean;
}

export interface RelayStats {
  forwarded: number;
  dropped: number;
  duplicated: number;
  reordered: number;
}

/** mulberry32: tiny, fast, good enough to decide a packet's fate. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Session {
  client: { address: string; port: number };
  /** Talks to the server on the client's behalf. */
  upstream: dgram.Socket;
  /** Client-facing socket per server TID (port). */
  facing: Map<number, dgram.Socket>;
}

export class LossyUdpRelay {
  readonly stats: RelayStats = { forwarded: 0, dropped: 0, duplicated: 0, reordered: 0 };
  private readonly random: () => number;
  private requestSocket?: dgram.Socket;
  private readonly sessions = new Map<string, Session>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;

  constructor(private readonly o: LossyUdpRelayOptions) {
    this.random = seededRandom(o.seed ?? 1);
  }

  /** Binds the client-facing request port on 127.0.0.1. */
  async listen(): Promise<{ address: string; port: number }> {
    const socket = await bound();
    this.requestSocket = socket;
    socket.on('message', (msg, rinfo) => {
      const session = this.session(rinfo.address, rinfo.port);
      this.forward(msg, 'toServer', (m) => session.upstream.send(m, this.o.target.port, this.o.target.address));
    });
    return { address: '127.0.0.1', port: socket.address().port };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const sockets = [
      this.requestSocket,
      ...[...this.sessions.values()].flatMap((s) => [s.upstream, ...s.facing.values()]),
    ];
    this.sessions.clear();
    await Promise.all(
      sockets.filter((s) => s !== undefined).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))),
    );
  }

  private session(address: string, port: number): Session {
    const key = `${address}:${port}`;
    const session = this.sessions.get(key);
    if (session) return session;
    const upstream = dgram.createSocket('udp4');
    upstream.bind(0, '127.0.0.1');
    const created: Session = { client: { address, port }, upstream, facing: new Map() };
    upstream.on('message', (msg, rinfo) => {
      const facing = this.facingSocket(created, rinfo.port);
      this.forward(msg, 'toClient', (m) => facing.send(m, port, address));
    });
    this.sessions.set(key, created);
    return created;
  }

  private facingSocket(session: Session, serverPort: number): dgram.Socket {
    let socket = session.facing.get(serverPort);
    if (socket) return socket;
    socket = dgram.createSocket('udp4');
    socket.bind(0, '127.0.0.1');
    socket.on('message', (msg, rinfo) => {
      // Only the client of this session speaks here; anyone else's packet goes to the server as
      // theirs would (the server should answer it with "unknown TID"), which the relay cannot route back.
      if (rinfo.port !== session.client.port || rinfo.address !== session.client.address) return;
      this.forward(msg, 'toServer', (m) => session.upstream.send(m, serverPort, this.o.target.address));
    });
    session.facing.set(serverPort, socket);
    return socket;
  }

  private forward(msg: Buffer, direction: 'toServer' | 'toClient', send: (m: Buffer) => void): void {
    if (this.closed) return;
    const deliver = (m: Buffer) => {
      if (this.closed) return;
      this.stats.forwarded++;
      try {
        send(m);
      } catch {
        // a socket closed under us while closing: nothing to deliver to
      }
    };
    if (this.o.spare?.(msg, direction)) return deliver(msg);
    const r = this.random();
    const drop = this.o.drop ?? 0;
    const duplicate = this.o.duplicate ?? 0;
    const reorder = this.o.reorder ?? 0;
    if (r < drop) {
      this.stats.dropped++;
      return;
    }
    if (r < drop + duplicate) {
      this.stats.duplicated++;
      deliver(msg);
      deliver(msg);
      return;
    }
    if (r < drop + duplicate + reorder) {
      this.stats.reordered++;
      const timer = setTimeout(
        () => {
          this.timers.delete(timer);
          deliver(msg);
        },
        1 + Math.floor(this.random() * 4),
      );
      this.timers.add(timer);
      return;
    }
    deliver(msg);
  }
}

function bound(): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      socket.off('error', reject);
      resolve(socket);
    });
  });
}
