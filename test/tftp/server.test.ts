import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tftpGet, tftpGetWithInfo, tftpPut, TftpError } from '../../runner-agent/src/tftp/client.js';
import { encodeAck, encodeRequest, Opcode } from '../../runner-agent/src/tftp/packets.js';
import {
  realFileResolver,
  TftpAccessError,
  TftpServer,
  type TftpRequest,
  type TftpResolver,
  type TftpServerOptions,
  type TransferEnd,
} from '../../runner-agent/src/tftp/server.js';
import { makeTempDir, patternedData, RawPeer } from './helpers.js';
import { waitUntil } from '../support/wait.js';

/** Files served from memory, with a log of what the resolver was asked. */
function memoryResolver(files: Record<string, Buffer>): TftpResolver & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    async resolveRead(req: TftpRequest) {
      asked.push(req.path);
      const data = files[req.path];
      if (!data) return null;
      return {
        size: data.length,
        read: async (position: number, length: number) => data.subarray(position, position + length),
      };
    },
  };
}

describe('TftpServer', () => {
  let server: TftpServer | undefined;
  let port = 0;
  const ends: TransferEnd[] = [];
  const cleanups: Array<() => Promise<unknown>> = [];

  async function start(o: Omit<TftpServerOptions, 'address' | 'port'>): Promise<void> {
    server = new TftpServer({ address: '127.0.0.1', port: 0, onTransferEnd: (t) => ends.push(t), ...o });
    port = (await server.listen()).port;
  }
  async function raw(): Promise<RawPeer> {
    const peer = await RawPeer.open();
    cleanups.push(() => peer.close());
    return peer;
  }
  /** Waits until the server reported `count` finished transfers. */
  async function transfersEnded(count: number): Promise<TransferEnd[]> {
    await waitUntil(() => ends.length >= count, `${count} finished transfer(s)`, {
      detail: () => `${ends.length} so far`,
    });
    expect(ends.length).toBe(count);
    return ends;
  }

  beforeEach(() => {
    ends.length = 0;
  });
  afterEach(async () => {
    await server?.close();
    server = undefined;
    for (const c of cleanups.splice(0)) await c();
  });

  describe('option negotiation', () => {
    it('sends DATA 1 at once, without OACK, when the client asked for no options', async () => {
      await start({ resolver: memoryResolver({ f: Buffer.from('hello') }) });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'octet'), port);
      const first = await peer.next();
      expect(first.packet).toEqual({ op: Opcode.DATA, block: 1, data: Buffer.from('hello') });
      expect(first.port).not.toBe(port); // a new TID
      peer.send(encodeAck(1), first.port);
      expect((await transfersEnded(1))[0]).toMatchObject({ ok: true, bytes: 5, size: 5, options: {} });
    });

    it('answers an OACK with clamped values and the real tsize, then data at that block size', async () => {
      const data = patternedData(100);
      await start({ resolver: memoryResolver({ f: data }), maxBlksize: 64, maxWindowsize: 4 });
      const peer = await raw();
      peer.send(
        encodeRequest(Opcode.RRQ, 'f', 'octet', { blksize: '1468', windowsize: '16', tsize: '0', colour: 'blue' }),
        port,
      );
      const oack = await peer.next();
      expect(oack.packet).toEqual({ op: Opcode.OACK, options: { blksize: '64', windowsize: '4', tsize: '100' } });
      peer.send(encodeAck(0), oack.port);
      const d1 = await peer.next();
      const d2 = await peer.next();
      expect(d1.packet).toEqual({ op: Opcode.DATA, block: 1, data: data.subarray(0, 64) });
      expect(d2.packet).toEqual({ op: Opcode.DATA, block: 2, data: data.subarray(64) });
      peer.send(encodeAck(2), oack.port);
      expect((await transfersEnded(1))[0]).toMatchObject({
        ok: true,
        options: { blksize: '64', windowsize: '4', tsize: '100' },
      });
    });

    it('reports the negotiated options to the client', async () => {
      await start({ resolver: memoryResolver({ f: patternedData(5000) }) });
      const got = await tftpGetWithInfo({
        host: '127.0.0.1',
        port,
        path: 'f',
        blksize: 1468,
        windowsize: 8,
        tsize: true,
      });
      expect(got).toMatchObject({
        blksize: 1468,
        windowsize: 8,
        size: 5000,
        options: { blksize: '1468', windowsize: '8', tsize: '5000' },
      });
      expect(got!.data.equals(patternedData(5000))).toBe(true);
    });

    it('refuses netascii with an error packet', async () => {
      await start({ resolver: memoryResolver({ f: Buffer.from('x') }) });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'netascii'), port);
      expect((await peer.next()).packet).toMatchObject({
        op: Opcode.ERROR,
        code: 4,
        message: expect.stringMatching(/netascii/) as string,
      });
    });
  });

  describe('files and paths', () => {
    it('answers error 1 for an unknown file (the client returns null)', async () => {
      await start({ resolver: memoryResolver({}) });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'nope', 'octet'), port);
      expect((await peer.next()).packet).toEqual({ op: Opcode.ERROR, code: 1, message: 'File not found' });
      expect(await tftpGet({ host: '127.0.0.1', port, path: 'nope' })).toBeNull();
      expect((await transfersEnded(2))[0]).toMatchObject({
        kind: 'read',
        path: 'nope',
        ok: false,
        error: 'File not found',
      });
    });

    it.each(['../x', '/etc/passwd', 'a/../../b', 'a\\b', ''])(
      'refuses %j with error 2 before asking the resolver',
      async (path) => {
        const resolver = memoryResolver({ x: Buffer.from('x') });
        await start({ resolver });
        const peer = await raw();
        peer.send(encodeRequest(Opcode.RRQ, path, 'octet'), port);
        expect((await peer.next()).packet).toMatchObject({ op: Opcode.ERROR, code: 2 });
        expect(resolver.asked).toEqual([]);
      },
    );

    it('refuses a NUL inside the name (on the wire it ends the name, leaving a bogus mode)', async () => {
      const resolver = memoryResolver({ a: Buffer.from('x') });
      await start({ resolver });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'a\0b', 'octet'), port);
      expect((await peer.next()).packet).toMatchObject({ op: Opcode.ERROR, code: 4 });
      expect(resolver.asked).toEqual([]);
    });

    it('hands the resolver a normalised path', async () => {
      const resolver = memoryResolver({ 'a/b': Buffer.from('ab') });
      await start({ resolver });
      expect((await tftpGet({ host: '127.0.0.1', port, path: 'a//./b' }))?.toString()).toBe('ab');
      expect(resolver.asked).toEqual(['a/b']);
    });

    it('passes a resolver TftpAccessError on as error 2 with its message', async () => {
      await start({
        resolver: {
          resolveRead: async () => {
            throw new TftpAccessError('job is over');
          },
        },
      });
      await expect(tftpGet({ host: '127.0.0.1', port, path: 'x' })).rejects.toMatchObject({
        code: 2,
        message: expect.stringMatching(/job is over/) as string,
      });
    });

    it('realFileResolver serves files under its root, and refuses symlinks out of it and directories', async () => {
      const tmp = await makeTempDir();
      cleanups.push(() => tmp.remove());
      const root = join(tmp.dir, 'root');
      await mkdir(join(root, 'sub'), { recursive: true });
      await writeFile(join(root, 'sub', 'in.bin'), patternedData(3000));
      await writeFile(join(tmp.dir, 'secret'), 'secret');
      await symlink(join(tmp.dir, 'secret'), join(root, 'out'));
      await symlink(join(root, 'sub', 'in.bin'), join(root, 'inside-link'));
      await start({ resolver: realFileResolver(root) });
      const get = (path: string) => tftpGet({ host: '127.0.0.1', port, path });
      expect((await get('sub/in.bin'))!.equals(patternedData(3000))).toBe(true);
      expect((await get('inside-link'))!.equals(patternedData(3000))).toBe(true);
      await expect(get('out')).rejects.toMatchObject({ code: 2, message: expect.stringMatching(/outside/) as string });
      await expect(get('sub')).rejects.toMatchObject({
        code: 2,
        message: expect.stringMatching(/not a regular file/) as string,
      });
      expect(await get('missing')).toBeNull();
      expect(await get('sub/in.bin/x')).toBeNull();
    });
  });

  describe('writes', () => {
    it('refuses writes when the resolver has no resolveWrite', async () => {
      await start({ resolver: memoryResolver({}) });
      await expect(tftpPut({ host: '127.0.0.1', port, path: 'up', data: Buffer.from('x') })).rejects.toMatchObject({
        code: 2,
      });
    });

    it('accepts writes the resolver allows, windowed or not, and enforces maxSize', async () => {
      const received: Array<{ path: string; data: Buffer }> = [];
      await start({
        timeoutMs: 200,
        resolver: {
          ...memoryResolver({}),
          resolveWrite: async (req) =>
            req.path.startsWith('report/')
              ? { maxSize: 3000, receive: async (data) => void received.push({ path: req.path, data }) }
              : null,
        },
      });
      const put = (path: string, data: Buffer, more: object = {}) =>
        tftpPut({ host: '127.0.0.1', port, path, data, timeoutMs: 200, ...more });
      await put('report/OK', Buffer.from([4, 3, 2, 1]));
      await put('report/big', patternedData(3000), { blksize: 100, windowsize: 4 });
      await put('report/exact', patternedData(1024), { tsize: false }); // ends with an empty block
      expect(received.map((r) => [r.path, r.data.length])).toEqual([
        ['report/OK', 4],
        ['report/big', 3000],
        ['report/exact', 1024],
      ]);
      expect(received[1]!.data.equals(patternedData(3000))).toBe(true);
      // Announced too large (tsize) → refused at once; unannounced → refused when it grows past maxSize.
      await expect(put('report/huge', patternedData(3001))).rejects.toMatchObject({ code: 3 });
      await expect(put('report/huge', patternedData(5000), { tsize: false })).rejects.toMatchObject({ code: 3 });
      await expect(put('other', Buffer.from('x'))).rejects.toMatchObject({ code: 2 });
      expect(received).toHaveLength(3);
    });
  });

  describe('transfer mechanics', () => {
    it('answers packets from a wrong TID with error 5 and carries on', async () => {
      await start({ resolver: memoryResolver({ f: patternedData(1000) }) });
      const peer = await raw();
      const intruder = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'octet'), port);
      const d1 = await peer.next();
      intruder.send(encodeAck(1), d1.port);
      expect((await intruder.next()).packet).toMatchObject({ op: Opcode.ERROR, code: 5 });
      peer.send(encodeAck(1), d1.port);
      expect((await peer.next()).packet).toMatchObject({
        op: Opcode.DATA,
        block: 2,
        data: patternedData(1000).subarray(512),
      });
      peer.send(encodeAck(2), d1.port);
      expect((await transfersEnded(1))[0]).toMatchObject({ ok: true, bytes: 1000 });
    });

    it('ignores duplicate ACKs (no Sorcerer’s Apprentice)', async () => {
      await start({ resolver: memoryResolver({ f: patternedData(1500) }), timeoutMs: 10_000 });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'octet'), port);
      const tid = (await peer.next()).port;
      peer.send(encodeAck(1), tid);
      peer.send(encodeAck(1), tid);
      expect((await peer.next()).packet).toMatchObject({ block: 2 });
      peer.send(encodeAck(2), tid);
      // Had the duplicate ACK 1 been answered, a second block 2 would come before block 3.
      expect((await peer.next()).packet).toMatchObject({ block: 3 });
    });

    it('restarts a window right after the block the client acknowledged', async () => {
      await start({ resolver: memoryResolver({ f: patternedData(80) }), timeoutMs: 10_000 });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'octet', { blksize: '8', windowsize: '4' }), port);
      const tid = (await peer.next()).port;
      peer.send(encodeAck(0), tid);
      const blocks = async (n: number) => {
        const out: number[] = [];
        for (let i = 0; i < n; i++) out.push(((await peer.next()).packet as { block: number }).block);
        return out;
      };
      expect(await blocks(4)).toEqual([1, 2, 3, 4]);
      peer.send(encodeAck(2), tid); // "I lost 3"
      expect(await blocks(4)).toEqual([3, 4, 5, 6]);
      peer.send(encodeAck(6), tid);
      expect(await blocks(4)).toEqual([7, 8, 9, 10]);
    });

    it('retransmits after a timeout and gives up after the configured retries, reporting it', async () => {
      await start({ resolver: memoryResolver({ f: patternedData(10) }), timeoutMs: 30, retries: 2 });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'octet'), port);
      const copies = [await peer.next(), await peer.next(), await peer.next()];
      expect(copies.map((c) => c.packet)).toEqual(
        Array(3).fill({ op: Opcode.DATA, block: 1, data: patternedData(10) }),
      );
      const [end] = await transfersEnded(1);
      expect(end).toMatchObject({
        ok: false,
        bytes: 0,
        error: expect.stringMatching(/no ACK after 3 tries/) as string,
      });
      expect((await peer.next()).packet).toMatchObject({ op: Opcode.ERROR });
    });

    it('recovers from a lost DATA packet (fault hook) at windowsize 1 and 8', async () => {
      const data = patternedData(20_000);
      const dropped = new Set<string>();
      await start({
        resolver: memoryResolver({ f: data }),
        timeoutMs: 50,
        faults: {
          drop: (path, block) =>
            (block === 5 || block === 9) && !dropped.has(`${path}:${block}`) && !!dropped.add(`${path}:${block}`),
        },
      });
      const got1 = await tftpGet({ host: '127.0.0.1', port, path: 'f', timeoutMs: 50 });
      expect(got1!.equals(data)).toBe(true);
      dropped.clear();
      const got8 = await tftpGet({ host: '127.0.0.1', port, path: 'f', blksize: 512, windowsize: 8, timeoutMs: 50 });
      expect(got8!.equals(data)).toBe(true);
      expect(dropped.size).toBe(2);
    });

    it('delivers a corrupted block when the test fault hook asks for it', async () => {
      const data = patternedData(2000);
      await start({
        resolver: memoryResolver({ f: data }),
        faults: { corrupt: (_p, block, d) => (block === 2 ? Buffer.alloc(d.length, 0xee) : undefined) },
      });
      const got = await tftpGet({ host: '127.0.0.1', port, path: 'f' });
      expect(got!.subarray(512, 1024).every((b) => b === 0xee)).toBe(true);
      expect(got!.subarray(0, 512).equals(data.subarray(0, 512))).toBe(true);
    });

    it.each([
      ['zero-byte file', 0, 512],
      ['exact multiple of blksize (ends with an empty block)', 1024, 512],
      ['one byte under', 1023, 512],
    ])('serves a %s', async (_name, size, blksize) => {
      const data = patternedData(size);
      await start({ resolver: memoryResolver({ f: data }) });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'octet', { blksize: String(blksize) }), port);
      const tid = (await peer.next()).port;
      peer.send(encodeAck(0), tid);
      const lengths: number[] = [];
      for (;;) {
        const { packet } = await peer.next();
        if (packet.op !== Opcode.DATA) throw new Error(`unexpected ${JSON.stringify(packet)}`);
        lengths.push(packet.data.length);
        peer.send(encodeAck(packet.block), tid);
        if (packet.data.length < blksize) break;
      }
      expect(lengths.reduce((a, b) => a + b, 0)).toBe(size);
      expect(lengths).toHaveLength(Math.floor(size / blksize) + 1);
      expect(lengths[lengths.length - 1]).toBe(size % blksize);
    });

    it('wraps block numbers past 65535 (file of more than 65536 blocks)', async () => {
      const data = patternedData(8 * 70_000 + 3);
      await start({ resolver: memoryResolver({ f: data }) });
      const got = await tftpGetWithInfo({ host: '127.0.0.1', port, path: 'f', blksize: 8, windowsize: 32 });
      expect(got!.blksize).toBe(8);
      expect(got!.data.equals(data)).toBe(true);
    });

    it('reports progress, ending with the full size', async () => {
      const progress: number[] = [];
      const data = patternedData(3 * 1024 * 1024);
      await start({ resolver: memoryResolver({ f: data }), onProgress: (p) => progress.push(p.sent) });
      await tftpGet({ host: '127.0.0.1', port, path: 'f', blksize: 1468, windowsize: 16 });
      await transfersEnded(1); // the client is done once it sent its last ACK; the server a moment later
      expect(progress.length).toBeGreaterThanOrEqual(3);
      expect(progress.at(-1)).toBe(data.length);
      expect([...progress].sort((a, b) => a - b)).toEqual(progress);
    });

    it('close() mid-transfer ends the transfer cleanly and reports it', async () => {
      await start({ resolver: memoryResolver({ f: patternedData(100_000) }), timeoutMs: 10_000 });
      const peer = await raw();
      peer.send(encodeRequest(Opcode.RRQ, 'f', 'octet'), port);
      await peer.next();
      await server!.close();
      server = undefined;
      expect(ends).toHaveLength(1);
      expect(ends[0]).toMatchObject({ ok: false, error: 'server closing' });
      expect((await peer.next()).packet).toMatchObject({ op: Opcode.ERROR, message: 'server closing' });
    });

    it('a client in flight sees a TftpError when the server closes', async () => {
      await start({ resolver: memoryResolver({ f: Buffer.alloc(200_000_000) }) });
      let bytes = 0;
      const pending = tftpGet({
        host: '127.0.0.1',
        port,
        path: 'f',
        blksize: 1468,
        windowsize: 8,
        onData: (c) => (bytes += c.length),
      });
      while (bytes === 0) await new Promise((r) => setTimeout(r, 5));
      await server!.close();
      server = undefined;
      await expect(pending).rejects.toBeInstanceOf(TftpError);
    });
  });
});
