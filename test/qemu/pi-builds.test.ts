/**
 * Issue 10 item 1: the stage-2 script the agent generates, run by each of Debian's six real Pi
 * U-Boot builds on its QEMU Pi machine (pi-board.ts), with the parts preloaded into RAM instead of
 * TFTP (no NIC there). The card is compared byte for byte; the reports are read by the agent's own
 * beacon parser. Item 2: every build takes the native (little-endian) crc32 path.
 */
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { boardCrcText, type Beacon } from '../../runner-agent/src/board/beacons.js';
import { RAM_MARGIN, UBOOT_RESERVE } from '../../runner-agent/src/board/ram.js';
import { DEFAULTS } from '../../runner-agent/src/config.js';
import { PI_BUILDS, PI_MACHINES, piTestGate, type PiBuild } from './pi-board.js';
import {
  CARD_FILL,
  IMAGE_ADDR,
  machineOf,
  runStage2OnPi,
  type PiStage2Options,
  type PiStage2Result,
} from './pi-stage2.js';
import { useQemuWorkspace } from './test-uboot.js';

const gate = await piTestGate("stage 2 on Debian's Pi U-Boot builds (QEMU Pi machines)");

const MiB = 1024 ** 2;
const hex = (n: number) => `0x${n.toString(16)}`;
const RUN_TIMEOUT_MS = 90_000;
/** Small parts keep the 18 runs to seconds each; one test below uses the default 64 MiB. */
const PART = 256 * 1024;
const CARD = 4 * MiB;

/** Every command uboot/boot.cmd and the generated stage 2 (both transfers) run, but the boot ones. */
const STAGES_USE = [
  'cp',
  'crc32',
  'dhcp',
  'echo',
  'env',
  'fatload',
  'fdt',
  'itest',
  'mmc',
  'mw',
  'reset',
  'run',
].concat(['setenv', 'setexpr', 'source', 'test', 'tftpboot', 'usb']);

const ok = (r: PiStage2Result, n: number): Beacon => ({
  kind: 'part-ok',
  part: n,
  crc: boardCrcText(crc32(r.served[n - 1]!)),
});

/** The card after a job: the image where the parts went, the old contents everywhere else. */
function expectCard(r: PiStage2Result, image: Buffer, writtenParts: number): void {
  const expected = Buffer.alloc(r.card.length, CARD_FILL);
  const written = Buffer.concat(r.served.slice(0, writtenParts));
  expect(written.subarray(0, Math.min(written.length, image.length)).equals(image.subarray(0, written.length))).toBe(
    true,
  );
  written.copy(expected, 0);
  // Buffer.equals first: a mismatch of megabytes is not worth a diff; then where it differs.
  if (!r.card.equals(expected)) {
    const at = r.card.findIndex((b, i) => b !== expected[i]);
    throw new Error(`the card differs from the expected bytes first at offset ${at} (${written.length} written)`);
  }
}

describe.skipIf(!gate.run)(gate.title, () => {
  // useQemuWorkspace's "ubootBin" is here the folder of the fetched builds.
  const ws = useQemuWorkspace({ ubootBin: () => gate.folder() }, { prefix: 'rpi-flash-pi-' });
  const timings: string[] = [];
  const memory: string[] = [];
  /** One run of stage 2 on a build, with the small parts and card unless `over` says otherwise. */
  const run = (build: PiBuild, image: Buffer, over: Partial<PiStage2Options> = {}) =>
    runStage2OnPi({
      folder: ws.ubootBin,
      build,
      workDir: ws.workDir,
      image,
      partSize: PART,
      cardSize: CARD,
      timeoutMs: RUN_TIMEOUT_MS,
      ...over,
    });

  for (const build of PI_BUILDS) {
    describe(`${build} on ${machineOf(build)}`, () => {
      it('writes a 4-part image byte for byte, reports every part, and takes the native crc32 path', async () => {
        const image = randomBytes(3 * PART + 1000);
        const r = await run(build, image);
        timings.push(`${build} ok: ${Math.round(r.ms)} ms`);
        memory.push(`${build}: RAM ${hex(r.memory.ramSize)}, U-Boot's reserve from ${hex(r.memory.reservedFrom)}`);
        expect(r.memory.ramSize).toBe(PI_MACHINES[build].ramMiB * MiB);
        // Item 2: these builds store crc32's result natively, so the script never byte-swaps.
        expect(r.crcFix).toBe('true');
        // What stage 1 and stage 2 run is on every build; unzip and gzwrite only on the 64-bit ones.
        const missing = [...STAGES_USE, PI_MACHINES[build].arch === 'arm64' ? 'booti' : 'bootz'].filter(
          (c) => !r.commands.has(c),
        );
        expect(missing).toEqual([]);
        const has64BitOnly = ['unzip', 'gzwrite'].map((c) => r.commands.has(c));
        expect(has64BitOnly).toEqual(PI_MACHINES[build].arch === 'arm64' ? [true, true] : [false, false]);
        expect(r.beacons).toEqual([
          { kind: 'start' },
          ...r.parts.map((p) => ok(r, p.index)),
          { kind: 'done', ok: true },
        ]);
        expectCard(r, image, r.parts.length);
      });

      it('retries a part whose CRC is wrong, then fails it; the card past part 1 is untouched', async () => {
        const image = randomBytes(3 * PART);
        const r = await run(build, image, { corruptPart: 2 });
        timings.push(`${build} bad CRC: ${Math.round(r.ms)} ms`);
        const bad = r.served[1]!;
        bad[Math.floor(bad.length / 2)]! ^= 0xff;
        const badCrc = boardCrcText(crc32(bad));
        expect(badCrc).not.toBe(boardCrcText(r.parts[1]!.crc32));
        expect(r.beacons).toEqual([
          { kind: 'start' },
          ok(r, 1),
          ...Array.from({ length: DEFAULTS.flash.retries }, (_, i) => ({
            kind: 'part-retry',
            part: 2,
            attempt: i + 1,
            reason: 'crc',
            crc: badCrc,
          })),
          { kind: 'part-failed', part: 2, stage: 'download', crc: badCrc },
          { kind: 'done', ok: false },
        ]);
        expectCard(r, image, 1);
      });

      it("refuses, writing nothing, a load buffer inside U-Boot's reserve under the firmware's RAM top", async () => {
        const top = PI_MACHINES[build].ramMiB * MiB;
        const image = randomBytes(2 * PART);
        // The buffer ends 20 MiB under the top, inside what the probe keeps for U-Boot's reserve and the margin.
        const r = await run(build, image, { loadAddr: top - 20 * MiB - PART });
        timings.push(`${build} no room: ${Math.round(r.ms)} ms`);
        expect(r.beacons).toEqual([
          { kind: 'start' },
          { kind: 'no-room', top: top.toString(16) },
          { kind: 'done', ok: false },
        ]);
        expectCard(r, image, 0);
      });

      it('refuses an image larger than the card before writing anything', async () => {
        const image = randomBytes(CARD + 4096);
        const r = await run(build, image, { partSize: MiB });
        timings.push(`${build} too large: ${Math.round(r.ms)} ms`);
        expect(r.beacons).toEqual([{ kind: 'start' }, { kind: 'too-large' }, { kind: 'done', ok: false }]);
        expect(r.console).toMatch(/exceeds max/);
        expectCard(r, image, 0);
      });
    });
  }

  /** Compressible like a disk image: random runs between runs of text. */
  const compressible = (size: number) => {
    const data = Buffer.from('rpi-flash compressible image '.repeat(Math.ceil(size / 29))).subarray(0, size);
    for (let at = 0; at < size; at += 64 * 1024) randomBytes(Math.min(8 * 1024, size - at)).copy(data, at);
    return data;
  };

  // Issue 13 item 2: gzip'd parts where the build has unzip, and the clear refusal where it has not.
  for (const build of PI_BUILDS) {
    const has = PI_MACHINES[build].arch === 'arm64';
    const what = has ? 'are unzipped and written byte for byte' : 'are refused: no-unzip, nothing written';
    it(`${build}: compressed parts ${what}`, async () => {
      // The last part too is smaller gzip'd (its stream lies where its raw bytes would).
      const image = compressible(3 * PART + 9000);
      const r = await run(build, image, { gzip: true });
      timings.push(`${build} gzip'd: ${Math.round(r.ms)} ms`);
      // `help unzip` fails whether or not the command exists: no probe for it (stage2-script.ts).
      expect(r.helpUnzipStatus).toBe('1');
      if (!has) {
        expect(r.console).toMatch(/Unknown command 'unzip'/);
        expect(r.beacons).toEqual([{ kind: 'start' }, { kind: 'no-unzip' }, { kind: 'done', ok: false }]);
        expectCard(r, image, 0);
        return;
      }
      expect(r.beacons).toEqual([{ kind: 'start' }, ...r.parts.map((p) => ok(r, p.index)), { kind: 'done', ok: true }]);
      // unzip prints the inflated size (and sets filesize to it): the probe's 88 bytes, then each part.
      expect(r.console).toMatch(/Uncompressed size: 88 = 0x58/);
      expect(
        r.console.match(new RegExp(`Uncompressed size: ${PART} = 0x${PART.toString(16).toUpperCase()}`, 'g')),
      ).toHaveLength(3);
      expectCard(r, image, r.parts.length);
    });
  }

  for (const build of ['rpi_3', 'rpi_arm64'] as const)
    it(`${build}: a gzip stream that does not inflate: retried, failed; the card past part 1 untouched`, async () => {
      const image = compressible(3 * PART);
      const r = await run(build, image, { gzip: true, corruptZip: 2 });
      timings.push(`${build} bad gzip: ${Math.round(r.ms)} ms`);
      expect(r.console).toMatch(/Error: inflate\(\) returned -3/);
      expect(r.beacons).toEqual([
        { kind: 'start' },
        ok(r, 1),
        { kind: 'part-retry', part: 2, attempt: 1, reason: 'unzip' },
        { kind: 'part-retry', part: 2, attempt: 2, reason: 'unzip' },
        { kind: 'part-failed', part: 2, stage: 'unzip' },
        { kind: 'done', ok: false },
      ]);
      expectCard(r, image, 1);
    });

  const PROBE_SAYS = { rpi_2: 'is silent', rpi_3: 'says caps-unzip' } as const;
  for (const build of ['rpi_2', 'rpi_3'] as const)
    it(`${build}: a raw job's unzip probe ${PROBE_SAYS[build]}; raw parts written`, async () => {
      const image = compressible(2 * PART);
      const r = await run(build, image, { probeUnzip: true });
      timings.push(`${build} probe: ${Math.round(r.ms)} ms`);
      expect(r.beacons).toEqual([
        { kind: 'start' },
        ...(build === 'rpi_3' ? [{ kind: 'caps-unzip' } as const] : []),
        ok(r, 1),
        ok(r, 2),
        { kind: 'done', ok: true },
      ]);
      expectCard(r, image, 2);
    });

  // Issue 13 item 4: read-compare on a 64-bit and a 32-bit build.
  for (const build of ['rpi_3', 'rpi_2'] as const)
    it(`${build}: read-compare skips the parts the card holds and writes the one that differs`, async () => {
      const image = randomBytes(3 * PART);
      const held = Buffer.from(image);
      held[PART + 5]! ^= 0xff;
      const r = await run(build, image, { readCompare: true, cardHolds: held });
      timings.push(`${build} read-compare: ${Math.round(r.ms)} ms`);
      const same = (n: number): Beacon => ({ kind: 'part-same', part: n, crc: boardCrcText(crc32(r.served[n - 1]!)) });
      expect(r.beacons).toEqual([{ kind: 'start' }, same(1), ok(r, 2), same(3), { kind: 'done', ok: true }]);
      expect(r.card.subarray(0, image.length).equals(image)).toBe(true);
    });

  it(
    'the default 64 MiB parts on a 448 MiB board (rpi_0_w on raspi0): both parts written and verified',
    async () => {
      const partSize = DEFAULTS.flash.partSize;
      expect(partSize).toBe(64 * MiB);
      const image = randomBytes(partSize + 64 * 1024);
      const r = await run('rpi_0_w', image, { partSize, cardSize: 128 * MiB, timeoutMs: 5 * 60_000 });
      timings.push(`rpi_0_w 64 MiB parts: ${Math.round(r.ms)} ms`);
      expect(r.memory.ramSize).toBe(448 * MiB);
      expect(r.memory.reservedFrom).toBeGreaterThan(IMAGE_ADDR + image.length);
      expect(r.beacons).toEqual([{ kind: 'start' }, ok(r, 1), ok(r, 2), { kind: 'done', ok: true }]);
      expectCard(r, image, 2);
    },
    6 * 60_000,
  );

  for (const build of ['rpi', 'rpi_3'] as const)
    it(`${build}: a load buffer ending right at the reserve and margin under the RAM top passes`, async () => {
      const top = PI_MACHINES[build].ramMiB * MiB;
      const image = randomBytes(2 * PART);
      const r = await run(build, image, { loadAddr: top - UBOOT_RESERVE - RAM_MARGIN - PART });
      timings.push(`${build} just fits: ${Math.round(r.ms)} ms`);
      expect(r.memory.reservedFrom).toBeGreaterThan(top - UBOOT_RESERVE);
      expect(r.beacons).toEqual([{ kind: 'start' }, ok(r, 1), ok(r, 2), { kind: 'done', ok: true }]);
      expectCard(r, image, 2);
    });

  // The run times, for the record (the CI log shows what the matrix costs).
  afterAll(() => console.log(`Pi U-Boot runs:\n  ${[...timings, ...memory].join('\n  ')}`));
});
