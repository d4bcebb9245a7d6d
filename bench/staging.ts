/**
 * Staging bench: the agent's `stage` phase (plan parts, generate and write flash.scr, expose the
 * parts as byte ranges) for a 64 MiB and a 4 GiB (sparse) image. Staging copies nothing and reads
 * no image bytes (the part CRCs were computed while the image was stored), so both should take
 * the same time. Measured through the real protocol on a simulated board that never shows up.
 *
 *   npx tsx bench/staging.ts
 */
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { startLab } from '../test/support/lab.js';

const MiB = 1024 * 1024;

export async function runStagingBench(o: { rounds?: number } = {}): Promise<void> {
  const rounds = o.rounds ?? 5;
  const lab = await startLab({
    boards: [{ name: 'bench', mac: '02:00:00:00:be:01', reset: 'sim:no-show' }],
    config: {
      flash: { partSize: '64MiB' },
      timeouts: { boardShow: 0.05, stall: 5, boot: 5, leaseGrace: 5 },
      store: { maxBytes: '16GiB' },
      logLevel: 'warn',
    },
  });
  const rows: string[] = [];
  try {
    const seconds: Record<string, number[]> = {};
    for (const [label, size] of [
      ['64 MiB', 64 * MiB],
      ['4 GiB (sparse)', 4096 * MiB],
    ] as const) {
      const file = path.join(lab.dir, `sparse-${size}.img`);
      const fh = await open(file, 'w');
      await fh.write(Buffer.from('rpi-flash staging bench'), 0, 23, 0);
      await fh.truncate(size);
      await fh.close();
      const { sha256File } = await import('../test/support/lab.js');
      const sha256 = await sha256File(file);
      const conn = await lab.connect();
      await conn.lease('bench');
      const uploadStart = performance.now();
      await conn.upload({ path: file, sha256, size, compression: 'none' });
      const uploadSeconds = (performance.now() - uploadStart) / 1000;
      conn.close();
      await rm(file);
      seconds[label] = [];
      for (let i = 0; i < rounds; i++) {
        const c = await lab.connect();
        await c.lease('bench');
        const result = await c.flash({ sha256, bootCheck: 'none' });
        if (result.code !== 'BOARD_NO_SHOW') throw new Error(`unexpected result ${result.code}: ${result.message}`);
        seconds[label].push(result.timings.stage ?? NaN);
        c.close();
      }
      const sorted = [...seconds[label]].sort((a, b) => a - b);
      const medianMs = sorted[Math.floor(sorted.length / 2)]! * 1000;
      rows.push(
        `| ${label} | ${Math.ceil(size / (64 * MiB))} | ${medianMs.toFixed(0)} ms ` +
          `| (store ingest ${uploadSeconds.toFixed(1)} s, not staging) |`,
      );
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const small = median(seconds['64 MiB']!);
    const big = median(seconds['4 GiB (sparse)']!);
    console.log(`\nStaging time (median of ${rounds}; the agent's reported 'stage' phase, 1 ms resolution)`);
    console.log('| image | parts | stage | note |');
    console.log('|---|---|---|---|');
    for (const r of rows) console.log(r);
    console.log(`ratio 4 GiB / 64 MiB: ${small > 0 ? (big / small).toFixed(2) : 'n/a (under the 1 ms resolution)'}`);
  } finally {
    await lab.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runStagingBench().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
