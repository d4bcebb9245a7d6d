/**
 * Layout `seed` through the real agent without QEMU: a targets row with layout `seed`, a job over
 * the real WebSocket protocol, and in place of the board either nothing (BOARD_NO_SHOW) or a small
 * fake seed card — a real TFTP client over real UDP that, once the job's reset is done, fetches
 * the parts from the `:` folder and uploads `OK`/`FAILED` as the card would, with whatever count
 * the test wants. The real card's behaviour is pinned by seed-agent-qemu.test.ts; this file pins
 * the agent's side of each outcome on every machine.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tftpGet, tftpPut } from '../../runner-agent/src/tftp/client.js';
import type { AgentMessage, JobResult } from '../../src/protocol/messages.js';
import { startLab, type Lab } from '../support/lab.js';

const MiB = 1024 * 1024;
const TARGET = 'seed-pi';
const MAC = '52:54:00:5e:ed:03';
const FOLDER = MAC; // the seed card's folder: the MAC with ':'
const IMAGE_BYTES = 6 * MiB + 1000; // parts of 5 MiB and 1 MiB + 1000
const EXPECTED_COUNT = IMAGE_BYTES - 4 * MiB;

/** What the fake card does once the agent has reset it. */
type CardBehaviour = (port: number) => Promise<void>;

/** Fetches rpi_image_part_0, _1, … until one is missing, as the seed card does; returns them. */
async function fetchParts(port: number): Promise<Buffer[]> {
  const parts: Buffer[] = [];
  for (let i = 0; i < 10; i++) {
    const data = await tftpGet({
      host: '127.0.0.1',
      port,
      path: `${FOLDER}/rpi_image_part_${i}`,
      blksize: 1468,
      tsize: true,
    });
    if (!data) break;
    parts.push(data);
  }
  return parts;
}

function count(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

describe('layout seed through the agent (no QEMU)', () => {
  let lab: Lab;
  let dir = '';

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpi-flash-seed-agent-'));
    const targets = join(dir, 'targets.csv');
    // `cmd:true`: the reset does nothing; the fake card (if any) starts on the job's transfer phase.
    await writeFile(targets, `name,mac,ip,reset,layout\n${TARGET},${MAC},127.0.0.1,cmd:true,seed\n`);
    lab = await startLab({
      boards: [],
      config: { targets, flash: { partSize: '1MiB', seedPartSize: '5MiB' }, bootCheck: 'none' },
    });
  });

  afterEach(async () => {
    await lab?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** One job on the seed target; `card` plays the board after the reset. */
  async function flash(
    card: CardBehaviour | undefined,
    timeouts: { boardShow?: number; stall?: number; boot?: number } = {},
    bootCheck = 'none',
  ) {
    const image = await lab.image('image.img', IMAGE_BYTES, 5);
    const jobLog: string[] = [];
    let cardRun: Promise<void> | undefined;
    const conn = await lab.connect((m: AgentMessage) => {
      if (m.type === 'log') jobLog.push(`${m.level} ${m.source} ${m.message}`);
      // After the reset pulse, as a board would boot only then.
      if (card && m.type === 'phase' && m.phase === 'transfer' && m.state === 'start')
        cardRun ??= card(lab.agent.tftp.port);
    });
    await conn.lease(TARGET, { holder: 'seed-agent-test' });
    await conn.upload({ path: image.path, sha256: image.sha256, size: image.size, compression: 'none' });
    const result: JobResult = await conn.flash({
      sha256: image.sha256,
      bootCheck,
      timeouts: { boardShow: 5, stall: 5, ...timeouts },
    });
    await cardRun; // the fake's own failures surface here
    return { result, jobLog, image: await readFile(image.path), folders: await lab.tftpFolders() };
  }

  it('nothing ever fetches part 0 → BOARD_NO_SHOW naming the seed part, and the folder is gone', async () => {
    const { result, folders } = await flash(undefined, { boardShow: 1 });
    expect(result).toMatchObject({ ok: false, code: 'BOARD_NO_SHOW', bytesWritten: 0 });
    expect(result.message).toMatch(/never fetched rpi_image_part_0 within 1 s/);
    expect(folders).toEqual([]);
  });

  it(
    'a card that reports OK with the right count → OK, bytesWritten = image − 4 MiB; ' +
      'the parts it fetched are the image',
    async () => {
      let fetched: Buffer[] = [];
      let afterReport: Buffer | null | undefined;
      const { result, jobLog, image, folders } = await flash(async (port) => {
        fetched = await fetchParts(port);
        await tftpPut({ host: '127.0.0.1', port, path: `${FOLDER}/OK`, data: count(EXPECTED_COUNT) });
        // The card reboots and looks again at once: part 0 must already be gone.
        afterReport = await tftpGet({ host: '127.0.0.1', port, path: `${FOLDER}/rpi_image_part_0` });
      });
      expect(result).toMatchObject({ ok: true, code: 'OK', bytesWritten: EXPECTED_COUNT });
      expect(fetched.map((p) => p.length)).toEqual([5 * MiB, IMAGE_BYTES - 5 * MiB]);
      expect(Buffer.concat(fetched).equals(image), 'the parts are the whole image from byte 0, in order').toBe(true);
      expect(afterReport).toBeNull();
      expect(jobLog.some((l) => /seed card reported OK \(4 bytes\)/.test(l))).toBe(true);
      expect(folders).toEqual([]);
    },
  );

  it(
    'the parts are withdrawn on the report, while the job still waits for the boot: ' +
      'the rebooted card finds nothing',
    async () => {
      // A boot check nobody answers keeps the job alive past the report, so only the withdrawal on
      // the report (not the clean-up at the job's end) can hide part 0 from the card's next look.
      const closedPort = await new Promise<number>((resolve) => {
        const s = createServer().listen(0, '127.0.0.1', () => {
          const { port } = s.address() as AddressInfo;
          s.close(() => resolve(port));
        });
      });
      let afterReport: Buffer | null | undefined;
      let stillRunning = false;
      const { result } = await flash(
        async (port) => {
          await fetchParts(port);
          await tftpPut({ host: '127.0.0.1', port, path: `${FOLDER}/OK`, data: count(EXPECTED_COUNT) });
          afterReport = await tftpGet({ host: '127.0.0.1', port, path: `${FOLDER}/rpi_image_part_0` });
          stillRunning = (await lab.tftpFolders()).includes(FOLDER);
        },
        { boot: 2 },
        `tcp:127.0.0.1:${closedPort}`,
      );
      expect(result).toMatchObject({ code: 'BOOT_TIMEOUT', bytesWritten: EXPECTED_COUNT });
      expect(afterReport).toBeNull();
      expect(stillRunning, 'the job had not ended yet: its folder was still there').toBe(true);
    },
  );

  it('a card that reports OK with a wrong count → VERIFY_MISMATCH naming both counts', async () => {
    const { result, folders } = await flash(async (port) => {
      await fetchParts(port);
      await tftpPut({ host: '127.0.0.1', port, path: `${FOLDER}/OK`, data: count(EXPECTED_COUNT - 512) });
    });
    expect(result).toMatchObject({ ok: false, code: 'VERIFY_MISMATCH', bytesWritten: EXPECTED_COUNT - 512 });
    expect(result.message).toContain(
      `reported OK with ${EXPECTED_COUNT - 512} bytes written, expected ${EXPECTED_COUNT}`,
    );
    expect(folders).toEqual([]);
  });

  it('a card that reports OK with 2 bytes instead of a 4-byte count → VERIFY_MISMATCH', async () => {
    const { result } = await flash(async (port) => {
      await fetchParts(port);
      await tftpPut({ host: '127.0.0.1', port, path: `${FOLDER}/OK`, data: Buffer.from([1, 2]) });
    });
    expect(result).toMatchObject({ ok: false, code: 'VERIFY_MISMATCH' });
    expect(result.message).toMatch(/uploaded OK with 2 bytes, not the 4-byte count/);
  });

  it('a card that reports FAILED → BOARD_REPORTED_FAILURE with the count it wrote', async () => {
    const { result, folders } = await flash(async (port) => {
      await tftpGet({ host: '127.0.0.1', port, path: `${FOLDER}/rpi_image_part_0` });
      await tftpPut({ host: '127.0.0.1', port, path: `${FOLDER}/FAILED`, data: count(MiB) });
    });
    expect(result).toMatchObject({ ok: false, code: 'BOARD_REPORTED_FAILURE', bytesWritten: MiB });
    expect(result.message).toMatch(/FAILED after writing 1048576 of 2098152 bytes/);
    expect(folders).toEqual([]);
  });

  it('a card that fetches part 0 and then goes quiet → BOARD_TIMEOUT', async () => {
    const { result, folders } = await flash(
      async (port) => {
        await tftpGet({ host: '127.0.0.1', port, path: `${FOLDER}/rpi_image_part_0` });
      },
      { stall: 1 },
    );
    expect(result).toMatchObject({ ok: false, code: 'BOARD_TIMEOUT' });
    expect(result.message).toMatch(/fetched its image but uploaded no OK or FAILED report \(quiet for 1 s\)/);
    expect(folders).toEqual([]);
  });

  it('a report under any other name is refused and does not end the job', async () => {
    const { result } = await flash(
      async (port) => {
        await tftpGet({ host: '127.0.0.1', port, path: `${FOLDER}/rpi_image_part_0` });
        await expect(
          tftpPut({ host: '127.0.0.1', port, path: `${FOLDER}/DONE`, data: count(EXPECTED_COUNT) }),
        ).rejects.toThrow();
      },
      { stall: 1 },
    );
    expect(result.code).toBe('BOARD_TIMEOUT');
  });
});
