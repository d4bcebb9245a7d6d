/**
 * Inject bench: the time to plan U-Boot's injection (the `inject` layout's share of staging) for a
 * 64 MiB and a 4 GiB (sparse) image whose boot partitions are the same — a 48 MiB FAT32 one
 * holding a Raspberry Pi OS-like config, a 9 MiB kernel and 24 MiB of device trees and firmware —
 * and only the root partition differs. Planning reads the MBR and the boot partition only, so
 * both should take the same time; the table shows the bytes each read.
 *
 *   npx tsx bench/inject.ts
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { planInjection } from '../runner-agent/src/image/inject.js';
import { buildTestImage } from '../test/image/build-image.js';
import { fakeGzipArm64Image, PI_OS_CMDLINE, PI_OS_CONFIG, stage1Script } from '../test/image/fixtures.js';

const MiB = 1024 * 1024;

export async function runInjectBench(o: { rounds?: number } = {}): Promise<void> {
  const rounds = o.rounds ?? 21;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-inject-bench-'));
  try {
    const files: Record<string, string | Buffer> = {
      'config.txt': PI_OS_CONFIG,
      'cmdline.txt': PI_OS_CMDLINE,
      'kernel8.img': fakeGzipArm64Image(9 * MiB),
      initramfs8: randomBytes(4 * MiB),
    };
    for (let i = 0; i < 40; i++) files[`bcm27${10 + (i % 3)}-rpi-board-variant-${i}.dtb`] = randomBytes(50 * 1024);
    for (let i = 0; i < 8; i++) files[`start${i}.elf`] = randomBytes(2 * MiB + i * 1000);
    const ubootBin = randomBytes(600 * 1024);
    const bootScr = stage1Script();
    const cases = [
      { label: '64 MiB', rootMiB: 64 - 4 - 48 },
      { label: '4 GiB (sparse)', rootMiB: 4096 - 4 - 48 },
    ].map((c) => ({ ...c, times: [] as number[], bytesRead: 0, patchBytes: 0, path: '', size: 0 }));
    for (const c of cases) {
      const image = await buildTestImage(dir, `bench-${c.rootMiB}.img`, {
        fat: 32,
        bootMiB: 48,
        rootMiB: c.rootMiB,
        sparseRoot: true,
        sectorsPerCluster: 1,
        files,
      });
      c.path = image.path;
      c.size = image.size;
    }
    // Rounds alternate between the images (and their order), so load from other processes on a
    // shared machine falls on both alike; the first round warms the page cache and the JIT.
    for (let round = 0; round <= rounds; round++) {
      const order = round % 2 ? [...cases].reverse() : cases;
      for (const c of order) {
        const start = performance.now();
        const result = await planInjection(c.path, c.size, { ubootBin, bootScr, model: 'pi4' });
        const ms = performance.now() - start;
        if (round > 0) c.times.push(ms);
        c.bytesRead = result.bytesRead;
        c.patchBytes = result.patches.reduce((n, p) => n + p.data.length, 0);
      }
    }
    const rows: string[] = [];
    const medians: number[] = [];
    for (const c of cases) {
      const times = [...c.times].sort((a, b) => a - b);
      const median = times[Math.floor(times.length / 2)]!;
      medians.push(median);
      rows.push(
        `| ${c.label} | ${median.toFixed(1)} ms | ${times[0]!.toFixed(1)}–${times[times.length - 1]!.toFixed(1)} ms ` +
          `| ${(c.bytesRead / MiB).toFixed(2)} MiB | ${(c.patchBytes / MiB).toFixed(2)} MiB |`,
      );
    }
    console.log(
      `\nInjection planning (planInjection; median of ${rounds} alternating rounds after a warm-up; ` +
        'same 48 MiB FAT32 boot partition)',
    );
    console.log('| image | median | range | read | patched |');
    console.log('|---|---|---|---|---|');
    for (const r of rows) console.log(r);
    console.log(`ratio 4 GiB / 64 MiB: ${(medians[1]! / medians[0]!).toFixed(2)}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await runInjectBench();
}
