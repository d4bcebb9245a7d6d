/**
 * What a flash costs when only the image's mapped ranges travel (issue 13): a real ext4 file
 * system (`mkfs.ext4 -d` of files copied from this machine's /usr: text, binaries, locales) in a
 * 1 GiB image with about 30 % of it in use, flashed by the real U-Boot under QEMU over the agent's
 * TFTP server, three ways in the same run:
 *   full        every byte, raw (flash.writeZeros, flash.compress off): today's flash before mapped writes
 *   mapped      only the mapped ranges, raw
 *   mapped+gzip only the mapped ranges, each part a gzip stream the board unzips (its caps probed before)
 * The table gives wire bytes, bytes written and the transfer phase's wall time, each as a ratio to
 * the full flash, and the goals: written ≤ mapped + 1 %, wire ≤ 1.1 × gzip -6 of the mapped data,
 * wall ≤ 0.4 × full. Then a model of a real Pi from the measured byte ratios and physical rates.
 *
 *   npx tsx bench/mapped-flash.ts [--size-mib=1024] [--used=0.3]
 *
 * Needs qemu-system-aarch64, u-boot-tools, e2fsprogs and the test U-Boot (bash scripts/build-test-uboot.sh).
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, open, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { deriveMappedRanges, mappedBytes, type MappedRange } from '../runner-agent/src/store/mapped-ranges.js';
import { runAgentScenario, type AgentScenarioResult } from '../test/qemu/agent-scenario.js';
import { findTestUboot } from '../test/qemu/test-uboot.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;
const MAC = '52:54:00:be:9c:02';
const PART = '64MiB';
const SOURCES = ['/usr/share', '/usr/lib'];

function option(name: string, fallback: number): number {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`));
  return arg ? Number(arg.slice(name.length + 3)) : fallback;
}

/** Copies regular files from SOURCES into `into` until `budget` bytes (what a root file system holds). */
async function gatherFiles(into: string, budget: number): Promise<number> {
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (total >= budget) return;
      const from = join(dir, e.name);
      if (e.isDirectory()) await walk(from);
      else if (e.isFile()) {
        const size = (await stat(from)).size;
        if (size === 0 || total + size > budget) continue;
        const to = join(into, relative('/', from));
        await mkdir(join(to, '..'), { recursive: true });
        await copyFile(from, to).then(
          () => (total += size),
          () => undefined,
        );
      }
    }
  };
  for (const source of SOURCES) await walk(source);
  return total;
}

async function mappedGzipSize(image: string, ranges: readonly MappedRange[]): Promise<number> {
  const handle = await open(image, 'r');
  try {
    let size = 0;
    for (const r of ranges) {
      for (let at = 0; at < r.length; at += 64 * MiB) {
        const n = Math.min(64 * MiB, r.length - at);
        const buffer = Buffer.alloc(n);
        await handle.read(buffer, 0, n, r.offset + at);
        size += gzipSync(buffer, { level: 6 }).length;
      }
    }
    return size;
  } finally {
    await handle.close();
  }
}

interface Run {
  name: string;
  result: AgentScenarioResult['result'];
  transferSeconds: number;
  jobSeconds: number;
}

const mb = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
const ratio = (a: number, b: number) => (b > 0 ? (a / b).toFixed(3) : '—');

export async function runMappedFlashBench(): Promise<void> {
  const found = await findTestUboot();
  if (!found.ok) {
    console.log(`mapped-flash: skipped — ${found.reason}`);
    return;
  }
  const sizeMiB = option('size-mib', 1024);
  const used = option('used', 0.3);
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-bench-mapped-'));
  try {
    const root = join(dir, 'root');
    await mkdir(root);
    const files = await gatherFiles(root, Math.floor(sizeMiB * MiB * used * 0.95));
    const image = join(dir, 'rootfs.ext4');
    await writeFile(image, '');
    await truncate(image, sizeMiB * MiB);
    await execFileAsync('mkfs.ext4', ['-q', '-F', '-d', root, image]);
    await rm(root, { recursive: true, force: true });
    const ranges = await deriveMappedRanges(image, sizeMiB * MiB, MiB);
    const mapped = mappedBytes(ranges);
    const gzip6 = await mappedGzipSize(image, ranges);
    console.log(
      `ext4 image of ${sizeMiB} MiB with ${mb(files)} of files from ${SOURCES.join(', ')}: ` +
        `${mb(mapped)} mapped (${((100 * mapped) / (sizeMiB * MiB)).toFixed(1)} %), ` +
        `gzip -6 of the mapped data ${mb(gzip6)}; ` +
        `U-Boot 2023.01 under QEMU, ${PART} parts, windowsize as configured`,
    );

    const runs: Run[] = [];
    const variants: Array<{ name: string; flash: Record<string, unknown>; caps?: { unzip: boolean } }> = [
      { name: 'full', flash: { writeZeros: true, compress: 'off' } },
      { name: 'mapped', flash: { compress: 'off' } },
      { name: 'mapped+gzip', flash: {}, caps: { unzip: true } },
    ];
    for (const v of variants) {
      const r = await runAgentScenario({
        ubootBin: found.ubootBin,
        workDir: join(dir, v.name),
        mac: MAC,
        imageFile: image,
        sdSize: sizeMiB * MiB,
        sdFill: 0x5a,
        flash: { partSize: PART, ...v.flash },
        ...(v.caps ? { caps: v.caps } : {}),
        timeoutMs: 30 * 60_000,
      });
      await rm(r.sdImage, { force: true });
      if (!r.result.ok) throw new Error(`${v.name}: the job failed with ${r.result.code}: ${r.result.message}`);
      runs.push({
        name: v.name,
        result: r.result,
        transferSeconds: (r.result.timings.transfer ?? 0) + (r.result.timings.verify ?? 0),
        jobSeconds: r.jobMs / 1000,
      });
    }

    const full = runs[0]!;
    const rows = [
      ['run', 'wire bytes', 'written', 'transfer+verify s', 'job s', 'wire / full', 'written / full', 'wall / full'],
    ];
    for (const r of runs) {
      const wire = r.result.wireBytes ?? 0;
      rows.push([
        r.name,
        mb(wire),
        mb(r.result.bytesWritten),
        r.transferSeconds.toFixed(1),
        r.jobSeconds.toFixed(1),
        ratio(wire, full.result.wireBytes ?? 0),
        ratio(r.result.bytesWritten, full.result.bytesWritten),
        ratio(r.jobSeconds, full.jobSeconds),
      ]);
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
    for (const row of rows) console.log(row.map((c, i) => c.padEnd(widths[i]!)).join('  '));

    const best = runs[2]!;
    const goals = [
      [
        `written ≤ mapped + 1 %`,
        best.result.bytesWritten <= mapped * 1.01,
        `${mb(best.result.bytesWritten)} vs ${mb(mapped)}`,
      ],
      [
        `wire ≤ 1.1 × gzip -6`,
        (best.result.wireBytes ?? Infinity) <= 1.1 * gzip6,
        `${ratio(best.result.wireBytes ?? 0, gzip6)} × gzip -6`,
      ],
      [
        `wall ≤ 0.4 × full`,
        best.jobSeconds <= 0.4 * full.jobSeconds,
        `${ratio(best.jobSeconds, full.jobSeconds)} × full`,
      ],
    ] as const;
    for (const [goal, met, figure] of goals) console.log(`goal ${goal}: ${met ? 'met' : 'MISSED'} (${figure})`);

    // A real Pi: download then write, part after part (stage 2 does not overlap them); gzip's
    // inflate on the board's CPU is not modelled (U-Boot's inflate runs at tens of MB/s on an A53).
    const sdWrite = 20e6;
    console.log('Model of a real board (network, then SD write at 20 MB/s, part after part):');
    for (const [board, net] of [
      ['Pi 3B', 11.8e6],
      ['Pi 3B+', 28e6],
      ['Pi 4', 110e6],
    ] as const) {
      const t = (r: Run) => (r.result.wireBytes ?? 0) / net + r.result.bytesWritten / sdWrite;
      console.log(
        `  ${board.padEnd(7)} full ${t(full).toFixed(0)} s, mapped ${t(runs[1]!).toFixed(0)} s, ` +
          `mapped+gzip ${t(best).toFixed(0)} s (${ratio(t(best), t(full))} × full)`,
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await runMappedFlashBench();
