/**
 * What one TFTP peer may cost the server: transfers per client address and in all, memory per
 * transfer (nothing read ahead for a client that never answers), the client's `timeout` option,
 * and the length of what its file names put in the log. Real sockets on loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { encodeAck, encodeError, encodeRequest, Opcode, TftpErrorCode } from '../../runner-agent/src/tftp/packets.js';
import {
  TftpServer,
  type TftpResolver,
  type TftpServerOptions,
  type TransferEnd,
} from '../../runner-agent/src/tftp/server.js';
import { tftpGet } from '../../runner-agent/src/tftp/client.js';
import { RawPeer, type Received } from './helpers.js';
import { waitUntil } from '../support/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Files of any size that exist only as a count of the bytes the server asked of them. */
function countingResolver(size = 64 * MiB): TftpResolver & { requested: number; asked: string[] } {
  const r = {
    requested: 0,
    asked: [] as string[],
    async resolveRead(req: { path: string }) {
      r.asked.push(req.path);
      if (req.path.startsWith('missing')) return null;
      return {
        size,
        read: async (_position: number, length: number) => {
          r.requested += length;
          return Buffer.alloc(length);
        },
      };
    },
  };
  return r;
}

describe('TFTP limits per peer', () => {
  let server: TftpServer | undefined;
  let port = 0;
  const peers: RawPeer[] = [];
  const ends: TransferEnd[] = [];
  const logs: LogRecord[] = [];

  async function start(o: Partial<TftpServerOptions> & Pick<TftpServerOptions, 'resolver'>): Promise<void> {
    server = new TftpServer({
      address: '127.0.0.1',
      port: 0,
      log: createLogger({ level: 'debug', sink: (r) => logs.push(r) }),
      onTransferEnd: (t) => ends.push(t),
      ...o,
    });
    port = (await server.listen()).port;
  }
  async function peer(address?: string): Promise<RawPeer> {
    const p = await RawPeer.open(address);
    peers.push(p);
    return p;
  }
  /** `count` peers (from `address`) that each ask for `path` and get their first answer. */
  async function requests(count: number, path: string, options?: Record<string, string>, address?: string) {
    const asking = await Promise.all(Array.from({ length: count }, () => peer(address)));
    for (const p of asking) p.send(encodeRequest(Opcode.RRQ, path, 'octet', options), port);
    const first = await Promise.all(asking.map((p) => p.next()));
    return asking.map((p, i) => ({ peer: p, first: first[i]! }));
  }
  async function request(path: string, options?: Record<string, string>, address?: string) {
    return (await requests(1, path, options, address))[0]!;
  }

  afterEach(async () => {
    await server?.close();
    server = undefined;
    for (const p of peers.splice(0)) await p.close();
    ends.length = 0;
    logs.length = 0;
  });

  describe('memory per transfer', () => {
    it('holds one window for a request nobody answers: 50 of them read 50 blocks, not megabytes', async () => {
      const files = countingResolver();
      await start({ resolver: files, maxTransfersPerClient: 64, maxTransfers: 64 });
      const before = process.memoryUsage().arrayBuffers;
      const plain = await requests(50, 'big');
      expect(plain.every((r) => r.first.packet.op === Opcode.DATA)).toBe(true);
      expect(files.requested).toBeLessThanOrEqual(50 * 512);
      // With options the first window waits for ACK 0: nothing is read at all.
      const asked = files.requested;
      const windowed = await requests(10, 'big', { blksize: '1468', windowsize: '16', tsize: '0' });
      expect(windowed.every((r) => r.first.packet.op === Opcode.OACK)).toBe(true);
      expect(files.requested).toBe(asked);
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 * MiB);
    });

    it('reads ahead only as the client acknowledges: two chunks of 256 KiB past the last ACK', async () => {
      const files = countingResolver();
      await start({ resolver: files });
      const { peer: p, first } = await request('big', { blksize: '1468', windowsize: '16' });
      expect(first.packet).toMatchObject({ op: Opcode.OACK, options: { blksize: '1468', windowsize: '16' } });
      p.send(encodeAck(0), first.port);
      for (let i = 0; i < 16; i++) expect((await p.next()).packet).toMatchObject({ op: Opcode.DATA, block: i + 1 });
      expect(files.requested).toBe(16 * 1468);
      p.send(encodeAck(16), first.port);
      expect((await p.next()).packet).toMatchObject({ op: Opcode.DATA, block: 17 });
      expect(files.requested).toBeLessThanOrEqual(16 * 1468 + 2 * 256 * KiB + 1468);
    });

    it('keeps a window to 1 MiB whatever the client asks (windowsize lowered in the OACK)', async () => {
      await start({ resolver: countingResolver() });
      const { first } = await request('big', { blksize: '65464', windowsize: '64' });
      expect(first.packet).toEqual({ op: Opcode.OACK, options: { blksize: '65464', windowsize: '16' } });
    });
  });

  describe('transfers at once', () => {
    /** Peers whose transfers run: each acknowledged its first block and got the next. */
    async function running(count: number, address?: string) {
      const started = await requests(count, 'big', undefined, address);
      for (const { peer: p, first } of started) p.send(encodeAck(1), first.port);
      for (const { peer: p } of started) expect((await p.next()).packet).toMatchObject({ op: Opcode.DATA, block: 2 });
      return started;
    }
    function refusal(r: Received): { code: number; message: string } {
      expect(r.port).toBe(port); // from the listening socket: no transfer was set up for it
      if (r.packet.op !== Opcode.ERROR) throw new Error(`expected an error, got ${JSON.stringify(r.packet)}`);
      return r.packet;
    }

    it('refuses the 9th transfer from one address while its 8 run: error 0, no resolver work', async () => {
      const files = countingResolver();
      // A long retransmission timeout: the running ones count as moving for the whole test.
      await start({ resolver: files, timeoutMs: 10_000 });
      await running(8);
      const ninth = await peer();
      ninth.send(encodeRequest(Opcode.RRQ, 'big', 'octet'), port);
      const answer = refusal(await ninth.next());
      expect(answer).toMatchObject({ code: TftpErrorCode.NOT_DEFINED });
      expect(answer.message).toMatch(/too many transfers from 127\.0\.0\.1 at once \(8\)/);
      expect(files.asked).toHaveLength(8);
      expect(server!.activeTransfers).toBe(8);
      // Another address is served meanwhile.
      const other = await requests(1, 'big', undefined, '127.0.0.2');
      expect(other[0]!.first.packet).toMatchObject({ op: Opcode.DATA, block: 1 });
      expect(logs.some((r) => r.level === 'warn' && /requests refused/.test(r.msg))).toBe(true);
    });

    it('gives the slot of a transfer whose client never answered to a new request from that address', async () => {
      await start({ resolver: countingResolver(), timeoutMs: 10_000 });
      const silent = await requests(8, 'big');
      const ninth = await requests(1, 'big');
      expect(ninth[0]!.first.packet).toMatchObject({ op: Opcode.DATA, block: 1 });
      // One silent one was told why its transfer ended.
      await waitUntil(() => ends.length === 1, 'the dropped transfer to end');
      expect(ends[0]).toMatchObject({ ok: false, error: expect.stringMatching(/dropped/) as string });
      const dropped = silent.find((s) => s.peer.port === ends[0]!.peer.port)!;
      expect((await dropped.peer.next()).packet).toMatchObject({ op: Opcode.ERROR, message: ends[0]!.error });
      expect(server!.activeTransfers).toBe(8);
    });

    it('gives the slot of a transfer silent for its timeout to a new request, not that of a moving one', async () => {
      await start({ resolver: countingResolver(), timeoutMs: 300, retries: 50 });
      const stalled = await running(8);
      await new Promise((r) => setTimeout(r, 400));
      const ninth = await requests(1, 'big');
      expect(ninth[0]!.first.packet).toMatchObject({ op: Opcode.DATA, block: 1 });
      await waitUntil(() => ends.length === 1, 'the dropped transfer to end');
      expect(ends[0]).toMatchObject({ ok: false, error: expect.stringMatching(/dropped/) as string });
      expect(stalled.map((s) => s.peer.port)).toContain(ends[0]!.peer.port);
    });

    it('refuses a transfer over the total while all run, and serves again once one ends', async () => {
      await start({ resolver: countingResolver(3000), timeoutMs: 10_000, maxTransfers: 4 });
      const all = [
        ...(await running(1, '127.0.0.2')),
        ...(await running(1, '127.0.0.3')),
        ...(await running(2, '127.0.0.4')),
      ];
      const late = await peer('127.0.0.5');
      late.send(encodeRequest(Opcode.RRQ, 'big', 'octet'), port);
      expect(refusal(await late.next()).message).toMatch(/server busy \(4 transfers at once\)/);
      // One finishes (3000 bytes: blocks 1..6, the last short), and a slot is free again.
      const { peer: p, first } = all[0]!;
      for (let block = 2; block <= 6; block++) {
        p.send(encodeAck(block), first.port);
        if (block < 6) await p.next();
      }
      await waitUntil(() => server!.activeTransfers === 3, 'the finished transfer to free its slot');
      await expect(tftpGet({ host: '127.0.0.1', port, path: 'big', localAddress: '127.0.0.5' })).resolves.toHaveLength(
        3000,
      );
    });
  });

  describe('timeouts', () => {
    it("leaves a client's timeout above maxTimeout out of the OACK and accepts one within it", async () => {
      await start({ resolver: countingResolver(), maxTimeout: 5 });
      const [big] = await requests(1, 'big', { timeout: '255', tsize: '0' });
      expect(big!.first.packet).toEqual({ op: Opcode.OACK, options: { tsize: String(64 * MiB) } });
      const [five] = await requests(1, 'big', { timeout: '5' });
      expect(five!.first.packet).toEqual({ op: Opcode.OACK, options: { timeout: '5' } });
    });

    it('ends a transfer whose client asked for timeout 255 and went silent after its own timeouts', async () => {
      await start({ resolver: countingResolver(), timeoutMs: 100, retries: 2 });
      const started = performance.now();
      await requests(1, 'big', { timeout: '255' });
      await waitUntil(() => ends.length === 1, 'the silent transfer to give up');
      expect(ends[0]).toMatchObject({ ok: false, error: expect.stringMatching(/3 tries of 100 ms/) as string });
      expect(performance.now() - started).toBeLessThan(5000);
    });
  });

  describe('what a peer puts in the log and on the wire', () => {
    it('clips and escapes over-long and odd file names in the log and in error packets', async () => {
      await start({ resolver: countingResolver() });
      const long = `missing/${'a'.repeat(1000)}`;
      const [notFound] = await requests(1, long);
      expect(notFound!.first.packet).toMatchObject({ op: Opcode.ERROR, code: TftpErrorCode.FILE_NOT_FOUND });
      const [tooLong] = await requests(1, `x/${'b'.repeat(60_000)}`);
      expect(tooLong!.first.packet).toMatchObject({ op: Opcode.ERROR, code: TftpErrorCode.ACCESS_VIOLATION });
      expect((tooLong!.first.packet as { message: string }).message.length).toBeLessThanOrEqual(201);
      const [escape] = await requests(1, 'missing/\x1b[31mred\x7f');
      expect(escape!.first.packet).toMatchObject({ op: Opcode.ERROR });
      await waitUntil(() => ends.length === 3, 'three transfers to end');
      const failed = logs.filter((r) => r.msg === 'TFTP transfer failed');
      expect(failed).toHaveLength(3);
      for (const r of failed) expect(String(r.fields.path).length + String(r.fields.error).length).toBeLessThan(700);
      expect(failed.map((r) => r.fields.path)).toContain('missing/\\x1b[31mred\\x7f');
      expect(failed.map((r) => r.fields.path)).toContain(`missing/${'a'.repeat(152)}... (1008 characters)`);
    });

    it('answers a request refused before its transfer from the request port: no transfer port is opened', async () => {
      await start({ resolver: countingResolver() });
      const asks: Array<[number, string, string]> = [
        [Opcode.RRQ, 'missing/x', 'octet'],
        [Opcode.RRQ, '../x', 'octet'],
        [Opcode.RRQ, 'big', 'netascii'],
        [Opcode.WRQ, 'big', 'octet'], // the resolver takes no writes
      ];
      const answers = await Promise.all(
        asks.map(async ([op, path, mode]) => {
          const p = await peer();
          p.send(encodeRequest(op as 1 | 2, path, mode), port);
          return p.next();
        }),
      );
      expect(answers.map((a) => a.port)).toEqual([port, port, port, port]);
      expect(answers.map((a) => a.packet)).toMatchObject([
        { op: Opcode.ERROR, code: TftpErrorCode.FILE_NOT_FOUND },
        { op: Opcode.ERROR, code: TftpErrorCode.ACCESS_VIOLATION },
        { op: Opcode.ERROR, code: TftpErrorCode.ILLEGAL_OPERATION },
        { op: Opcode.ERROR, code: TftpErrorCode.ACCESS_VIOLATION },
      ]);
    });

    it('never answers an error packet: not on the request port, not on a transfer port from a stranger', async () => {
      await start({ resolver: countingResolver(), timeoutMs: 10_000 });
      const p = await peer();
      p.send(encodeError(0, 'hello'), port);
      p.send(Buffer.from([0, 5]), port);
      await expect(p.next(300)).rejects.toThrow(/no packet/);
      const { peer: client, first } = await request('big');
      const stranger = await peer();
      stranger.send(encodeError(0, 'who are you'), first.port);
      await expect(stranger.next(300)).rejects.toThrow(/no packet/);
      stranger.send(encodeAck(1), first.port);
      expect((await stranger.next()).packet).toMatchObject({ op: Opcode.ERROR, code: TftpErrorCode.UNKNOWN_TID });
      client.send(encodeAck(1), first.port);
      expect((await client.next()).packet).toMatchObject({ op: Opcode.DATA, block: 2 });
    });
  });

  describe('handlers that throw', () => {
    it('ends only the transfer whose file read throws at once (after ACK 0), and serves the next', async () => {
      const log: string[] = [];
      await start({
        resolver: {
          async resolveRead(req) {
            log.push(req.path);
            return {
              size: 100_000,
              read: (position: number, length: number) => {
                if (req.path === 'bad') throw new Error('read failed synchronously');
                return Promise.resolve(Buffer.alloc(length, position & 0xff));
              },
            };
          },
        },
      });
      const { peer: p, first } = await request('bad', { blksize: '1024' });
      p.send(encodeAck(0), first.port);
      expect((await p.next()).packet).toMatchObject({
        op: Opcode.ERROR,
        message: expect.stringMatching(/synchronously/) as string,
      });
      await expect(tftpGet({ host: '127.0.0.1', port, path: 'good', blksize: 1024 })).resolves.toHaveLength(100_000);
    });

    it('finishes a transfer whose progress listener throws, and logs the stack', async () => {
      await start({
        resolver: countingResolver(100_000),
        onProgress: () => {
          throw new Error('listener bug');
        },
      });
      await expect(tftpGet({ host: '127.0.0.1', port, path: 'big', blksize: 1024 })).resolves.toHaveLength(100_000);
      const errors = logs.filter((r) => r.level === 'error');
      expect(errors.length).toBeGreaterThan(0);
      expect(
        errors.every((r) => r.msg === 'onProgress handler threw' && /listener bug/.test(String(r.fields.stack))),
      ).toBe(true);
    });
  });

  describe('a transfer the client ends on purpose', () => {
    it('is logged as info when expectedEnd says so, as a failure otherwise, and a throwing hook means no', async () => {
      await start({
        resolver: countingResolver(4 * KiB),
        expectedEnd: (t) => {
          if (t.path === 'bad-hook') throw new Error('hook bug');
          return t.path === 'probe';
        },
      });
      for (const path of ['probe', 'other', 'bad-hook']) {
        const { peer: p, first } = await request(path);
        expect(first.packet.op).toBe(Opcode.DATA);
        p.send(encodeError(TftpErrorCode.NOT_DEFINED, 'enough'), first.port);
      }
      await waitUntil(() => ends.length === 3, 'the three transfers to end');
      const about = (path: string) => logs.filter((r) => r.fields.path === path && /TFTP transfer/.test(r.msg));
      expect(about('probe').map((r) => [r.level, r.msg])).toEqual([
        ['info', 'TFTP transfer ended by the client, as expected'],
      ]);
      expect(about('other').map((r) => [r.level, r.msg])).toEqual([['warn', 'TFTP transfer failed']]);
      expect(about('bad-hook').map((r) => [r.level, r.msg])).toEqual([['warn', 'TFTP transfer failed']]);
    });
  });
});
