/**
 * A TFTP client (RFC 1350, options RFC 2347/2348/2349, windows RFC 7440): used by tests, benches
 * and the simulated board. Correct under loss, duplication and reordering; not tuned for speed.
 */
import dgram from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { BufferBlockSource } from './block-source.js';
import { TftpError } from './errors.js';
import { DEFAULT_BLKSIZE, MIN_BLKSIZE } from './options.js';
import { decodePacket, encodeAck, encodeError, encodeRequest, Opcode, TftpErrorCode } from './packets.js';
import { fastLookup } from './udp.js';
import { WindowReceiver } from './window-receiver.js';
import { WindowSender } from './window-sender.js';

export { TftpError } from './errors.js';

interface CommonOptions {
  host: string;
  port: number;
  path: string;
  /** Asked for with the `blksize` option; the server may lower it. */
  blksize?: number;
  /** Asked for with the `windowsize` option; the server may lower it. */
  windowsize?: number;
  /** Our retransmission timeout. Default 1000. */
  timeoutMs?: number;
  /** Asks the server for this retransmission timeout (`timeout` option, seconds). */
  serverTimeout?: number;
  /** Retransmissions in a row before giving up. Default 5. */
  retries?: number;
  signal?: AbortSignal;
  /** The address to send from (a board's own, for a client that plays one); any unless given. */
  localAddress?: string;
}

export interface TftpGetOptions extends CommonOptions {
  /** Sends `tsize 0` so the server announces the file size (as U-Boot does). */
  tsize?: boolean;
  /** Each in-order payload, with its offset in the file. */
  onData?(chunk: Buffer, offset: number): void;
}

export interface TftpPutOptions extends CommonOptions {
  data: Buffer;
  /** Announces the size with `tsize`. Default true. */
  tsize?: boolean;
}

export interface TftpTransferInfo {
  /** What the server's OACK acknowledged; empty when it answered without options. */
  options: Record<string, string>;
  blksize: number;
  windowsize: number;
}

export interface TftpGetResult extends TftpTransferInfo {
  data: Buffer;
  /** The size the server announced with tsize, if it did. */
  size?: number;
}

/** Downloads a file; null when the server says "file not found" (error 1). Throws TftpError otherwise. */
export async function tftpGet(o: TftpGetOptions): Promise<Buffer | null> {
  return (await tftpGetWithInfo(o))?.data ?? null;
}

/** Uploads a file. Throws TftpError when the server refuses or the transfer fails. */
export async function tftpPut(o: TftpPutOptions): Promise<void> {
  await tftpPutWithInfo(o);
}

function requestedOptions(o: CommonOptions, tsize: number | undefined): Record<string, string> {
  const options: Record<string, string> = {};
  if (o.blksize !== undefined) options.blksize = String(o.blksize);
  if (o.windowsize !== undefined) options.windowsize = String(o.windowsize);
  if (o.serverTimeout !== undefined) options.timeout = String(o.serverTimeout);
  if (tsize !== undefined) options.tsize = String(tsize);
  return options;
}

/** Checks an OACK against what was asked (RFC 2347: only requested options, values not raised). */
function acceptOack(asked: Record<string, string>, got: Record<string, string>): TftpTransferInfo {
  const info: TftpTransferInfo = { options: got, blksize: DEFAULT_BLKSIZE, windowsize: 1 };
  for (const [name, value] of Object.entries(got)) {
    if (!(name in asked))
      throw new TftpError(`server acknowledged option "${name}" that was not requested`, TftpErrorCode.OPTION_REFUSED);
    const n = Number(value);
    if (name === 'blksize') {
      if (!Number.isInteger(n) || n < MIN_BLKSIZE || n > Number(asked.blksize))
        throw new TftpError(`server answered blksize ${value} to ${asked.blksize}`, TftpErrorCode.OPTION_REFUSED);
      info.blksize = n;
    } else if (name === 'windowsize') {
      if (!Number.isInteger(n) || n < 1 || n > Number(asked.windowsize))
        throw new TftpError(`server answered windowsize ${value} to ${asked.windowsize}`, TftpErrorCode.OPTION_REFUSED);
      info.windowsize = n;
    }
  }
  return info;
}

/** A client socket talking to one server: learns the server's TID from its first answer. */
class ClientLink {
  readonly socket: dgram.Socket;
  tid?: number;
  onPacket: (msg: Buffer) => void = () => {};

  constructor(
    private readonly serverAddress: string,
    private readonly serverPort: number,
    private readonly localAddress?: string,
  ) {
    this.socket = dgram.createSocket({ type: isIP(serverAddress) === 6 ? 'udp6' : 'udp4', lookup: fastLookup });
    this.socket.on('message', (msg, rinfo) => {
      if (rinfo.address !== this.serverAddress) return;
      this.tid ??= rinfo.port;
      if (rinfo.port !== this.tid) {
        this.socket.send(encodeError(TftpErrorCode.UNKNOWN_TID, 'Unknown transfer ID'), rinfo.port, rinfo.address);
        return;
      }
      if (msg.length >= 2) this.onPacket(msg);
    });
  }

  async bind(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.socket.once('error', reject);
      this.socket.bind({ port: 0, ...(this.localAddress ? { address: this.localAddress } : {}) }, () => {
        this.socket.off('error', reject);
        resolve();
      });
    });
    // Loss inside the host is mostly receive-buffer overflow under large windows: ask for room.
    try {
      this.socket.setRecvBufferSize(4 * 1024 * 1024);
    } catch {
      // capped by net.core.rmem_max; the default still works, with more retransmissions
    }
  }

  /** To the request port until the server answered, then to its TID. */
  send(packet: Buffer): void {
    this.socket.send(packet, this.tid ?? this.serverPort, this.serverAddress);
  }

  /** Keeps answering the server's duplicates in the background for a while (its last ACK may be lost). */
  closeAfter(ms: number): void {
    this.socket.unref();
    setTimeout(() => this.close(), ms).unref();
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

async function resolveHost(host: string): Promise<string> {
  return isIP(host) ? host : (await lookup(host)).address;
}

function errorFromPacket(msg: Buffer): TftpError {
  const p = decodePacket(msg);
  return p.op === Opcode.ERROR
    ? new TftpError(`server error ${p.code}: ${p.message}`, p.code)
    : new TftpError('malformed error packet', 0);
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new TftpError('transfer aborted', TftpErrorCode.NOT_DEFINED);
}

export async function tftpGetWithInfo(o: TftpGetOptions): Promise<TftpGetResult | null> {
  o.signal?.throwIfAborted();
  const timeoutMs = o.timeoutMs ?? 1000;
  const link = new ClientLink(await resolveHost(o.host), o.port, o.localAddress);
  await link.bind();
  const asked = requestedOptions(o, o.tsize ? 0 : undefined);
  const request = encodeRequest(Opcode.RRQ, o.path, 'octet', asked);
  let info: TftpTransferInfo | undefined;
  let size: number | undefined;
  const chunks: Buffer[] = [];
  const receiver = new WindowReceiver({
    // Until the server has answered, a timeout re-sends the request instead of an ACK.
    link: { sendAck: (block) => link.send(link.tid === undefined ? request : encodeAck(block)) },
    blksize: DEFAULT_BLKSIZE,
    windowsize: 1,
    timeoutMs,
    retries: o.retries ?? 5,
    onData: (chunk, offset) => {
      chunks.push(chunk);
      o.onData?.(chunk, offset);
    },
  });
  let notFound = false;
  link.onPacket = (msg) => {
    const op = msg.readUInt16BE(0);
    if (op === Opcode.DATA && msg.length >= 4) {
      // DATA before any OACK: the server ignored our options (RFC 2347) — plain 512-byte lock-step.
      info ??= { options: {}, blksize: DEFAULT_BLKSIZE, windowsize: 1 };
      receiver.onData(msg.readUInt16BE(2), msg.subarray(4));
    } else if (op === Opcode.OACK) {
      if (!info) {
        try {
          const p = decodePacket(msg);
          info = acceptOack(asked, p.op === Opcode.OACK ? p.options : {});
        } catch (err) {
          const e =
            err instanceof TftpError ? err : new TftpError((err as Error).message, TftpErrorCode.OPTION_REFUSED);
          link.send(encodeError(e.code, e.message));
          receiver.fail(e);
          return;
        }
        if (info.options.tsize !== undefined) size = Number(info.options.tsize);
        receiver.blksize = info.blksize;
        receiver.windowsize = info.windowsize;
      }
      // Also for a repeated OACK: our ACK 0 was lost.
      if (Object.keys(info.options).length > 0) link.send(encodeAck(0));
    } else if (op === Opcode.ERROR) {
      const err = errorFromPacket(msg);
      if (err.code === TftpErrorCode.FILE_NOT_FOUND) notFound = true;
      receiver.fail(err);
    }
  };
  const onAbort = () => {
    if (link.tid !== undefined) link.send(encodeError(TftpErrorCode.NOT_DEFINED, 'transfer aborted by the client'));
    receiver.fail(abortError(o.signal!));
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    link.send(request);
    receiver.start();
    await receiver.done;
  } catch (err) {
    link.close();
    if (notFound) return null;
    throw err;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
  }
  receiver.stop();
  link.closeAfter(2 * timeoutMs);
  const data = Buffer.concat(chunks);
  info ??= { options: {}, blksize: DEFAULT_BLKSIZE, windowsize: 1 };
  return { data, ...info, ...(size !== undefined ? { size } : {}) };
}

export async function tftpPutWithInfo(o: TftpPutOptions): Promise<TftpTransferInfo> {
  o.signal?.throwIfAborted();
  const timeoutMs = o.timeoutMs ?? 1000;
  const retries = o.retries ?? 5;
  const link = new ClientLink(await resolveHost(o.host), o.port, o.localAddress);
  await link.bind();
  const asked = requestedOptions(o, o.tsize === false ? undefined : o.data.length);
  const request = encodeRequest(Opcode.WRQ, o.path, 'octet', asked);
  let onAbort: (() => void) | undefined;
  try {
    return await new Promise<TftpTransferInfo>((resolve, reject) => {
      let sender: WindowSender | undefined;
      let attempts = 0;
      const fail = (err: Error) => {
        clearTimeout(opening);
        if (sender) sender.abort(err);
        else reject(err);
      };
      // Until the server answers, re-send the request; the sender has its own timer afterwards.
      const opening = setTimeout(function resend() {
        if (attempts++ >= retries)
          return fail(new TftpError(`no answer to the write request after ${attempts} tries`, 0));
        link.send(request);
        opening.refresh();
      }, timeoutMs);
      const start = (negotiated: TftpTransferInfo) => {
        clearTimeout(opening);
        sender = new WindowSender({
          source: new BufferBlockSource(o.data, negotiated.blksize),
          link: { sendData: (_block, packet) => link.send(packet) },
          windowsize: negotiated.windowsize,
          timeoutMs,
          retries,
          awaitAck0: false,
        });
        sender.done.then(() => resolve(negotiated), reject);
        sender.start();
      };
      link.onPacket = (msg) => {
        const op = msg.readUInt16BE(0);
        if (op === Opcode.ACK && msg.length >= 4) {
          const block = msg.readUInt16BE(2);
          if (!sender && block === 0) start({ options: {}, blksize: DEFAULT_BLKSIZE, windowsize: 1 });
          else sender?.onAck(block);
        } else if (op === Opcode.OACK && !sender) {
          try {
            const p = decodePacket(msg);
            start(acceptOack(asked, p.op === Opcode.OACK ? p.options : {}));
          } catch (err) {
            const e =
              err instanceof TftpError ? err : new TftpError((err as Error).message, TftpErrorCode.OPTION_REFUSED);
            link.send(encodeError(e.code, e.message));
            fail(e);
          }
        } else if (op === Opcode.ERROR) {
          fail(errorFromPacket(msg));
        }
      };
      onAbort = () => {
        if (link.tid !== undefined) link.send(encodeError(TftpErrorCode.NOT_DEFINED, 'transfer aborted by the client'));
        fail(abortError(o.signal!));
      };
      o.signal?.addEventListener('abort', onAbort, { once: true });
      link.send(request);
    });
  } finally {
    if (onAbort) o.signal?.removeEventListener('abort', onAbort);
    link.close();
  }
}
