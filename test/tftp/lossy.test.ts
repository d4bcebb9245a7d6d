/**
 * Our client and our server through a relay that drops, duplicates and reorders packets in both
 * directions: every file must arrive byte for byte, at every window size.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tftpGetWithInfo, tftpPut } from '../../runner-agent/src/tftp/client.js';
import { TftpServer, type TftpResolver, type TransferEnd } from '../../runner-agent/src/tftp/server.js';
import { LossyUdpRelay } from '../support/lossy-udp-relay.js';
import { patternedData, sha256 } from './helpers.js';

const files: Record<string, Buffer> = {
  empty: Buffer.alloc(0),
  'exact-3-blocks': patternedData(3 * 1468, 2),
  'small.bin': patternedData(10_000, 3),
  'image/part-0': patternedData(700_000, 4),
};
const uploads = new Map<string, Buffer>();
const resolver: TftpResolver = {
  async resolveRead(req) {
    const data = files[req.path];
    return data ? { size: data.length, read: async (p, n) => data.subarray(p, p + n) } : null;
  },
  async resolveWrite(req) {
    return { maxSize: 1_000_000, receive: async (data) => void uploads.set(req.path, data) };
  },
};

describe('TFTP through a lossy relay (3% drop, 2% duplicate, 3% reorder, both ways)', () => {
  let server: TftpServer;
  let relay: LossyUdpRelay;
  let relayPort: number;
  let serverPort: number;
  const ends: TransferEnd[] = [];

  beforeAll(async () => {
    server = new TftpServer({
      address: '127.0.0.1',
      port: 0,
      resolver,
      timeoutMs: 100,
      retries: 20,
      onTransferEnd: (t) => ends.push(t),
    });
    serverPort = (await server.listen()).port;
    relay = new LossyUdpRelay({
      target: { address: '127.0.0.1', port: serverPort },
      seed: 20261101,
      drop: 0.03,
      duplicate: 0.02,
      reorder: 0.03,
    });
    relayPort = (await relay.listen()).port;
  });
  afterAll(async () => {
    await relay?.close();
    await server?.close();
  });

  for (const windowsize of [1, 8, 16]) {
    it(`downloads every file intact at windowsize ${windowsize}`, async () => {
      for (const [path, want] of Object.entries(files)) {
        const got = await tftpGetWithInfo({
          host: '127.0.0.1',
          port: relayPort,
          path,
          blksize: 1468,
          windowsize,
          tsize: true,
          timeoutMs: 100,
          retries: 20,
        });
        expect(got, path).not.toBeNull();
        expect(got!.windowsize).toBe(windowsize);
        expect(got!.size).toBe(want.length);
        expect(sha256(got!.data), path).toBe(sha256(want));
      }
    });
  }

  it('wraps block numbers intact through (lighter) loss: blksize 16, > 65536 blocks', async () => {
    // 66 000 blocks at 3% loss would spend most of the test in timeouts; wrap-around is what matters.
    const light = new LossyUdpRelay({
      target: { address: '127.0.0.1', port: serverPort },
      seed: 7,
      drop: 0.003,
      duplicate: 0.003,
      reorder: 0.003,
    });
    try {
      const { port } = await light.listen();
      const big = patternedData(16 * 66_000 + 5, 9);
      files['wrap.bin'] = big;
      const got = await tftpGetWithInfo({
        host: '127.0.0.1',
        port,
        path: 'wrap.bin',
        blksize: 16,
        windowsize: 16,
        timeoutMs: 100,
        retries: 20,
      });
      expect(sha256(got!.data)).toBe(sha256(big));
      expect(light.stats.dropped).toBeGreaterThan(0);
    } finally {
      await light.close();
    }
  });

  it('uploads intact at windowsize 1 and 8', async () => {
    const data = patternedData(200_000, 5);
    await tftpPut({
      host: '127.0.0.1',
      port: relayPort,
      path: 'up/1',
      data,
      blksize: 1000,
      timeoutMs: 100,
      retries: 20,
    });
    await tftpPut({
      host: '127.0.0.1',
      port: relayPort,
      path: 'up/8',
      data,
      blksize: 1000,
      windowsize: 8,
      timeoutMs: 100,
      retries: 20,
    });
    expect(sha256(uploads.get('up/1')!)).toBe(sha256(data));
    expect(sha256(uploads.get('up/8')!)).toBe(sha256(data));
  });

  it('really harmed packets, in both directions', () => {
    expect(relay.stats.dropped).toBeGreaterThan(20);
    expect(relay.stats.duplicated).toBeGreaterThan(10);
    expect(relay.stats.reordered).toBeGreaterThan(20);
  });
});
