/**
 * TFTP download speed as a real U-Boot sees it: the agent flashes an image onto a QEMU board (the
 * same path as test/qemu/agent-flash.test.ts) with `flash.tftpWindowSize` 1, 4, 8 and 16, and the
 * table shows the rate U-Boot's `tftpboot` printed for each part (its "N MiB/s" line, MiB = 2^20
 * bytes) — the median and range over all parts of all rounds — next to the transfer phase's
 * seconds, which include the emulated SD card's writes (about 8 MiB/s).
 *
 * Then compressed parts (issue 13 item 2): the same image with the board's unzip confirmed, at
 * windowsize 1 and 8, against raw in the same run (the transfer phase's ratio), and the agent's
 * CPU per MB for gzip'ing the parts (from the job's log line) against a bare zlib gzip of the
 * same bytes in this process. The image is compressible like a disk image: a quarter random bytes,
 * the rest text. Last, read-compare (issue 13 item 4): a card that already holds the image, flashed
 * raw at windowsize 1 with `flash.readCompare` off and on (the transfer phase's ratio).
 *
 *   npx tsx bench/uboot-tftp.ts [sizeMiB] [rounds]
 *
 * Needs qemu-system-aarch64, u-boot-tools and the test U-Boot (bash scripts/build-test-uboot.sh);
 * without them it says so and measures nothing.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { runAgentScenario } from '../test/qemu/agent-scenario.js';
import { findTestUboot } from '../test/qemu/test-uboot.js';
import { printColumns } from './report.js';

const WINDOWS = [1, 4, 8, 16];
const GZIP_WINDOWS = [1, 8];
const PART_MIB = 8;
const MAC = '52:54:00:be:9c:01';

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The card: the smallest power of two (QEMU's sd-card needs one) above the image. */
function cardSize(bytes: number): number {
  let size = 1024 * 1024;
  while (size <= bytes) size *= 2;
  return size;
}

export async function runUbootTftpBench(sizeMiB = 16, rounds = 2): Promise<void> {
  const found = await findTestUboot();
  if (!found.ok) {
    console.log(`uboot-tftp: skipped — ${found.reason}`);
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-bench-uboot-'));
  try {
    const imageFile = join(dir, 'image.raw');
    const size = sizeMiB * 1024 * 1024;
    // A quarter random (in 16 KiB runs every 64 KiB), the rest text: gzip makes it about 3.5× smaller.
    const image = Buffer.from('rpi-flash bench image text '.repeat(Math.ceil(size / 27))).subarray(0, size);
    for (let at = 0; at < size; at += 64 * 1024) randomBytes(16 * 1024).copy(image, at);
    await writeFile(imageFile, image);
    console.log(
      `U-Boot 2023.01 under QEMU ← the agent's TFTP server on loopback (slirp): ` +
        `${sizeMiB} MiB image in ${PART_MIB} MiB parts, blksize 1468, ${rounds} round(s)`,
    );
    const rows: string[][] = [
      ['parts as', 'windowsize', 'parts', 'U-Boot MiB/s (median)', 'min–max', 'transfer phase s (incl. SD writes)'],
    ];
    const phaseOf = new Map<string, number>();
    const cpuPerMb: number[] = [];
    const configs = [
      ...WINDOWS.map((w) => ({ windowsize: w, gzip: false })),
      ...GZIP_WINDOWS.map((w) => ({ windowsize: w, gzip: true })),
    ];
    for (const { windowsize, gzip } of configs) {
      const rates: number[] = [];
      const phases: number[] = [];
      for (let round = 0; round < rounds; round++) {
        const r = await runAgentScenario({
          ubootBin: found.ubootBin,
          workDir: join(dir, `w${windowsize}-${round}`),
          mac: MAC,
          imageFile,
          sdSize: cardSize(size),
          sdFill: 0,
          flash: { partSize: `${PART_MIB}MiB`, ...(windowsize > 1 ? { tftpWindowSize: windowsize } : {}) },
          timeoutMs: 120_000,
          ...(gzip ? { caps: { unzip: true } } : {}),
        });
        if (!r.result.ok)
          throw new Error(
            `windowsize ${windowsize}: the job failed with ${r.result.code}: ${r.result.message} ` +
              `(console: ${r.consoleLog})`,
          );
        const parts = r.ubootTransfers.filter((t) => (gzip ? /\/part-\d+\.gz$/ : /\/part-\d+$/).test(t.file));
        const cpu = r.jobLog.map((l) => /ms CPU \((\d+(?:\.\d+)?) ms\/MB\)/.exec(l)).find(Boolean);
        if (gzip && cpu) cpuPerMb.push(Number(cpu[1]));
        if (parts.length !== r.result.parts.length)
          throw new Error(
            `windowsize ${windowsize}: U-Boot printed ${parts.length} part rates for ${r.result.parts.length} parts`,
          );
        rates.push(...parts.map((t) => t.mibPerSecond));
        phases.push(r.result.timings.transfer ?? NaN);
        await rm(join(dir, `w${windowsize}-${round}`), { recursive: true, force: true });
      }
      phaseOf.set(`${gzip}-${windowsize}`, median(phases));
      rows.push([
        gzip ? 'gzip' : 'raw',
        String(windowsize),
        String(rates.length),
        median(rates).toFixed(1),
        `${Math.min(...rates).toFixed(1)}–${Math.max(...rates).toFixed(1)}`,
        median(phases).toFixed(1),
      ]);
    }
    printColumns(rows);
    for (const w of GZIP_WINDOWS) {
      const ratio = phaseOf.get(`true-${w}`)! / phaseOf.get(`false-${w}`)!;
      console.log(`gzip'd vs raw transfer phase at windowsize ${w}: ${ratio.toFixed(2)}×`);
    }
    // Read-compare: the card holds the image already; off (the reference) and on, in the same run.
    const reflash: Record<string, number[]> = { off: [], on: [] };
    for (let round = 0; round < rounds; round++)
      for (const mode of ['off', 'on'] as const) {
        const r = await runAgentScenario({
          ubootBin: found.ubootBin,
          workDir: join(dir, `rc-${mode}-${round}`),
          mac: MAC,
          imageFile,
          sdSize: cardSize(size),
          sdFill: 0,
          sdHoldsImage: true,
          flash: { partSize: `${PART_MIB}MiB`, compress: 'off', readCompare: mode === 'on' },
          timeoutMs: 120_000,
        });
        if (!r.result.ok) throw new Error(`read-compare ${mode}: ${r.result.code}: ${r.result.message}`);
        reflash[mode]!.push(r.result.timings.transfer ?? NaN);
        await rm(join(dir, `rc-${mode}-${round}`), { recursive: true, force: true });
      }
    const [off, on] = [median(reflash.off!), median(reflash.on!)];
    console.log(
      `re-flash of an image the card holds, windowsize 1: transfer phase ${off.toFixed(1)} s without ` +
        `read-compare, ${on.toFixed(1)} s with it: ${(on / off).toFixed(2)}×`,
    );
    // The reference: a bare zlib gzip (level 6) of the same bytes, in this process, in 8 MiB parts.
    const cpu = process.cpuUsage();
    for (let at = 0; at < size; at += PART_MIB * 1024 * 1024) gzipSync(image.subarray(at, at + PART_MIB * 1024 * 1024));
    const used = process.cpuUsage(cpu);
    const bare = (used.user + used.system) / 1000 / (size / 1e6);
    const agent = median(cpuPerMb);
    console.log(
      `compressing parts: the agent ${agent.toFixed(1)} ms CPU/MB (median of ${cpuPerMb.length} jobs), ` +
        `bare zlib gzip ${bare.toFixed(1)} ms CPU/MB: ${(agent / bare).toFixed(2)}× ` +
        `(gzip'd size ${((100 * gzipSync(image).length) / size).toFixed(1)}% of the image)`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [sizeMiB, rounds] = process.argv.slice(2).map(Number);
  await runUbootTftpBench(sizeMiB || undefined, rounds || undefined);
}
