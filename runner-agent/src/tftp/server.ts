/**
 * The agent's TFTP server: RFC 1350 in octet mode with options (RFC 2347/2348/2349) and windows
 * (RFC 7440), serving virtual files that a resolver provides. Each transfer runs on its own UDP
 * socket (its own TID), reads its file ahead in chunks and sends whole windows at once.
 *
 * Anyone who can reach the port may send anything: every packet handler catches its own failures
 * and ends (or ignores) that peer's transfer only; transfers are capped per client address and in
 * all (admission.ts); a transfer holds one window until its client acknowledges a block and two
 * chunks after; a client's `timeout` is accepted up to `maxTimeout`; client text is clipped in logs.
 */
import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Logger } from '../log.js';
import { Admission, type Slot } from './admission.js';
import { ReadAheadBlockSource } from './block-source.js';
import { TftpAccessError, TftpError } from './errors.js';
import { clientText } from './log-text.js';
import { boundedOptions, negotiateOptions, MAX_BLKSIZE, type Negotiated, type OptionLimits } from './options.js';
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
  /** As the client sent them, names lower-cased; at most 16, each name and value ≤ 64 characters. */
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
  /** Largest window (blksize × windowsize) negotiated: windowsize is lowered to fit. Default 1 MiB. */
  maxWindowBytes?: number;
  /**
   * Largest `timeout` option (seconds) accepted; a larger one is ignored. A silent transfer lasts
   * at most (retries + 1) × this. Default 10.
   */
  maxTimeout?: number;
  /** Transfers at once from one client address. Default 8. */
  maxTransfersPerClient?: number;
  /** Transfers at once in all. Default 256. */
  maxTransfers?: number;
  /** Progress of reads: at most every 1 MiB or 250 ms, and once at the end. */
  onProgress?(p: TftpProgress): void;
  onTransferEnd?(t: TransferEnd): void;
  /**
   * A transfer the client ended on purpose (the Pi boot ROM's one-block `start.elf` probe): logged
   * as info, not as a failure. Default: none is.
   */
  expectedEnd?(t: TransferEnd): boolean;
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
/**
 * What a transfer reads at once once its client acknowledged a block (or one window, if larger);
 * it holds at most two such chunks. Large enough that the disk is read a few hundred times per
 * second at full speed, small enough that hundreds of transfers fit in a few hundred MB.
 */
const READ_CHUNK_BYTES = 256 * 1024;
/** Error messages we send are clipped to this: a datagram for a human, not a copy of the request. */
const ERROR_TEXT_MAX = 200;
/** Refusals are logged at most once per this many ms (with a count): a flood must not flood the log. */
const REFUSAL_LOG_MS = 5000;

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
  private readonly limits: OptionLimits;
  private readonly admission: Admission;
  private refusals = { count: 0, last: '', timer: undefined as NodeJS.Timeout | undefined };

  constructor(private readonly o: TftpServerOptions) {
    this.timeoutMs = o.timeoutMs ?? 1000;
    this.retries = o.retries ?? 5;
    this.limits = {
      maxBlksize: Math.min(o.maxBlksize ?? MAX_BLKSIZE, MAX_BLKSIZE),
      maxWindowsize: o.maxWindowsize ?? 64,
      maxWindowBytes: o.maxWindowBytes ?? 1024 * 1024,
      maxTimeout: o.maxTimeout ?? 10,
    };
    this.admission = new Admission({
      maxTransfers: o.maxTransfers ?? 256,
      maxPerClient: o.maxTransfersPerClient ?? 8,
    });
  }

  /** Transfers in flight that hold a slot (for tests and benches). */
  get activeTransfers(): number {
    return this.admission.size;
  }

  async listen(): Promise<{ address: string; port: number }> {
    if (this.socket) throw new Error('TFTP server is already listening');
    const address = this.o.address ?? '0.0.0.0';
    const socket = await bindSocket(address, this.o.port ?? 69);
    this.socket = socket;
    socket.on('message', (msg, rinfo) =>
      this.guard('TFTP request handler failed', () =>
        this.onRequest(msg, { address: rinfo.address, port: rinfo.port }),
      ),
    );
    socket.on('error', (err) => this.o.log?.error('TFTP listening socket failed', { error: err.message }));
    const bound = socket.address();
    this.o.log?.info('TFTP server listening', { address: bound.address, port: bound.port });
    return { address: bound.address, port: bound.port };
  }

  /** Stops listening and ends every transfer in flight (each is reported as failed). */
  /** The caller's word on a failed transfer: ended by the client on purpose (a hook that throws: no). */
  private expected(end: TransferEnd): boolean {
    try {
      return this.o.expectedEnd?.(end) === true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.refusals.timer);
    const socket = this.socket;
    this.socket = undefined;
    const running = [...this.transfers.values()];
    for (const t of running) t.abort(new TftpError('server closing', TftpErrorCode.NOT_DEFINED));
    await Promise.all(running.map((t) => t.finished));
    if (socket) await new Promise<void>((resolve) => socket.close(() => resolve()));
  }

  /** A last resort around each packet handler: a bug is logged with its stack and costs one packet. */
  private guard(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.o.log?.error(what, { error: (err as Error)?.message ?? String(err), stack: (err as Error)?.stack });
    }
  }

  /** An error packet from the listening socket: nothing is allocated for the peer. */
  private reply(peer: TftpPeer, code: number, message: string): void {
    try {
      this.socket?.send(errorPacket(code, message), peer.port, peer.address);
    } catch {
      // the socket is closing: the peer's retransmission gets no answer either
    }
  }

  private onRequest(msg: Buffer, peer: TftpPeer): void {
    if (this.closing) return;
    // An error is never answered (RFC 1350): two servers, or a server and a spoofed source, would
    // bounce errors at each other for ever.
    if (msg.length >= 2 && msg.readUInt16BE(0) === Opcode.ERROR) return;
    let request: RequestPacket;
    try {
      const packet = decodePacket(msg);
      if (packet.op !== Opcode.RRQ && packet.op !== Opcode.WRQ) {
        this.reply(peer, TftpErrorCode.ILLEGAL_OPERATION, 'expected a read or write request');
        return;
      }
      request = packet;
    } catch (err) {
      this.reply(peer, TftpErrorCode.ILLEGAL_OPERATION, `malformed request: ${(err as Error).message}`);
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
    const slot = this.admission.claim(peer.address, this.timeoutMs, () =>
      entry.abort(
        new TftpError('transfer dropped: the client is silent and the server is full', TftpErrorCode.NOT_DEFINED),
      ),
    );
    if (typeof slot === 'string') {
      this.refuse(peer, slot);
      return;
    }
    entry.finished = this.serve(request, peer, slot, (fn) => (abort = fn))
      .catch((err: unknown) =>
        this.o.log?.error('TFTP transfer crashed', {
          error: (err as Error)?.message ?? String(err),
          stack: (err as Error)?.stack,
        }),
      )
      .finally(() => {
        slot.release();
        this.transfers.delete(key);
      });
    this.transfers.set(key, entry);
  }

  /**
   * Over the limits: error 0, which U-Boot answers by starting again (it gives up only on errors
   * 1 and 2). Logged once per REFUSAL_LOG_MS with a count, not once per request.
   */
  private refuse(peer: TftpPeer, reason: string): void {
    this.reply(peer, TftpErrorCode.NOT_DEFINED, reason);
    const r = this.refusals;
    r.count++;
    r.last = reason;
    if (r.timer) return;
    const flush = () => {
      if (r.count === 0) {
        r.timer = undefined;
        return;
      }
      this.o.log?.warn('TFTP requests refused: too many transfers', { refused: r.count, last: r.last });
      r.count = 0;
      r.timer = setTimeout(flush, REFUSAL_LOG_MS);
      r.timer.unref();
    };
    flush();
  }

  /** One whole transfer, from the request to the report. Never throws. */
  private async serve(
    request: RequestPacket,
    peer: TftpPeer,
    slot: Slot,
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
    // Until the transfer has its own port (TID), errors go from the listening socket: a request
    // refused before (bad mode or name, no such file, not allowed, too large) costs no sockets.
    const answer = (code: number, message: string) => {
      if (link) link.send(errorPacket(code, message));
      else this.reply(peer, code, message);
    };
    const sendError = (code: number, message: string) => {
      end.error = message;
      answer(code, message);
    };
    // A function, not the variable: the eviction that sets it may come during any await.
    const abortedNow = (): Error | undefined => aborted;
    const openLink = async (path: string): Promise<PeerLink> => {
      const before = abortedNow();
      if (before) throw before;
      const opened = await PeerLink.open(this.socket?.address().address ?? '0.0.0.0', peer, {
        confirmed: () => slot.confirm(),
        ...(log ? { log } : {}),
      });
      link = opened;
      const during = abortedNow();
      if (during) throw during;
      const faults = this.o.faults;
      if (faults?.drop) opened.drop = (block) => faults.drop?.(path, block) ?? false;
      stopActive = (reason) => opened.stop(reason);
      return opened;
    };
    try {
      if (request.mode !== 'octet') {
        sendError(
          TftpErrorCode.ILLEGAL_OPERATION,
          `transfer mode "${clientText(request.mode, 40)}" is not supported; use octet (binary)`,
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
      const req: TftpRequest = { path, peer, options: boundedOptions(request.options) };
      const open = () => openLink(path);
      if (kind === 'read') await this.serveRead(req, open, slot, end, sendError);
      else await this.serveWrite(req, open, slot, end, sendError);
    } catch (err) {
      const message = (err as Error)?.message ?? String(err);
      // Bounded: a resolver's message may quote the client's file name.
      end.error ??= message.length > ERROR_TEXT_MAX ? `${message.slice(0, ERROR_TEXT_MAX)}…` : message;
      // Not a TFTP failure but a resolver's or our own: worth its stack in the log.
      if (!(err instanceof TftpError))
        log?.error('TFTP transfer failed unexpectedly', { error: message, stack: (err as Error)?.stack });
      // A TFTP error from the peer needs no answer; anything else is reported to it.
      if (!(err instanceof PeerError)) answer(err instanceof TftpError ? err.code : 0, message);
    } finally {
      end.ms = performance.now() - started;
      await link?.close();
      const path = end.logPath ?? clientText(end.path);
      if (end.ok)
        log?.info('TFTP transfer done', { path, bytes: end.bytes, ms: Math.round(end.ms), timeouts: end.timeouts });
      else if (this.expected(end))
        log?.info('TFTP transfer ended by the client, as expected', { path, bytes: end.bytes });
      else
        log?.warn('TFTP transfer failed', { path, bytes: end.bytes, error: end.error && clientText(end.error, 300) });
      try {
        this.o.onTransferEnd?.(end);
      } catch (err) {
        log?.error('onTransferEnd handler threw', { error: (err as Error)?.message, stack: (err as Error)?.stack });
      }
    }
  }

  /** `open` gives the transfer its port, once the request is known to be served. */
  private async serveRead(
    req: TftpRequest,
    open: () => Promise<PeerLink>,
    slot: Slot,
    end: TransferEnd,
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
      const link = await open();
      end.size = file.size;
      const n = negotiateOptions('read', req.options, this.limits, file.size);
      const windowBytes = n.blksize * n.windowsize;
      slot.stallAfter(n.timeoutMs ?? this.timeoutMs);
      end.options = n.accepted;
      const oack = Object.keys(n.accepted).length > 0 ? encodeOack(n.accepted) : undefined;
      let lastReport = { bytes: 0, at: performance.now() };
      const faults = this.o.faults;
      const sender = new WindowSender({
        source: new ReadAheadBlockSource(file, n.blksize, Math.max(READ_CHUNK_BYTES, windowBytes)),
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
          slot.progress();
          if (!this.o.onProgress) return;
          const now = performance.now();
          // Every ACK of the last window is reported: whoever judges a transfer by its ACKs must
          // see the last one that came (the final ACK itself may be lost on the way).
          const lastWindow = bytes >= file.size - windowBytes;
          if (bytes - lastReport.bytes >= PROGRESS_BYTES || now - lastReport.at >= PROGRESS_MS || lastWindow) {
            lastReport = { bytes, at: now };
            try {
              this.o.onProgress({ path: req.path, peer: req.peer, sent: bytes, size: file.size, windowBytes });
            } catch (err) {
              // The listener's bug: the transfer goes on, the agent too.
              this.o.log?.error('onProgress handler threw', {
                error: (err as Error)?.message,
                stack: (err as Error)?.stack,
              });
            }
          }
        },
        ...(faults?.corrupt ? { corrupt: (block, data) => faults.corrupt?.(req.path, block, data) } : {}),
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
      try {
        await file.close?.();
      } catch (err) {
        // The transfer's outcome stands; a handle that failed to close is the resolver's to report.
        this.o.log?.warn('TFTP file close failed', { path: clientText(req.path), error: (err as Error)?.message });
      }
    }
  }

  private async serveWrite(
    req: TftpRequest,
    open: () => Promise<PeerLink>,
    slot: Slot,
    end: TransferEnd,
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
    const n: Negotiated = negotiateOptions('write', req.options, this.limits);
    slot.stallAfter(n.timeoutMs ?? this.timeoutMs);
    end.options = n.accepted;
    end.size = n.uploadSize;
    if (n.uploadSize !== undefined && n.uploadSize > target.maxSize) {
      return sendError(
        TftpErrorCode.DISK_FULL,
        `upload of ${n.uploadSize} bytes is larger than the ${target.maxSize} allowed`,
      );
    }
    const link = await open();
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
        slot.progress();
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
    private readonly hooks: LinkHooks,
  ) {
    data.on('message', (msg, rinfo) => this.guarded(msg, rinfo));
    strays.on('message', (msg, rinfo) => this.guarded(msg, rinfo));
    const failed = (err: Error) =>
      this.stop(new TftpError(`transfer socket failed: ${err.message}`, TftpErrorCode.NOT_DEFINED));
    data.on('error', failed);
    strays.on('error', failed);
  }

  static async open(address: string, peer: TftpPeer, hooks: LinkHooks): Promise<PeerLink> {
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
      return new PeerLink(data, strays, peer, hooks);
    } catch (err) {
      await closeSocket(strays);
      if (data) await closeSocket(data);
      throw err;
    }
  }

  /** Best effort, as UDP is: a socket already closed (the transfer is ending) drops the packet. */
  send(packet: Buffer): void {
    try {
      this.data.send(packet);
    } catch {
      // closed: the transfer is over
    }
  }

  sendData(block: number, packet: Buffer): void {
    if (this.drop?.(block)) return;
    this.send(packet);
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

  /** A packet that makes a handler throw ends this transfer (logged with the stack), nothing else. */
  private guarded(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    try {
      this.onMessage(msg, rinfo);
    } catch (err) {
      this.hooks.log?.error('TFTP packet handler failed', {
        error: (err as Error)?.message ?? String(err),
        stack: (err as Error)?.stack,
      });
      this.stop(new TftpError('internal error', TftpErrorCode.NOT_DEFINED));
    }
  }

  private onMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (rinfo.port !== this.peer.port || rinfo.address !== this.peer.address) {
      // Never answer an error with one (two peers would bounce them for ever), nor what is too short to tell.
      if (msg.length < 2 || msg.readUInt16BE(0) === Opcode.ERROR) return;
      try {
        this.strays.send(encodeError(TftpErrorCode.UNKNOWN_TID, 'Unknown transfer ID'), rinfo.port, rinfo.address);
      } catch {
        // closed: the transfer is over
      }
      return;
    }
    // The peer knows our TID: it receives what we send, whatever it sent now.
    this.hooks.confirmed();
    if (msg.length < 4) return;
    const op = msg.readUInt16BE(0);
    if (op === Opcode.ACK) {
      this.onAck(msg.readUInt16BE(2));
    } else if (op === Opcode.DATA) {
      this.onData(msg.readUInt16BE(2), msg.subarray(4));
    } else if (op === Opcode.ERROR) {
      const packet = decodePacket(msg);
      const text =
        packet.op === Opcode.ERROR
          ? `client sent error ${packet.code}: ${clientText(packet.message)}`
          : 'client sent an error';
      this.stop(new PeerError(text, packet.op === Opcode.ERROR ? packet.code : 0));
      this.dallyEnd?.();
    }
  }
}

interface LinkHooks {
  /** The peer sent a packet to the transfer's TID. */
  confirmed(): void;
  log?: Logger;
}

/** An error packet whose message is clipped to ERROR_TEXT_MAX characters. */
function errorPacket(code: number, message: string): Buffer {
  return encodeError(code, message.length > ERROR_TEXT_MAX ? `${message.slice(0, ERROR_TEXT_MAX)}…` : message);
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
