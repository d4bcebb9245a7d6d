import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FLASH_SCRIPT, macDir, reportPrefix } from '../../src/protocol/tftp-names.js';
import { parseBeacon, type Beacon } from '../../runner-agent/src/board/beacons.js';
import { generateStage2Script } from '../../runner-agent/src/board/stage2-script.js';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';
import { silentLogger } from '../../runner-agent/src/log.js';
import { SimBoard, SimLab, type SimBoardOptions } from '../../runner-agent/src/sim/index.js';
import { JOB, MAC, SECRET, stageParts, testImage } from '../board/flash-harness.js';

const CARD_SIZE = 1024 * 1024;
let dir: string;
const boards: SimBoard[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'sim-board-'));
});
afterEach(async () => {
  await Promise.all(boards.splice(0).map((b) => b.close()));
  await rm(dir, { recursive: true, force: true });
});

/** A bootable image: random bytes with an MBR signature. */
function bootableImage(size: number, seed: number): Buffer {
  const image = testImage(size, seed);
  image[510] = 0x55;
  image[511] = 0xaa;
  return image;
}

/** What the agent serves for one job: flash.scr, the parts, beacon answers; withdraws on "done". */
function stagedServer(image: Buffer, partSize: number, scriptOptions: { retries?: number } = {}) {
  const { parts, served } = stageParts(image, partSize);
  const files = new Map<string, Buffer>(served);
  const script = generateStage2Script({
    jobId: JOB,
    mac: MAC,
    reportSecret: SECRET,
    parts,
    retries: scriptOptions.retries ?? 2,
    loadAddr: 0x1000_0000,
    crcAddr: 0x0f00_0000,
    beaconAddr: 0x0f10_0000,
    mmcDev: 0,
  });
  const flashScr = `${macDir(MAC)}/${FLASH_SCRIPT}`;
  files.set(flashScr, buildScriptImage(script, { name: `rpi-flash ${JOB}` }));
  const beacons: Array<Beacon | null> = [];
  const fetched: string[] = [];
  const prefix = reportPrefix(MAC, JOB, SECRET);
  const fetch: SimBoardOptions['fetch'] = async (p) => {
    fetched.push(p);
    if (p.startsWith(prefix)) {
      const b = parseBeacon(p.slice(prefix.length));
      beacons.push(b);
      if (b?.kind === 'done') files.delete(flashScr);
      return Buffer.from('ok\n');
    }
    return files.get(p) ?? null;
  };
  return { fetch, beacons, fetched, parts, served };
}

function board(o: Partial<SimBoardOptions> & Pick<SimBoardOptions, 'fetch'>): SimBoard {
  const b = new SimBoard({
    name: 'pi1',
    mac: MAC,
    ip: '127.0.0.1',
    bootPort: 0,
    cardPath: path.join(dir, 'card.img'),
    cardSize: CARD_SIZE,
    log: silentLogger,
    ...o,
  });
  boards.push(b);
  return b;
}

function banner(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {});
    let text = '';
    socket.on('data', (d) => (text += d.toString()));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
}

describe('SimBoard', () => {
  for (const faults of [[], ['crc-be32']]) {
    const build = faults.length ? ' (crc32 big-endian build)' : '';
    it(`flashes a staged job, resets, and boots the new system${build}`, async () => {
      const image = bootableImage(3 * 65536 + 3000, 21);
      const server = stagedServer(image, 65536);
      const b = board({ fetch: server.fetch, faults });
      expect(b.state).toBe('off');
      await b.reset();
      await b.whenState('booted');
      const card = await readFile(path.join(dir, 'card.img'));
      expect(card.length).toBe(CARD_SIZE);
      expect(card.subarray(0, image.length).equals(image)).toBe(true);
      expect(server.beacons.map((x) => x?.kind)).toEqual(['start', 'part-ok', 'part-ok', 'part-ok', 'part-ok', 'done']);
      expect(server.beacons.at(-1)).toEqual({ kind: 'done', ok: true });
      expect(b.boots).toBe(2);
      expect(await banner(b.bootAddress!.port)).toMatch(/^SSH-2.0-/);
    });
  }

  it('retries a part the network corrupts once (fault corrupt-once)', async () => {
    const image = bootableImage(3 * 65536, 22);
    const server = stagedServer(image, 65536);
    const b = board({ fetch: server.fetch, faults: ['corrupt-once:2'] });
    await b.reset();
    await b.whenState('booted');
    expect(server.beacons.map((x) => x?.kind)).toEqual([
      'start',
      'part-ok',
      'part-retry',
      'part-ok',
      'part-ok',
      'done',
    ]);
    expect(server.beacons[2]).toMatchObject({ kind: 'part-retry', part: 2, attempt: 1, reason: 'crc' });
    expect((await readFile(path.join(dir, 'card.img'))).subarray(0, image.length).equals(image)).toBe(true);
  });

  it('gives up on a part that is always corrupted and leaves the rest of the card alone', async () => {
    const image = bootableImage(3 * 65536, 23);
    await writeFile(path.join(dir, 'card.img'), Buffer.alloc(CARD_SIZE, 0xcc));
    const server = stagedServer(image, 65536);
    const b = board({ fetch: server.fetch, faults: ['corrupt-always:2'] });
    await b.reset();
    await b.idle();
    expect(server.beacons).toEqual([
      { kind: 'start' },
      expect.objectContaining({ kind: 'part-ok', part: 1 }),
      expect.objectContaining({ kind: 'part-retry', part: 2, attempt: 1 }),
      expect.objectContaining({ kind: 'part-retry', part: 2, attempt: 2 }),
      expect.objectContaining({ kind: 'part-failed', part: 2, stage: 'download' }),
      { kind: 'done', ok: false },
    ]);
    const card = await readFile(path.join(dir, 'card.img'));
    expect(card.subarray(0, 65536).equals(image.subarray(0, 65536))).toBe(true);
    expect(card.subarray(65536).every((x) => x === 0xcc)).toBe(true);
  });

  it('reports a failed write (fault fail-write)', async () => {
    const server = stagedServer(bootableImage(65536, 24), 65536);
    const b = board({ fetch: server.fetch, faults: ['fail-write'] });
    await b.reset();
    await b.idle();
    expect(server.beacons).toEqual([
      { kind: 'start' },
      { kind: 'part-failed', part: 1, stage: 'write' },
      { kind: 'done', ok: false },
    ]);
    expect(b.state).toBe('uboot'); // nothing bootable on the card
  });

  it('never fetches anything with fault no-show', async () => {
    const server = stagedServer(bootableImage(65536, 25), 65536);
    const b = board({ fetch: server.fetch, faults: ['no-show'] });
    await b.reset();
    await b.idle();
    expect(server.fetched).toEqual([]);
    expect(b.state).toBe('uboot');
  });

  it('flashes but does not come up with fault no-boot', async () => {
    const server = stagedServer(bootableImage(65536, 26), 65536);
    const b = board({ fetch: server.fetch, faults: ['no-boot'] });
    await b.reset();
    await b.idle();
    expect(server.beacons.at(-1)).toEqual({ kind: 'done', ok: true });
    expect(b.state).toBe('uboot');
    expect(b.bootAddress).toBeUndefined();
  });

  it('boots an already flashed card when there is no job, and stops listening on reset and close', async () => {
    await writeFile(path.join(dir, 'card.img'), bootableImage(4096, 27));
    const fetched: string[] = [];
    const b = board({ fetch: async (p) => (fetched.push(p), null) });
    await b.reset();
    await b.whenState('booted');
    expect(fetched).toEqual([`${macDir(MAC)}/${FLASH_SCRIPT}`]);
    const port = b.bootAddress!.port;
    await b.close();
    expect(b.state).toBe('off');
    await expect(banner(port)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('abandons a running flash when power-cycled and starts stage 1 again', async () => {
    const image = bootableImage(2 * 65536, 28);
    const server = stagedServer(image, 65536);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let first = true;
    let hanging = false;
    const b = board({
      fetch: async (p) => {
        if (p.endsWith('part-002') && first) {
          first = false;
          hanging = true;
          await gate; // the download hangs until the board is power-cycled
        }
        return server.fetch(p, {});
      },
    });
    await b.reset();
    await b.whenState('flashing');
    while (!hanging) await new Promise((r) => setImmediate(r));
    await b.reset(); // returns although the old download is still pending
    release();
    await b.whenState('booted');
    expect(server.beacons.filter((x) => x?.kind === 'start')).toHaveLength(2);
    expect((await readFile(path.join(dir, 'card.img'))).subarray(0, image.length).equals(image)).toBe(true);
  });

  it('rejects unknown faults and bad card sizes with clear errors', () => {
    expect(() => board({ fetch: async () => null, faults: ['melt'] })).toThrow(/unknown fault "melt"/);
    expect(() => board({ fetch: async () => null, faults: ['corrupt-once'] })).toThrow(/needs a positive number/);
    expect(() => board({ fetch: async () => null, cardSize: 1000 })).toThrow(/multiple of 512/);
  });
});

describe('SimLab', () => {
  it('resets boards by name and refuses names it does not have', async () => {
    const lab = new SimLab();
    const fetched: string[] = [];
    const b = new SimBoard({
      name: 'pi7',
      mac: MAC,
      ip: '127.0.0.1',
      bootPort: 0,
      cardPath: path.join(dir, 'c7.img'),
      cardSize: CARD_SIZE,
      log: silentLogger,
      fetch: async (p) => (fetched.push(p), null),
    });
    lab.add(b);
    expect(() => lab.add(b)).toThrow(/already has a board named "pi7"/);
    await expect(lab.reset('pi8')).rejects.toThrow(/no board named "pi8" \(boards: pi7\)/);
    await lab.reset('pi7');
    await b.idle();
    expect(fetched).toHaveLength(1);
    await lab.close();
    expect(b.state).toBe('off');
  });
});
