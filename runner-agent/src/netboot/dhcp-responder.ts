/**
 * The agent's DHCP responder for network boot (DESIGN §8): it answers the boards in the targets
 * database and nobody else.
 *
 * - `proxy`: alongside the lab's own DHCP server, as a ProxyDHCP server does. Only the Pi firmware
 *   (the Pi 3 boot ROM, the Pi 4/5 EEPROM) of a board in the database gets an answer: a DISCOVER
 *   gets an OFFER with no address (yiaddr 0.0.0.0) that carries the boot options (option 60
 *   `PXEClient`, 43, 66 and `siaddr` naming the agent). The lab's server hands out the address.
 * - `full`: on an isolated lab network, the responder is the DHCP server. A board's DISCOVER gets
 *   its row's IP, its REQUEST an ACK (a NAK when it asks for another address); Pi firmware gets the
 *   boot options too, and U-Boot's `dhcp`, udhcpc or a kernel get a plain lease.
 *
 * A MAC the database does not hold is never answered, in either mode: the lab network has PCs
 * and other boards whose own boot must not be disturbed. Each unknown MAC is logged at most once
 * a minute. Every datagram is decoded by dhcp-packet.ts, which bounds every length; a bad one is
 * logged (rate-limited) and dropped, and nothing a peer sends can throw out of the handler.
 *
 * Replies go where RFC 2131 §4.1 says: to the relay (giaddr) when there is one, to ciaddr when the
 * client has an address, else broadcast. The RFC's other case, unicast to yiaddr before the
 * client has answered ARP, needs a raw socket to write the ARP entry; broadcast is what it allows
 * instead, and what every Pi firmware accepts.
 */
import dgram from 'node:dgram';
import type { Logger } from '../log.js';
import {
  BootOp,
  DhcpMessageType,
  DhcpOption,
  DhcpPacketError,
  clientMac,
  decodeDhcpPacket,
  encodeDhcpPacket,
  ipv4Bytes,
  messageTypeName,
  messageTypeOf,
  optionIpv4,
  uint32Option,
  type DhcpPacket,
} from './dhcp-packet.js';
import {
  classifyClient,
  describeClient,
  isPiFirmware,
  piFirmwareOptions,
  type DhcpClient,
  type DhcpClientKind,
} from './dhcp-clients.js';
import { isHostOf, type Ipv4Subnet } from './ipv4-subnet.js';

export type DhcpMode = 'proxy' | 'full';

/** What the responder knows of a board: its name and the address its row gives it. */
export interface DhcpBoard {
  name: string;
  ip: string;
  /**
   * The board has a network-boot job staged (its firmware folder is served). Its firmware is
   * answered only then: a board whose boot order tries the network first and finds no answer
   * goes on to its card after its DHCP timeout, instead of fetching from a folder that is empty.
   */
  firmwareJob: boolean;
}

/** The reply types the responder sends. */
export type DhcpReplyType = 'OFFER' | 'ACK' | 'NAK';

/** Told for each reply sent, so a job can see that its board asked (and what it was). */
export interface DhcpAnswer {
  board: string;
  kind: DhcpClientKind;
  message: DhcpReplyType;
  mac: string;
  /** The address given: the row's IP in `full` mode, 0.0.0.0 in `proxy` mode and for a NAK. */
  yiaddr: string;
  xid: number;
}

export type DhcpAnswerListener = (
  board: string,
  kind: DhcpClientKind,
  message: DhcpReplyType,
  answer: DhcpAnswer,
) => void;

export interface DhcpResponderOptions {
  mode: DhcpMode;
  /**
   * The address to bind, 0.0.0.0 unless given. Keep the wildcard on a lab server: a DISCOVER is
   * sent to 255.255.255.255, which Linux delivers only to sockets bound to the wildcard.
   */
  address?: string;
  /** The server port, 67 unless given (tests use others). */
  port?: number;
  /** The client port replies go to, 68 unless given (tests use others). */
  clientPort?: number;
  /** The agent's address as the boards see it: option 54, `siaddr`, and option 66 for the firmware. */
  serverIp: string;
  /** The targets database: a board by MAC (lower case, `:`), or undefined for a MAC it does not hold. */
  lookup: (mac: string) => DhcpBoard | undefined;
  /** `full` mode: the lab network; a row whose IP is not a host of it gets no lease. */
  subnet?: Ipv4Subnet;
  /** `full` mode: option 3, when the lab network has a router. */
  router?: string;
  /** `full` mode: option 51, seconds. */
  leaseSeconds?: number;
  /**
   * Where broadcast replies go, 255.255.255.255 unless given. Tests on the host's loopback use
   * 127.255.255.255, so nothing they send can leave the machine.
   */
  broadcastAddress?: string;
  log?: Logger;
  /** The clock of the once-a-minute log limits (tests). */
  now?: () => number;
}

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;
const DEFAULT_LEASE_SECONDS = 3600;
const LOG_WINDOW_MS = 60_000;
/** Keys the log limits remember; past it the oldest are forgotten (and may be logged again). */
const LOG_KEYS_MAX = 1024;
/** DISCOVERs remembered per MAC, so a REQUEST that lacks the firmware's options keeps its kind. */
const SEEN_MAX = 1024;

/** True once per key per window: bounded, the oldest key forgotten first. */
class OncePerWindow {
  private readonly last = new Map<string, number>();
  constructor(
    private readonly windowMs: number,
    private readonly now: () => number,
  ) {}

  allow(key: string): boolean {
    const t = this.now();
    const at = this.last.get(key);
    if (at !== undefined && t - at < this.windowMs) return false;
    this.last.delete(key);
    this.last.set(key, t);
    while (this.last.size > LOG_KEYS_MAX) this.last.delete(this.last.keys().next().value!);
    return true;
  }
}

const isWildcard = (address: string) => address === '0.0.0.0';

function bindUdp(address: string, port: number, reuseAddr: boolean): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr });
    socket.once('error', (err) => {
      socket.close();
      reject(err);
    });
    socket.bind(port, address, () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

function closeUdp(socket: dgram.Socket | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (!socket) return resolve();
    try {
      socket.close(() => resolve());
    } catch {
      resolve(); // already closed
    }
  });
}

/** What an operator can do about a port the responder cannot bind. */
function bindHint(err: NodeJS.ErrnoException, port: number): string {
  if (err.code === 'EACCES')
    return ` (port ${port} needs CAP_NET_BIND_SERVICE, as the TFTP port does; the packaged unit grants it)`;
  if (err.code === 'EADDRINUSE')
    return (
      ' (another DHCP server on this host holds it — dnsmasq, isc-dhcp-server, systemd-networkd: ' +
      'stop it, or set dhcp.mode to off and let it answer the boards as the README shows)'
    );
  if (err.code === 'EADDRNOTAVAIL') return ' (dhcp.address is not an address of this host)';
  return '';
}

export class DhcpResponder {
  private socket: dgram.Socket | undefined;
  /** Bound to serverIp, so broadcasts leave by the interface that holds it (see start()). */
  private replySocket: dgram.Socket | undefined;
  private readonly listeners = new Set<DhcpAnswerListener>();
  private readonly logLimit: OncePerWindow;
  private readonly seen = new Map<string, { xid: number; client: DhcpClient }>();
  private readonly log: Logger | undefined;

  constructor(private readonly o: DhcpResponderOptions) {
    if (!ipv4Bytes(o.serverIp)) throw new Error(`DHCP serverIp "${o.serverIp}" is not an IPv4 address`);
    if (o.mode === 'full' && !o.subnet) throw new Error('DHCP full mode needs a subnet');
    this.log = o.log;
    this.logLimit = new OncePerWindow(LOG_WINDOW_MS, o.now ?? Date.now);
  }

  get mode(): DhcpMode {
    return this.o.mode;
  }

  /**
   * Subscribe to the replies sent (one call per reply); returns the unsubscribe. A listener that
   * throws is logged and costs nothing else.
   */
  onAnswered(listener: DhcpAnswerListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Bind the server port. With the wildcard address, a second socket is bound to serverIp on the
   * same port and every reply is sent from it: Linux sends a 255.255.255.255 datagram out of the
   * interface that owns the socket's source address, so a lab server with two networks answers on
   * the boards' one, not on the default route's. A serverIp that is not this host's (behind NAT)
   * leaves the replies to the wildcard socket, with a warning.
   *
   * Throws an Error naming the address, the port and what to do when the port cannot be bound.
   */
  async start(): Promise<{ address: string; port: number }> {
    if (this.socket) throw new Error('DHCP responder is already started');
    const address = this.o.address ?? '0.0.0.0';
    const port = this.o.port ?? DHCP_SERVER_PORT;
    const wantReplySocket = isWildcard(address) && this.o.serverIp !== address;
    try {
      // Both sockets need SO_REUSEADDR to share the port, which would also let this one share it
      // with another server that set the flag (dnsmasq does): a plain bind first proves it is free.
      if (wantReplySocket && port !== 0) await closeUdp(await bindUdp(address, port, false));
      this.socket = await bindUdp(address, port, wantReplySocket);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new Error(`DHCP responder cannot bind ${address}:${port}: ${e.message}${bindHint(e, port)}`, {
        cause: err,
      });
    }
    const socket = this.socket;
    socket.setBroadcast(true);
    const bound = socket.address();
    socket.on('message', (msg, rinfo) => this.guard(() => this.onMessage(msg, rinfo)));
    socket.on('error', (err) => this.log?.error('DHCP socket failed', { error: err.message }));
    if (wantReplySocket) {
      try {
        const reply = await bindUdp(this.o.serverIp, bound.port, true);
        reply.setBroadcast(true);
        // A request sent to serverIp itself (a relay, a renewing client) arrives on this socket.
        reply.on('message', (msg, rinfo) => this.guard(() => this.onMessage(msg, rinfo)));
        reply.on('error', (err) => this.log?.error('DHCP reply socket failed', { error: err.message }));
        this.replySocket = reply;
      } catch (err) {
        this.log?.warn('DHCP replies go out by the default route: dhcp.serverIp is not bound here', {
          serverIp: this.o.serverIp,
          error: (err as Error).message,
        });
      }
    } else if (!isWildcard(address) && !address.startsWith('127.')) {
      this.log?.warn('dhcp.address is not 0.0.0.0: broadcast DISCOVERs do not reach a socket bound to one address', {
        address,
      });
    }
    this.log?.info('DHCP responder listening', {
      mode: this.o.mode,
      address: bound.address,
      port: bound.port,
      serverIp: this.o.serverIp,
      ...(this.o.subnet ? { subnet: this.o.subnet.cidr } : {}),
    });
    return { address: bound.address, port: bound.port };
  }

  async close(): Promise<void> {
    const sockets = [this.socket, this.replySocket];
    this.socket = undefined;
    this.replySocket = undefined;
    this.listeners.clear();
    await Promise.all(sockets.map((s) => closeUdp(s)));
  }

  /** A last resort: a bug in a handler costs one datagram and a log line, never the process. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log?.error('DHCP request handler failed', {
        error: (err as Error)?.message ?? String(err),
        stack: (err as Error)?.stack,
      });
    }
  }

  private onMessage(msg: Buffer, from: dgram.RemoteInfo): void {
    let request: DhcpPacket;
    try {
      request = decodeDhcpPacket(msg);
    } catch (err) {
      if (!(err instanceof DhcpPacketError)) throw err;
      if (this.logLimit.allow(`bad:${from.address}`))
        this.log?.info('DHCP: dropped a malformed datagram (said once a minute per sender)', {
          from: from.address,
          bytes: msg.length,
          error: err.message,
        });
      return;
    }
    // Replies of other servers, and requests we do not serve (RELEASE, DECLINE, INFORM).
    if (request.op !== BootOp.REQUEST) return;
    const type = messageTypeOf(request);
    if (type !== DhcpMessageType.DISCOVER && type !== DhcpMessageType.REQUEST) return;
    const mac = clientMac(request);
    if (!mac) return;
    const board = this.o.lookup(mac);
    let client = classifyClient(request);
    if (!board) {
      this.unknown(mac, type, client);
      return;
    }
    if (type === DhcpMessageType.DISCOVER) this.remember(mac, request.xid, client);
    else client = this.recall(mac, request.xid, client);
    if (isPiFirmware(client.kind) && !board.firmwareJob) {
      this.noJob(board, mac, type, client);
      return;
    }

    const reply =
      this.o.mode === 'proxy' ? this.proxyReply(request, type, client) : this.fullReply(request, type, client, board);
    if (!reply) return;
    this.send(request, reply.packet, reply.message);
    const answer: DhcpAnswer = {
      board: board.name,
      kind: client.kind,
      message: reply.message,
      mac,
      yiaddr: reply.packet.yiaddr,
      xid: request.xid,
    };
    this.log?.info(`DHCP ${reply.message} to ${describeClient(client)}`, {
      target: board.name,
      mac,
      ...(reply.packet.yiaddr !== '0.0.0.0' ? { ip: reply.packet.yiaddr } : {}),
      xid: request.xid.toString(16).padStart(8, '0'),
    });
    for (const listener of this.listeners) {
      try {
        listener(board.name, client.kind, reply.message, answer);
      } catch (err) {
        this.log?.error('DHCP answer listener failed', { error: (err as Error)?.message ?? String(err) });
      }
    }
  }

  /**
   * Firmware of a board whose MAC the database lacks is worth an operator's attention (a board
   * added to the lab but not to the file); a PC's or a phone's request is not.
   */
  private unknown(mac: string, type: number, client: DhcpClient): void {
    if (!this.logLimit.allow(`mac:${mac}`)) return;
    const fields = { mac, message: messageTypeName(type), client: describeClient(client) };
    const why = 'DHCP: not answering a MAC the targets database does not hold (said once a minute per MAC)';
    if (isPiFirmware(client.kind)) this.log?.info(why, fields);
    else this.log?.debug(why, fields);
  }

  private noJob(board: DhcpBoard, mac: string, type: number, client: DhcpClient): void {
    if (!this.logLimit.allow(`no-job:${mac}`)) return;
    this.log?.debug('DHCP: not answering the firmware of a board with no network-boot job (said once a minute)', {
      target: board.name,
      mac,
      message: messageTypeName(type),
      client: describeClient(client),
    });
  }

  private remember(mac: string, xid: number, client: DhcpClient): void {
    this.seen.delete(mac);
    this.seen.set(mac, { xid, client });
    while (this.seen.size > SEEN_MAX) this.seen.delete(this.seen.keys().next().value!);
  }

  /** The Pi 4 EEPROM's REQUEST lacks option 60; the DISCOVER of the same transaction said what it is. */
  private recall(mac: string, xid: number, client: DhcpClient): DhcpClient {
    const earlier = this.seen.get(mac);
    return client.kind === 'generic' && earlier?.xid === xid ? earlier.client : client;
  }

  private proxyReply(
    request: DhcpPacket,
    type: number,
    client: DhcpClient,
  ): { packet: DhcpPacket; message: DhcpReplyType } | undefined {
    // The lab's server owns the lease: only a firmware DISCOVER is ours to answer.
    if (type !== DhcpMessageType.DISCOVER || !isPiFirmware(client.kind)) return undefined;
    return {
      message: 'OFFER',
      packet: this.reply(request, DhcpMessageType.OFFER, '0.0.0.0', piFirmwareOptions(request, this.o.serverIp)),
    };
  }

  private fullReply(
    request: DhcpPacket,
    type: number,
    client: DhcpClient,
    board: DhcpBoard,
  ): { packet: DhcpPacket; message: DhcpReplyType } | undefined {
    if (!isHostOf(this.o.subnet!, board.ip)) {
      if (this.logLimit.allow(`subnet:${board.name}`))
        this.log?.warn('DHCP: not answering a board whose IP is outside dhcp.subnet', {
          target: board.name,
          ip: board.ip,
          subnet: this.o.subnet!.cidr,
        });
      return undefined;
    }
    if (type === DhcpMessageType.REQUEST) {
      const serverId = optionIpv4(request, DhcpOption.SERVER_ID);
      // The client took another server's offer (RFC 2131 §4.3.2): not ours to answer.
      if (serverId !== undefined && serverId !== this.o.serverIp) return undefined;
      const asked =
        optionIpv4(request, DhcpOption.REQUESTED_IP) ?? (request.ciaddr !== '0.0.0.0' ? request.ciaddr : undefined);
      if (asked !== board.ip) {
        this.log?.info('DHCP: refusing an address the board does not own (NAK)', {
          target: board.name,
          asked: asked ?? 'none',
          ip: board.ip,
        });
        return { message: 'NAK', packet: this.reply(request, DhcpMessageType.NAK, '0.0.0.0', []) };
      }
    }
    const lease: [number, Buffer][] = [
      [DhcpOption.LEASE_TIME, uint32Option(this.o.leaseSeconds ?? DEFAULT_LEASE_SECONDS)],
      [DhcpOption.SUBNET_MASK, ipv4Bytes(this.o.subnet!.mask)!],
      ...(this.o.router ? ([[DhcpOption.ROUTER, ipv4Bytes(this.o.router)!]] as [number, Buffer][]) : []),
      ...(isPiFirmware(client.kind) ? piFirmwareOptions(request, this.o.serverIp) : []),
    ];
    const message = type === DhcpMessageType.DISCOVER ? 'OFFER' : 'ACK';
    const packet = this.reply(
      request,
      message === 'OFFER' ? DhcpMessageType.OFFER : DhcpMessageType.ACK,
      board.ip,
      lease,
    );
    return { message, packet };
  }

  /** A reply to `request` (RFC 2131 table 3): option 53 first, as some clients expect, then 54, then `extra`. */
  private reply(request: DhcpPacket, type: DhcpMessageType, yiaddr: string, extra: [number, Buffer][]): DhcpPacket {
    const nak = type === DhcpMessageType.NAK;
    return {
      op: BootOp.REPLY,
      htype: request.htype,
      hlen: request.hlen,
      hops: 0,
      xid: request.xid,
      secs: 0,
      flags: request.flags,
      ciaddr: type === DhcpMessageType.ACK ? request.ciaddr : '0.0.0.0',
      yiaddr,
      siaddr: nak ? '0.0.0.0' : this.o.serverIp,
      giaddr: request.giaddr,
      chaddr: request.chaddr,
      sname: '',
      file: '',
      options: new Map<number, Buffer>([
        [DhcpOption.MESSAGE_TYPE, Buffer.from([type])],
        [DhcpOption.SERVER_ID, ipv4Bytes(this.o.serverIp)!],
        ...extra,
      ]),
    };
  }

  /** RFC 2131 §4.1: relay, then the client's own address, then broadcast. */
  private send(request: DhcpPacket, reply: DhcpPacket, message: DhcpReplyType): void {
    const broadcast = this.o.broadcastAddress ?? '255.255.255.255';
    const clientPort = this.o.clientPort ?? DHCP_CLIENT_PORT;
    let to: { address: string; port: number };
    if (request.giaddr !== '0.0.0.0') to = { address: request.giaddr, port: this.o.port || DHCP_SERVER_PORT };
    else if (message !== 'NAK' && request.ciaddr !== '0.0.0.0') to = { address: request.ciaddr, port: clientPort };
    else to = { address: broadcast, port: clientPort };
    const socket = this.replySocket ?? this.socket;
    if (!socket) return;
    socket.send(encodeDhcpPacket(reply), to.port, to.address, (err) => {
      if (err) this.log?.warn('DHCP reply not sent', { to: to.address, port: to.port, error: err.message });
    });
  }
}
