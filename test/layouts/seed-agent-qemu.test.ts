/**
 * Layout `seed` end to end (issue 5 item 6): the real agent (`startAgent`) with a targets row
 * whose layout column says `seed` and whose reset is `qmp:<the board's QMP socket>`; a job
 * submitted over the real WebSocket protocol; a real U-Boot with `tftpput` under QEMU running
 * test/qemu/seed-card.cmd, the stand-in for the seed system's recovery card. The card fetches
 * `<mac with :>/rpi_image_part_N` from the agent's TFTP server, writes from image byte 4 MiB on
 * at its own offset, uploads `OK`/`FAILED` with its count, and reboots, as the real card does.
 *
 * The board boots once before the job (the card finds no part 0 and stops), then the agent stages
 * the parts and resets it through QMP — what a lab's RUN line does. Parts are 5 MiB
 * (`flash.seedPartSize`): QEMU writes the SD card at about 8 MiB/s.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../../runner-agent/src/agent.js';
import { validateConfig } from '../../runner-agent/src/config.js';
import { createLogger, formatRecord, type LogRecord } from '../../runner-agent/src/log.js';
import { patternBytes } from '../../runner-agent/src/sample-image.js';
import { connectAgent, type AgentConnection } from '../../src/protocol/client.js';
import type { AgentMessage, JobResult } from '../../src/protocol/messages.js';
import { sha256File } from '../support/lab.js';
import { parseUbootTransfers, qemuAgentSettings } from '../qemu/agent-scenario.js';
import { consoleTail, startQemuBoard, type QemuBoard } from '../qemu/qemu-board.js';
import { useQemuWorkspace } from '../qemu/test-uboot.js';
import { tftpputUbootGate, writeSeedCardScript } from './seed-uboot.js';

const MiB = 1024 * 1024;
const TOKEN = 'seed-agent-qemu-token-0123456789';
const TARGET = 'qemu-seed-pi';
const MAC = '52:54:00:5e:ed:02';
const SEED_FOLDER = MAC; // the seed card's folder: the MAC with ':'
const CARD_BYTES = 16 * MiB;
const CARD_SEED = 99; // the card's own content, so untouched sectors show
/** Where the card puts image byte 4 MiB: 6 MiB, so an offset mistake cannot pass unnoticed. */
const CARD_IMAGE_AT = 6 * MiB;
const RUN_TIMEOUT_MS = 90_000;
const TEST_TIMEOUT_MS = RUN_TIMEOUT_MS + 20_000;

const gate = await tftpputUbootGate('the agent flashes a seed card (layout seed) on a real U-Boot under QEMU');

interface SeedRun {
  result: JobResult;
  jobLog: string[];
  image: Buffer;
  card: Buffer;
  written: Buffer;
  /** Entries under the TFTP root once the result is in (dot-files excluded). */
  tftpLeftovers: string[];
  /** After the card's reboot that followed its report, it ran again and found no part 0. */
  noImageAfterReboot: boolean;
  /** Part-0 downloads U-Boot completed, over the whole run. */
  part0Downloads: number;
  console: string;
}

describe.skipIf(!gate.run)(gate.title, () => {
  const qemu = useQemuWorkspace(gate, { prefix: 'rpi-flash-seed-agent-' });

  async function flashSeedCard(o: { imageBytes: number; boardEnv?: Record<string, string> }): Promise<SeedRun> {
    const image = patternBytes(o.imageBytes, 7);
    const imageFile = join(qemu.workDir, 'image.img');
    await writeFile(imageFile, image);
    const card = patternBytes(CARD_BYTES, CARD_SEED);
    const sdImage = join(qemu.workDir, 'sd.img');
    await writeFile(sdImage, card);
    const qmpSocket = join(qemu.workDir, 'qmp.sock'); // where startQemuBoard puts it
    await writeFile(
      join(qemu.workDir, 'targets.csv'),
      `name,mac,ip,reset,layout\n${TARGET},${MAC},127.0.0.1,qmp:${qmpSocket},seed\n`,
    );
    const config = await validateConfig(
      qemuAgentSettings(TOKEN, {
        flash: { seedPartSize: '5MiB' },
        timeouts: { boardShow: 30, stall: 30 },
        // The target's own layout column says seed; the default must not be what makes it pass.
        defaultLayout: 'whole',
      }),
      qemu.workDir,
    );
    const script = join(qemu.workDir, 'seed-card.scr');
    await writeSeedCardScript(script);

    const records: LogRecord[] = [];
    let agent: RunningAgent | undefined;
    let board: QemuBoard | undefined;
    let conn: AgentConnection | undefined;
    const jobLog: string[] = [];
    let result: JobResult | undefined;
    try {
      agent = await startAgent(config, { log: createLogger({ level: 'debug', sink: (r) => records.push(r) }) });
      board = await startQemuBoard({
        ubootBin: qemu.ubootBin,
        mac: MAC,
        tftpPort: agent.tftp.port,
        sdImage,
        stage1: script,
        env: {
          seed_card_blk: (CARD_IMAGE_AT / 512).toString(16),
          seed_report_addr: '0x47f00000',
          tftpblocksize: '1468',
          tftpwindowsize: '8',
          ...o.boardEnv,
        },
        // The seed card reboots after its report; without an image it stops (here: at the prompt).
        bootcmd: 'source ${stage1addr}; if test "${seed_state}" != none; then reset; fi',
        timeoutMs: RUN_TIMEOUT_MS,
        workDir: qemu.workDir,
      });
      const b = board;
      // The first boot finds no part 0; only then may the job be staged (else that boot could take it).
      await b.waitForConsole(/seed-card: no image for this board/, 60_000);
      const onEvent = (m: AgentMessage) => {
        if (m.type === 'log') jobLog.push(`${m.level} ${m.source} ${m.message}`);
      };
      conn = await connectAgent({ url: agent.url, token: TOKEN, client: 'seed-agent-qemu-test', onEvent });
      await conn.lease(TARGET, { holder: 'seed-agent-qemu-test' });
      const sha256 = await sha256File(imageFile);
      await conn.upload({ path: imageFile, sha256, size: image.length, compression: 'none' });
      result = await conn.flash({ sha256, bootCheck: 'none' });
      const tftpLeftovers = (await readdir(config.tftp.root)).filter((n) => !n.startsWith('.'));
      // The card ran once before the job and once for it; its reboot after the report runs it a third time.
      const noImageAfterReboot = await b
        .waitForConsole(/(?:[\s\S]*?seed-card: no image for this board){2}/, 30_000)
        .then(
          () => true,
          () => false,
        );
      const text = b.console();
      const part0Downloads = parseUbootTransfers(text).filter(
        (t) => t.file === `${SEED_FOLDER}/rpi_image_part_0`,
      ).length;
      await b.kill(); // before reading the card: QEMU may still hold writes
      return {
        result,
        jobLog,
        image,
        card,
        written: await readFile(sdImage),
        tftpLeftovers,
        noImageAfterReboot,
        part0Downloads,
        console: text,
      };
    } catch (err) {
      const e = err as Error;
      e.message +=
        `\n--- result ---\n${JSON.stringify(result)}` +
        `\n--- job log ---\n${jobLog.join('\n')}` +
        `\n--- board console ---\n${consoleTail(board?.console() ?? '')}` +
        `\n--- agent log ---\n${consoleTail(records.map(formatRecord).join('\n'))}`;
      throw e;
    } finally {
      conn?.close();
      await board?.kill();
      await agent?.stop();
    }
  }

  /** On a failed assertion, show what the run saw. */
  function explain(r: SeedRun, check: () => void): void {
    try {
      check();
    } catch (err) {
      const e = err as Error;
      e.message +=
        `\n--- result ---\n${JSON.stringify(r.result)}` +
        `\n--- job log ---\n${r.jobLog.join('\n')}` +
        `\n--- board console ---\n${consoleTail(r.console)}`;
      throw e;
    }
  }

  it(
    'OK: the card writes the image from 4 MiB on at its own offset, reports OK with the right count; ' +
      'the ":" folder is gone and the rebooted card finds nothing',
    async () => {
      const imageBytes = 12 * MiB + 1024; // parts of 5, 5 and 2 MiB + 1 KiB
      const r = await flashSeedCard({ imageBytes });
      explain(r, () => {
        expect(r.result).toMatchObject({ ok: true, code: 'OK', bytesWritten: imageBytes - 4 * MiB });
        expect(r.console).toContain(`seed-card: reported OK 0x${(imageBytes - 4 * MiB).toString(16)}`);
        expect(r.jobLog.some((l) => /seed card reported OK \(4 bytes\)/.test(l))).toBe(true);
        const written = imageBytes - 4 * MiB;
        expect(
          r.written.subarray(CARD_IMAGE_AT, CARD_IMAGE_AT + written).equals(r.image.subarray(4 * MiB)),
          'the card holds the image from byte 4 MiB on',
        ).toBe(true);
        expect(
          r.written.subarray(0, CARD_IMAGE_AT).equals(r.card.subarray(0, CARD_IMAGE_AT)),
          'the card before its offset is untouched',
        ).toBe(true);
        // mmc write works in whole blocks: the rest of the last block is whatever RAM held.
        const end = CARD_IMAGE_AT + Math.ceil(written / 512) * 512;
        expect(r.written.subarray(end).equals(r.card.subarray(end)), 'the card beyond the image is untouched').toBe(
          true,
        );
        expect(r.tftpLeftovers, 'the seed folder is gone').toEqual([]);
        expect(r.noImageAfterReboot, 'after its reboot the card finds no part 0').toBe(true);
        expect(r.part0Downloads, 'part 0 was downloaded once, for the job only').toBe(1);
      });
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'an image larger than the card: the card reports FAILED with what it wrote → BOARD_REPORTED_FAILURE',
    async () => {
      // From 6 MiB on the 16 MiB card holds 10 MiB; the image needs 14 MiB. Part 0 (1 MiB after
      // the skip) and part 1 (5 MiB) fit, part 2 does not.
      const r = await flashSeedCard({ imageBytes: 18 * MiB });
      explain(r, () => {
        expect(r.console).toContain('seed-card: writing part 2 failed');
        expect(r.console).toContain('seed-card: reported FAILED');
        expect(r.result).toMatchObject({ ok: false, code: 'BOARD_REPORTED_FAILURE', bytesWritten: 6 * MiB });
        expect(r.result.message).toMatch(/FAILED after writing 6291456 of 14680064 bytes/);
        expect(r.tftpLeftovers).toEqual([]);
        expect(r.noImageAfterReboot).toBe(true);
      });
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'the card reports OK with a wrong count → VERIFY_MISMATCH naming both counts',
    async () => {
      const imageBytes = 9 * MiB + 1024;
      const expected = imageBytes - 4 * MiB;
      // Test-only: the card adds 0x200 to its count before reporting.
      const r = await flashSeedCard({ imageBytes, boardEnv: { seed_test_count_offset: '200' } });
      explain(r, () => {
        expect(r.console).toContain('seed-card: reported OK');
        expect(r.result).toMatchObject({ ok: false, code: 'VERIFY_MISMATCH', bytesWritten: expected + 512 });
        expect(r.result.message).toContain(`reported OK with ${expected + 512} bytes written, expected ${expected}`);
        expect(r.tftpLeftovers).toEqual([]);
      });
    },
    TEST_TIMEOUT_MS,
  );
});
