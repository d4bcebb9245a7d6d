/**
 * TFTP download speed as a real U-Boot sees it: the agent flashes an image onto a QEMU board (the
 * same path as test/qemu/agent-flash.test.ts) with `flash.tftpWindowSize` 1 and 8, and the table
 * shows the rate U-Boot's `tftpboot` printed for each part (its "N MiB/s" line, MiB = 2^20 bytes)
 * — the median and range over all parts of all rounds — next to the transfer phase's seconds,
 * which include the emulated SD card's writes (about 8 MiB/s).
 *
 *   npx tsx bench/uboot-tftp.ts [sizeMiB] [rounds]
 *
 * Needs qemu-system-aarch64, u-boot-tools and the test U-Boot (bash scripts/build-test-uboot.sh);
 * without them it says so and measures nothing.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { runAgentScenario } from '../test/qemu/agent-scenario.js';
import { findTestUboot } from '../test/qemu/test-uboot.js';

const WINDOWS = [1, 8];
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
    await writeFile(imageFile, randomBytes(size));
    console.log(
      `U-Boot 2023.01 under QEMU ← the agent's TFTP server on loopback (slirp): ` +
        `${sizeMiB} MiB image in ${PART_MIB} MiB parts, blksize 1468, ${rounds} round(s)`,
    );
    const rows: string[][] = [
      ['windowsize', 'parts', 'U-Boot MiB/s (median)', 'min–max', 'transfer phase s (incl. SD writes)'],
    ];
    for (const windowsize of WINDOWS) {
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
        });
        if (!r.result.ok)
          throw new Error(
            `windowsize ${windowsize}: the job failed with ${r.result.code}: ${r.result.message} ` +
              `(console: ${r.consoleLog})`,
          );
        const parts = r.ubootTransfers.filter((t) => /\/part-\d+$/.test(t.file));
        if (parts.length !== r.result.parts.length)
          throw new Error(
            `windowsize ${windowsize}: U-Boot printed ${parts.length} part rates for ${r.result.parts.length} parts`,
          );
        rates.push(...parts.map((t) => t.mibPerSecond));
        phases.push(r.result.timings.transfer ?? NaN);
        await rm(join(dir, `w${windowsize}-${round}`), { recursive: true, force: true });
      }
      rows.push([
        String(windowsize),
        String(rates.length),
        median(rates).toFixed(1),
        `${Math.min(...rates).toFixed(1)}–${Math.max(...rates).toFixed(1)}`,
        median(phases).toFixed(1),
      ]);
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const row of rows) console.log(row.map((cell, i) => cell.padStart(widths[i]!)).join('  '));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [sizeMiB, rounds] = process.argv.slice(2).map(Number);
  await runUbootTftpBench(sizeMiB || undefined, rounds || undefined);
}
