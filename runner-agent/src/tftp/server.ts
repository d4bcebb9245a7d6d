/**
 * The agent's TFTP server: RFC 1350 in octet mode with options (RFC 2347/2348/2349) and windows
 * (RFC 7440), serving virtual files that a resolver provides. Each transfer runs on its own UDP
 * socket (its own TID), reads its file ahead in large chunks and sends whole windows at once.
 */
import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Logger } from '../log.js';
import { ReadAheadBlockSource } from './block-source.js';
import { TftpAccessError, TftpError } from './errors.js';
import { negotiateOptions, MAX_BLKSIZE, type Negotiated } from './options.js';
import {
  decodePacket,
  encodeAck,
  encodeError,
  encodeOack,
  Opcode,
  TftpErrorCode,
  type RequestPacket,
} from './packets.js';
import { normaliseRequestPath } from './request-path.js';
import { fastLookup } from './udp.js';
import { WindowReceiver } from './window-receiver.js';
import { WindowSender } from './window-sender.js';

export { TftpAccessError, TftpError } from './errors.js';
export { realFileResolver } from './real-file-resolver.js';

export interface TftpFile {
  readonly size: number;
  /** How the server's log names the transfer, when the path holds what must not be written down. */
  readonly logPath?: string;
  read(position: number, length: number): Promise<Buffer>;
  close?(): Promise<void>;
}
export interface TftpPeer {
  address: string;
  port: number;
}
export interface TftpRequest {
  /** Normalised: relative, no `..`, single `/` separators. */
  path: string;
  peer: TftpPeer;
  /** As the client sent them, names lower-cased. */
  options: Record<string, string>;
}
export interface TftpWriteTarget {
  maxSize: number;
  /** Gets the whole upload once it is complete (uploads are small: reports, seed `OK` files). */
  receive(data: Buffer): Promise<void>;
}
export interface TftpResolver {
  /** null → error 1 "File not found"; throw TftpAccessError → error 2 with its message. */
  resolveRead(req: TftpRequest): Promise<TftpFile | null>;
  /** Absent or null → error 2 (writes refused). Uploads are buffered whole; over maxSize → error 3. */
  resolveWrite?(req: TftpRequest): Promise<TftpWriteTarget | null>;
}
export interface TransferEnd {
  kind: 'read' | 'write';
  path: string;
  /** The name the log gives the transfer (TftpFile.logPath), when not the path. */
  logPath?: string;
  peer: TftpPeer;
  /** Bytes acknowledged by the client (read) or received (write). */
  bytes: number;
  /** The file size (read) or the announced tsize (write), when known. */
  size?: number;
  /** The options negotiated (what the OACK carried). */
  options: Record<string, string>;
  ms: number;
  ok: boolean;
  error?: string;
  /** Read transfers: how many times the server timed out waiting for an ACK and resent. */
  timeouts?: number;
}
export interface TftpProgress {
  path: string;
  peer: TftpPeer;
  /** Bytes the client acknowledged: what it demonstrably holds. */
  sent: number;
  size: number;
  /** Bytes of one window (blksize × windowsize negotiated): what may be in flight unacknowledged. */
  windowBytes: number;
}
export interface TftpServerOptions {
  /** Default '0.0.0.0'. */
  address?: string;
  /** Default 69; 0 = ephemeral. */
  port?: number;
  resolver: TftpResolver;
  log?: Logger;
  /** Retransmission timeout unless the client asks for one with the `timeout` option. Default 1000. */
  timeoutMs?: number;
  /** Retransmissions in a row before a transfer is given up. Default 5. */
  retries?: number;
  /** Default 65464 (the RFC 2348 maximum). */
  maxBlksize?: number;
  /** Default 64. */
  maxWindowsize?: number;
  /** Progress of reads: at most every 1 MiB or 250 ms, and once at the end. */
  onProgress?(p: TftpProgress): void;
  onTransferEnd?(t: TransferEnd): void;
  /**
   * TEST ONLY: fault injection for tests of the flashing path. `corrupt` may return a replacement
   * payload for a DATA block (block numbers are 1-based and not wrapped); `drop` may suppress a
   * DATA packet (the sender then recovers by its normal timeout/restart logic).
   */
  faults?: {
    corrupt?(path: string, block: number, data: Buffer): Buffer | undefined;
    drop?(path: string, block: number): boolean;
  };
}

const PROGRESS_BYTES = 1024 * 1024;
const PROGRESS_MS = 250;

/** A transfer in flight, as the server tracks it (for duplicate requests and close()). */
interface ActiveTransfer {
  key: string;
  abort(reason: Error): void;
  finished: Promise<void>;
}

export class TftpServer {
  private socket?: dgram.Socket;
  private readonly transfers = new Map<string, ActiveTransfer>();
  private closing = false;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly limits: { maxBlksize: number; maxWindowsize: number };

  constructor(private readonly o: TftpServerOptions) {
    this.timeoutMs = o.timeoutMs ?? 1000;
    this.retries = o.retries ?? 5;
    this.limits = {
      maxBlksize: Math.min(o.maxBlksize ?? MAX_BLKSIZE, MAX_BLKSIZE),
      maxWindowsize: o.maxWindowsize ?? 64,
    };
  }

  async listen(): Promise<{ address: string; port: number }> {
    if (this.socket) throw new Error('TFTP server is already listening');
    const address = this.o.address ?? '0.0.0.0';
    const socket = await bindSocket(address, this.o.port ?? 69);
    this.socket = socket;
    socket.on('message', (msg, rinfo) => this.onRequest(msg, { address: rinfo.address, port: rinfo.port }));
    socket.on('error', (err) => this.o.log?.error('TFTP listening socket failed', { error: err.message }));
    const bound = socket.address();
    this.o.log?.info('TFTP server listening', { address: bound.address, port: bound.port });
    return { address: bound.address, port: bound.port };
  }

  /** Stops listening and ends every transfer in flight (each is reported as failed). */
  async close(): Promise<void> {
    this.closing = true;
    const socket = this.socket;
    this.socket = undefined;
    const running = [...this.transfers.values()];
    for (const t of running) t.abort(new TftpError('server closing', TftpErrorCode.NOT_DEFINED));
    await Promise.all(running.map((t) => t.finished));
    if (socket) await new Promise<void>((resolve) => socket.close(() => resolve()));
  }

  private onRequest(msg: Buffer, peer: TftpPeer): void {
    if (this.closing) return;
    let request: RequestPacket;
    try {
      const packet = decodePacket(msg);
      if (packet.op !== Opcode.RRQ && packet.op !== Opcode.WRQ) {
        this.socket?.send(
          encodeError(TftpErrorCode.ILLEGAL_OPERATION, 'expected a read or write request'),
          peer.port,
          peer.address,
        );
        return;
      }
      request = packet;
    } catch (err) {
      this.socket?.send(
        encodeError(TftpErrorCode.ILLEGAL_OPERATION, `malformed request: ${(err as Error).message}`),
        peer.port,
        peer.address,
      );
      return;
    }
    // A client that resends its request (our first answer was lost or slow) must not get a second transfer.
    const key = `${peer.address}:${peer.port}`;
    if (this.transfers.has(key)) return;
    let abort: (reason: Error) => void = () => {};
    const entry: ActiveTransfer = {
      key,
      abort: (reason) => abort(reason),
      finished: Promise.resolve(),
    };
    entry.finished = this.serve(request, peer, (fn) => (abort = fn))
      .catch((err: unknown) =>
        this.o.log?.error('TFTP transfer crashed', { error: (err as Error).message ?? String(err) }),
      )
      .finally(() => this.transfers.delete(key));
    this.transfers.set(key, entry);
  }

  /** One whole transfer, from the request to the report. Never throws. */
  private async serve(
    request: RequestPacket,
    peer: TftpPeer,
    setAbort: (fn: (reason: Error) => void) => void,
  ): Promise<void> {
    const started = performance.now();
    const kind = request.op === Opcode.RRQ ? 'read' : 'write';
    const log = this.o.log?.child({ peer: `${peer.address}:${peer.port}`, kind });
    const end: TransferEnd = { kind, path: request.path, peer, bytes: 0, options: {}, ms: 0, ok: false };
    let link: PeerLink | undefined;
    let aborted: Error | undefined;
    let stopActive: (reason: Error) => void = () => {};
    setAbort((reason) => {
      aborted ??= reason;
      stopActive(reason);
    });
    const sendError = (code: number, message: string) => {
      end.error = message;
      link?.send(encodeError(code, message));
    };
    try {
      link = await PeerLink.open(this.socket?.address().address ?? '0.0.0.0', peer);
      if (aborted) throw aborted;
      if (request.mode !== 'octet') {
        sendError(
          TftpErrorCode.ILLEGAL_OPERATION,
          `transfer mode "${request.mode}" is not supported; use octet (binary)`,
        );
        return;
      }
      let path: string;
      try {
        path = normaliseRequestPath(request.path);
      } catch (err) {
        sendError(TftpErrorCode.ACCESS_VIOLATION, (err as Error).message);
        return;
      }
      end.path = path;
      const req: TftpRequest = { path, peer, options: request.options };
      const { drop } = this.o.faults ?? {};
      if (drop) link.drop = (block) => drop(path, block);
      const active = link;
      stopActive = (reason) => active.stop(reason);
      if (kind === 'read') await this.serveRead(req, active, end, () => aborted, sendError);
      else await this.serveWrite(req, active, end, () => aborted, sendError);
    } catch (err) {
      const message = (err as Error).message ?? String(err);
      end.error ??= message;
      // A TFTP error from the peer needs no answer; anything else is reported to it.
      if (!(err instanceof PeerError)) link?.send(encodeError(err instanceof TftpError ? err.code : 0, message));
    } finally {
      end.ms = performance.now() - started;
      await link?.close();
      if (end.ok)
        log?.info('TFTP transfer done', {
          path: end.logPath ?? end.path,
          bytes: end.bytes,
          ms: Math.round(end.ms),
          timeouts: end.timeouts,
        });
      else log?.warn('TFTP transfer failed', { path: end.logPath ?? end.path, bytes: end.bytes, error: end.error });
      try {
        this.o.onTransferEnd?.(end);
      } catch (err) {
        log?.error('onTransferEnd handler threw', { error: (err as Error).message });
      }
    }
  }

  private async serveRead(
    req: TftpRequest,
    link: PeerLink,
    end: TransferEnd,
    aborted: () => Error | undefined,
    sendError: (code: number, message: string) => void,
  ): Promise<void> {
    let file: TftpFile | null;
    try {
      file = await this.o.resolver.resolveRead(req);
    } catch (err) {
      if (err instanceof TftpAccessError) return sendError(TftpErrorCode.ACCESS_VIOLATION, err.message);
      throw err;
    }
    if (!file) return sendError(TftpErrorCode.FILE_NOT_FOUND, 'File not found');
    if (file.logPath) end.logPath = file.logPath;
    try {
      if (aborted()) throw aborted();
      end.size = file.size;
      const n = negotiateOptions('read', req.options, this.limits, file.size);
      end.options = n.accepted;
      const oack = Object.keys(n.accepted).length > 0 ? encodeOack(n.accepted) : undefined;
      let lastReport = { bytes: 0, at: performance.now() };
      const { onProgress } = this.o;
      const corrupt = this.o.faults?.corrupt;
      const sender = new WindowSender({
        source: new ReadAheadBlockSource(file, n.blksize, Math.max(4 * 1024 * 1024, 2 * n.blksize * n.windowsize)),
        link: {
          sendData: (block, packet) => link.sendData(block, packet),
          resendOpening: () => oack && link.send(oack),
        },
        windowsize: n.windowsize,
        timeoutMs: n.timeoutMs ?? this.timeoutMs,
        retries: this.retries,
        awaitAck0: oack !== undefined,
        onAcked: (bytes) => {
          end.bytes = bytes;
          if (!onProgress) return;
          const now = performance.now();
          // Every ACK of the last window is reported: whoever judges a transfer by its ACKs must
          // see the last one that came (the final ACK itself may be lost on the way).
          const windowBytes = n.blksize * n.windowsize;
          const lastWindow = bytes >= file.size - windowBytes;
          if (bytes - lastReport.bytes >= PROGRESS_BYTES || now - lastReport.at >= PROGRESS_MS || lastWindow) {
            lastReport = { bytes, at: now };
            onProgress({ path: req.path, peer: req.peer, sent: bytes, size: file.size, windowBytes });
          }
        },
        corrupt: corrupt && ((block, data) => corrupt(req.path, block, data)),
      });
      link.onAck = (block) => sender.onAck(block);
      link.stop = (reason) => sender.abort(reason);
      if (oack) link.send(oack);
      sender.start();
      try {
        await sender.done;
      } finally {
        end.timeouts = sender.timeouts;
      }
      end.ok = true;
    } finally {
      await file.close?.();
    }
  }

  private async serveWrite(
    req: TftpRequest,
    link: PeerLink,
    end: TransferEnd,
    aborted: () => Error | undefined,
    sendError: (code: number, message: string) => void,
  ): Promise<void> {
    let target: TftpWriteTarget | null | undefined;
    try {
      target = await this.o.resolver.resolveWrite?.(req);
    } catch (err) {
      if (err instanceof TftpAccessError) return sendError(TftpErrorCode.ACCESS_VIOLATION, err.message);
      throw err;
    }
    if (!target) return sendError(TftpErrorCode.ACCESS_VIOLATION, 'writes are not allowed here');
    if (aborted()) throw aborted();
    const n: Negotiated = negotiateOptions('write', req.options, this.limits);
    end.options = n.accepted;
    end.size = n.uploadSize;
    if (n.uploadSize !== undefined && n.uploadSize > target.maxSize) {
      return sendError(
        TftpErrorCode.DISK_FULL,
        `upload of ${n.uploadSize} bytes is larger than the ${target.maxSize} allowed`,
      );
    }
    const oack = Object.keys(n.accepted).length > 0 ? encodeOack(n.accepted) : undefined;
    const chunks: Buffer[] = [];
    const receiver = new WindowReceiver({
      // ACK 0 from a timeout means "we are still waiting for block 1": re-send the OACK if there was one.
      link: {
        sendAck: (block) => (block === 0 && oack && !receiver.finished ? link.send(oack) : link.send(encodeAck(block))),
      },
      blksize: n.blksize,
      windowsize: n.windowsize,
      timeoutMs: n.timeoutMs ?? this.timeoutMs,
      retries: this.retries,
      maxSize: target.maxSize,
      onData: (chunk) => {
        chunks.push(Buffer.from(chunk)); // the datagram buffer is ours, but copy: uploads are small
        end.bytes += chunk.length;
      },
    });
    link.onData = (block, data) => receiver.onData(block, data);
    link.stop = (reason) => receiver.fail(reason);
    link.send(oack ?? encodeAck(0));
    receiver.start();
    await receiver.done;
    await target.receive(Buffer.concat(chunks));
    end.ok = true;
    // Dally: if our last ACK is lost the client resends its last block; answer it for a while.
    await link.dally(2 * (n.timeoutMs ?? this.timeoutMs));
  }
}

/** A peer error packet ended the transfer: nothing to send back. */
class PeerError extends TftpError {
  override name = 'PeerError';
}

/**
 * The transfer's view of one peer, on its own port (TID). Two sockets share that port: one
 * connected to the peer, which carries the transfer (a connected UDP socket skips the per-packet
 * route lookup and address handling, measurably faster), and one unconnected, which the kernel
 * hands every packet from anyone else — answered with error 5 (RFC 1350: unknown transfer ID).
 */
class PeerLink {
  onAck: (block: number) => void = () => {};
  onData: (block: number, data: Buffer) => void = () => {};
  stop: (reason: Error) => void = () => {};
  /** TEST ONLY (faults.drop): true suppresses a DATA packet. */
  drop?: (block: number) => boolean;
  private dallyEnd?: () => void;

  private constructor(
    private readonly data: dgram.Socket,
    private readonly strays: dgram.Socket,
    private readonly peer: TftpPeer,
  ) {
    data.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    strays.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    const failed = (err: Error) =>
      this.stop(new TftpError(`transfer socket failed: ${err.message}`, TftpErrorCode.NOT_DEFINED));
    data.on('error', failed);
    strays.on('error', failed);
  }

  static async open(address: string, peer: TftpPeer): Promise<PeerLink> {
    const strays = await bindSocket(address, 0, true);
    let data: dgram.Socket | undefined;
    try {
      data = await bindSocket(address, strays.address().port, true);
      const connecting = data;
      await new Promise<void>((resolve, reject) => {
        connecting.once('error', reject);
        connecting.connect(peer.port, peer.address, () => {
          connecting.off('error', reject);
          resolve();
        });
      });
      return new PeerLink(data, strays, peer);
    } catch (err) {
      await closeSocket(strays);
      if (data) await closeSocket(data);
      throw err;
    }
  }

  send(packet: Buffer): void {
    this.data.send(packet);
  }

  sendData(block: number, packet: Buffer): void {
    if (this.drop?.(block)) return;
    this.data.send(packet);
  }

  /** Keeps answering duplicates for `ms` (or until stopped), then resolves. */
  dally(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => resolve(), ms);
      this.stop = () => {
        clearTimeout(timer);
        resolve();
      };
      this.dallyEnd = this.stop as () => void;
    });
  }

  async close(): Promise<void> {
    await Promise.all([closeSocket(this.data), closeSocket(this.strays)]);
  }

  private onMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (rinfo.port !== this.peer.port || rinfo.address !== this.peer.address) {
      this.strays.send(encodeError(TftpErrorCode.UNKNOWN_TID, 'Unknown transfer ID'), rinfo.port, rinfo.address);
      return;
    }
    if (msg.length < 4) return;
    const op = msg.readUInt16BE(0);
    if (op === Opcode.ACK) {
      this.onAck(msg.readUInt16BE(2));
    } else if (op === Opcode.DATA) {
      this.onData(msg.readUInt16BE(2), msg.subarray(4));
    } else if (op === Opcode.ERROR) {
      const packet = decodePacket(msg);
      const text =
        packet.op === Opcode.ERROR ? `client sent error ${packet.code}: ${packet.message}` : 'client sent an error';
      this.stop(new PeerError(text, packet.op === Opcode.ERROR ? packet.code : 0));
      this.dallyEnd?.();
    }
  }
}

function bindSocket(address: string, port: number, reuseAddr = false): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket({ type: isIPv6(address) ? 'udp6' : 'udp4', lookup: fastLookup, reuseAddr });
    socket.once('error', reject);
    socket.bind(port, address, () => {
      socket.off('error', reject);
      resolve(socket);
    });
  });
}

function closeSocket(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      resolve(); // already closed
    }
  });
}
