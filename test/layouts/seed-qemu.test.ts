/**
 * Layout `seed` against a real U-Boot: the test build with `tftpput`
 * (bash scripts/build-test-uboot.sh --variant tftpput) runs test/qemu/seed-card.cmd, which
 * behaves as the seed system's recovery card does, against the project's TFTP server serving
 * the parts planned by layouts/seed.ts from the `:` folder; the report goes through SeedReports
 * and interpretSeedResult. Parts are 5 MiB here (QEMU writes the SD card at about 8 MiB/s); the
 * card's script does not depend on the part size.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BoardFiles, type StagedFile } from '../../runner-agent/src/staging/board-files.js';
import { ImageView } from '../../runner-agent/src/staging/image-view.js';
import {
  interpretSeedResult,
  planSeedParts,
  seedFolder,
  SeedReports,
  type SeedPlan,
} from '../../runner-agent/src/board/seed-card.js';
import { silentLogger } from '../../runner-agent/src/log.js';
import { patternBytes } from '../../runner-agent/src/sample-image.js';
import { TftpServer } from '../../runner-agent/src/tftp/server.js';
import { killAllQemuBoards, startQemuBoard, withConsoleOnFailure, type QemuBoard } from '../qemu/qemu-board.js';
import { BUILD_TIMEOUT_MS } from '../qemu/test-uboot.js';
import { tftpputUbootGate, writeSeedCardScript } from './seed-uboot.js';

const MiB = 1024 * 1024;
const MAC = '52:54:00:5e:ed:01';
const CARD_BYTES = 16 * MiB;
/** Where the card puts image byte 4 MiB: 6 MiB, so an offset mistake cannot pass unnoticed. */
const CARD_IMAGE_BLOCK = (6 * MiB) / 512;

const gate = await tftpputUbootGate('seed card under QEMU (U-Boot with tftpput)');

describe.skipIf(!gate.run)(gate.title, () => {
  let ubootBin = '';
  let workDir = '';
  let closers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    ubootBin = await gate.ubootBin();
  }, BUILD_TIMEOUT_MS);

  beforeEach(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-seed-'));
  });

  afterEach(async () => {
    await killAllQemuBoards();
    for (const c of closers.reverse()) await c();
    closers = [];
    await rm(workDir, { recursive: true, force: true });
  });

  /** Stages the image's seed parts for MAC on a TFTP server on loopback; runs the seed card. */
  async function flashWithSeedCard(o: { imageBytes: number; cardImageBlock: number }) {
    const image = patternBytes(o.imageBytes, 7);
    const imagePath = join(workDir, 'image.img');
    await writeFile(imagePath, image);
    const card = patternBytes(CARD_BYTES, 99); // the card's own content: must survive outside the written range
    const sdImage = join(workDir, 'sd.img');
    await writeFile(sdImage, card);

    const plan: SeedPlan = planSeedParts(o.imageBytes, { partBytes: 5 * MiB });
    const view = new ImageView(imagePath, o.imageBytes);
    const files = new Map<string, StagedFile>(
      plan.parts.map((p) => [p.name, { kind: 'range', view, offset: p.offset, size: p.size }]),
    );
    const fetched = new Set<string>();
    const reports = new SeedReports();
    const boardFiles = new BoardFiles({ root: join(workDir, 'tftp'), log: silentLogger, checkClientIp: false });
    await boardFiles.stage(
      seedFolder(MAC),
      {
        jobId: 'seedqemu',
        targetIp: '127.0.0.1',
        files,
        beaconPrefix: 'no-beacons/',
        onRead: (rel) => fetched.add(rel),
        onProgress: () => {},
        onBeacon: () => {},
        onWrite: reports.onWrite,
      },
      {},
    );
    const server = new TftpServer({ address: '127.0.0.1', port: 0, resolver: boardFiles, log: silentLogger });
    const { port } = await server.listen();
    closers.push(() => server.close());

    const script = join(workDir, 'seed-card.scr');
    await writeSeedCardScript(script);
    const board: QemuBoard = await startQemuBoard({
      ubootBin,
      mac: MAC,
      tftpPort: port,
      sdImage,
      stage1: script,
      env: {
        seed_card_blk: o.cardImageBlock.toString(16),
        seed_report_addr: '0x47f00000',
        tftpblocksize: '1468',
        tftpwindowsize: '8',
      },
      bootcmd: 'source ${stage1addr}; poweroff',
      timeoutMs: 120_000,
      workDir,
    });
    return withConsoleOnFailure(board, async () => {
      expect(await board.waitForExit(120_000)).toBe(0);
      const outcome = interpretSeedResult(plan, reports.first, { part0Fetched: fetched.has('rpi_image_part_0') });
      return { outcome, plan, image, card, written: await readFile(sdImage), board, fetched, reports };
    });
  }

  it(
    'writes every part after the 4 MiB skip where the card wants it, ' + 'reports OK with the right count → OK',
    async () => {
      const { outcome, plan, image, card, written, board, fetched } = await flashWithSeedCard({
        imageBytes: 12 * MiB + 1024,
        cardImageBlock: CARD_IMAGE_BLOCK,
      });
      expect(plan.parts.map((p) => p.name)).toEqual(['rpi_image_part_0', 'rpi_image_part_1', 'rpi_image_part_2']);
      expect([...fetched].sort()).toEqual(['rpi_image_part_0', 'rpi_image_part_1', 'rpi_image_part_2']);
      expect(board.console()).toContain('seed-card: reported OK');
      expect(outcome).toMatchObject({ code: 'OK', reportedCount: 8 * MiB + 1024 });
      const at = CARD_IMAGE_BLOCK * 512;
      // The image from byte 4 MiB on, at the card's offset; the card's own first part untouched.
      expect(written.subarray(at, at + plan.writtenBytes).equals(image.subarray(4 * MiB))).toBe(true);
      expect(written.subarray(0, at).equals(card.subarray(0, at))).toBe(true);
      // mmc write works in whole blocks: the rest of the last block is whatever RAM held; beyond it
      // the card is untouched.
      const end = at + Math.ceil(plan.writtenBytes / 512) * 512;
      expect(written.subarray(end).equals(card.subarray(end))).toBe(true);
    },
  );

  it('a write the card cannot make → FAILED with the bytes written so far → BOARD_REPORTED_FAILURE', async () => {
    // Part 0 (1 MiB after the skip) fits before the card's end; part 1 (5 MiB) does not.
    const twoMiBBeforeEnd = (CARD_BYTES - 2 * MiB) / 512;
    const { outcome, board } = await flashWithSeedCard({ imageBytes: 12 * MiB, cardImageBlock: twoMiBBeforeEnd });
    expect(board.console()).toContain('seed-card: reported FAILED');
    expect(outcome).toMatchObject({ code: 'BOARD_REPORTED_FAILURE', reportedCount: 1 * MiB });
  });
});
