/**
 * Network boot against flash and boot (issue 11's speed goal): the time from the board's reset to
 * the root's marker on its console, for the same 512 MiB image two ways in the same run, both
 * driven by the real agent inside `unshare -rn` (test/qemu/netboot-agent-scenario.ts: full-mode
 * DHCP and TFTP on the tap link, a QEMU virt VM whose test U-Boot stands in for the Pi firmware):
 *
 *   diskless     method netboot: DHCP as a Pi 3 ROM, TFTP of kernel8.img and initrd.img out of the
 *                stored image's boot partition, the root over the job's NBD export; the card untouched
 *   flash+boot   layout netflash onto a blank card (the agent's defaults: 64 MiB parts, gzip'd since
 *                the board's unzip is known from an earlier job, zeros skipped), then the stage-2
 *                reset; the VM's U-Boot boots as Debian's distro boot does, the card first: the
 *                flashed stage 1 finds no job and boots the card's kernel, whose initramfs mounts
 *                the root on the card (root=PARTUUID=, the image's own cmdline.txt)
 *
 * Both jobs check the boot on the console (`console:` the root's marker); reset → marker runs from
 * the job's reset phase to the marker line as the agent's console capture read it. The table gives
 * both times, the ratio (goal: diskless ≤ 0.3 × flash+boot), the flash's phases, wire bytes and
 * MB/s. The image: Debian's arm64 kernel and the netboot initramfs in a 56 MiB boot partition, an
 * ext4 root filling the rest, holding real files copied from this machine's /usr (≥ 8 KiB each,
 * so the file system keeps inodes enough), `--root-mib` of them.
 *
 *   npx tsx bench/netboot.ts [--rounds=1] [--root-mib=300] [--raw] [--os-dir=<prepared folder>]
 *
 * `--raw` flashes uncompressed parts (the board's unzip not known). `--os-dir` names a folder made
 * by scripts/prepare-netboot-os.sh (the default: the newest prepared one, prepared now if none); its
 * modules must include sdhci-pci (the card's driver, for the boot from the card), as the script's
 * netboot list does. Needs qemu-system-aarch64, u-boot-tools, the test U-Boot, nbdkit, mtools,
 * dosfstools, e2fsprogs, fdisk and iproute2 with user namespaces. KEEP_NETBOOT_BENCH_DIR=1 keeps
 * the work folder (agent logs, job records with the consoles, the cards) for a look afterwards.
 */
import { copyFile, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import type {
  NetbootAgentBoard,
  NetbootAgentInput,
  NetbootAgentJob,
  NetbootAgentResult,
} from '../test/qemu/netboot-agent-scenario.js';
import {
  buildNetbootTestImage,
  findNetbootOsParts,
  netbootImageToolsAvailable,
  prepareNetbootOsParts,
  readNetbootOsParts,
  type NetbootOsParts,
} from '../test/qemu/netboot-os.js';
import { privateNetworkAvailable, runInPrivateNetwork } from '../test/qemu/netboot-vm.js';
import { INIT_BANNER, newMarker, stage1ScriptImage } from '../test/qemu/os-image.js';
import { findTestUboot } from '../test/qemu/test-uboot.js';
import { loadAverage, numberOption, option, printColumns } from './report.js';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 512 * MiB;
/** The netboot test OS's boot partition (from 4 MiB): Debian's 33 MB kernel and the initramfs. */
const BOOT_PARTITION = 56 * MiB;
const SOURCES = ['/usr/lib', '/usr/share'];
/** Files smaller than this stay out: a root of small files would run out of inodes first. */
const MIN_FILE = 8 * 1024;
/** Per VM: a 512 MiB flash through emulated SD writes (~8 MiB/s) and a boot, on 2 busy cores. */
const BOARD_TIMEOUT_MS = 30 * 60_000;
const CARD_MODULE = /\/sdhci-pci\.ko$/;

/** Copies regular files from SOURCES into `into`, in name order, until `budget` bytes. */
async function gatherFiles(into: string, budget: number): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  const walk = async (dir: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (bytes >= budget) return;
      const from = join(dir, e.name);
      if (e.isDirectory()) await walk(from);
      else if (e.isFile()) {
        const size = await stat(from).then(
          (s) => s.size,
          () => 0,
        );
        if (size < MIN_FILE || bytes + size > budget) continue;
        const to = join(into, relative('/', from));
        await mkdir(join(to, '..'), { recursive: true });
        await copyFile(from, to).then(
          () => {
            bytes += size;
            files++;
          },
          () => undefined,
        );
      }
    }
  };
  for (const source of SOURCES) await walk(source);
  return { bytes, files };
}

async function osParts(): Promise<NetbootOsParts> {
  const dir = option('os-dir');
  const parts = dir ? await readNetbootOsParts(dir) : ((await findNetbootOsParts()) ?? (await prepareNetbootOsParts()));
  if (!parts.modules.some((m) => CARD_MODULE.test(m)))
    throw new Error(
      `the test OS in ${parts.dir} has no sdhci-pci module, so the flashed card's kernel cannot reach its ` +
        'root on the card: scripts/prepare-netboot-os.sh must list sdhci_pci among the netboot modules ' +
        '(or pass --os-dir=<a folder prepared with it>)',
    );
  return parts;
}

interface Measured {
  /** Reset phase start → the marker line, seconds. */
  resetToMarker: number;
  job: NetbootAgentJob;
}

function measure(job: NetbootAgentJob, marker: string, what: string): Measured {
  const { result } = job;
  if (!result.ok) throw new Error(`${what}: the job failed with ${result.code}: ${result.message}`);
  const resetAt = job.phaseStartedAt.reset;
  const markerAt = job.consoleLines.find((l) => l.line.includes(`${INIT_BANNER} ${marker}`))?.time;
  if (resetAt === undefined || markerAt === undefined)
    throw new Error(`${what}: no reset phase (${resetAt}) or no marker line on the console (${markerAt})`);
  return { resetToMarker: (markerAt - resetAt) / 1000, job };
}

/** The flash's TFTP: the parts' wire bytes over the seconds the agent spent serving them (its "served" lines). */
function servedRate(job: NetbootAgentJob): { bytes: number; seconds: number } {
  let bytes = 0;
  let seconds = 0;
  for (const line of job.jobLog) {
    const m = /part \d+\/\d+: served (\d+) bytes in (\d+(?:\.\d+)?) s/.exec(line);
    if (m) {
      bytes += Number(m[1]);
      seconds += Number(m[2]);
    }
  }
  return { bytes, seconds };
}

const median = (values: number[]): number => {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

export async function runNetbootBench(): Promise<void> {
  const rounds = numberOption('rounds', 1);
  const rootMiB = numberOption('root-mib', 300);
  const raw = option('raw') !== undefined;
  const uboot = await findTestUboot();
  const network = await privateNetworkAvailable();
  const tools = await netbootImageToolsAvailable();
  for (const gate of [uboot, network, tools])
    if (!gate.ok) {
      console.log(`netboot: skipped — ${gate.reason}`);
      return;
    }
  if (!uboot.ok) return;
  const parts = await osParts();
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-bench-netboot-'));
  try {
    const marker = newMarker('bench-netboot');
    const image = join(dir, 'image.img');
    let content = { bytes: 0, files: 0 };
    const rootSize = IMAGE_SIZE - 4 * MiB - BOOT_PARTITION;
    await buildNetbootTestImage({
      path: image,
      parts,
      marker,
      bootPartitionSize: BOOT_PARTITION,
      rootPartitionSize: rootSize,
      populateRoot: async (tree) => void (content = await gatherFiles(tree, rootMiB * MiB)),
    });
    const stage1 = join(dir, 'boot.scr');
    await writeFile(stage1, await stage1ScriptImage());
    console.log(
      `image ${mib(IMAGE_SIZE)}: boot partition ${mib(BOOT_PARTITION)} (Debian's arm64 kernel, the netboot ` +
        `initramfs), ext4 root ${mib(rootSize)} holding ${mib(content.bytes)} in ${content.files} files from ` +
        `${SOURCES.join(', ')}; card ${mib(IMAGE_SIZE)}, blank; flash ${raw ? 'raw' : 'gzip'}'d 64 MiB parts, ` +
        `TFTP windowsize 8; ${rounds} round(s); load average ${loadAverage()} (1, 5, 15 min)`,
    );

    const boards: NetbootAgentBoard[] = [
      {
        name: 'bench-diskless',
        mac: '52:54:00:4e:42:71',
        ip: '10.42.0.71',
        serial: '100000004e420071',
        netboot: 'serial',
        prefix: '4e420071/',
        kind: 'netboot',
      },
      {
        name: 'bench-flash',
        mac: '52:54:00:4e:42:72',
        ip: '10.42.0.72',
        netboot: 'prefix:bench-flash',
        layout: 'netflash',
        prefix: 'bench-flash/',
        kind: 'netflash',
        boot: 'distro',
        ...(raw ? {} : { caps: { unzip: true } }),
      },
    ];
    const diskless: Measured[] = [];
    const flashed: Measured[] = [];
    for (let round = 0; round < rounds; round++) {
      const workDir = join(dir, `round-${round}`);
      await mkdir(workDir, { recursive: true });
      const input: NetbootAgentInput = {
        ubootBin: uboot.ubootBin,
        workDir,
        image,
        kind: 'netboot',
        boards,
        bootCheck: `console:${INIT_BANNER} ${marker}`,
        sdSize: IMAGE_SIZE,
        stage1,
        timeoutMs: BOARD_TIMEOUT_MS,
        // The agent's own part size and compression; the scenario's windowsize 8 stays.
        flash: { partSize: '64MiB', compress: raw ? 'off' : 'auto' },
        timeouts: { boardShow: 60, stall: 60, boot: 600 },
      };
      const r = await runInPrivateNetwork<NetbootAgentResult>({
        module: 'test/qemu/netboot-agent-scenario.ts',
        fn: 'runNetbootAgentScenario',
        input,
        timeoutMs: boards.length * BOARD_TIMEOUT_MS + 60_000,
        workDir,
      });
      diskless.push(measure(r.jobs[0]!, marker, 'diskless'));
      flashed.push(measure(r.jobs[1]!, marker, 'flash+boot'));
      if (!process.env.KEEP_NETBOOT_BENCH_DIR) await rm(workDir, { recursive: true, force: true });
    }

    const rows = [
      [
        'round',
        'diskless s',
        'flash+boot s',
        'diskless / flash+boot',
        'flash: transfer s',
        'verify s',
        'card boot s',
        'wire',
        'written',
        'TFTP MB/s',
        'wire MB/s',
        'written MB/s',
      ],
    ];
    for (const [i, d] of diskless.entries()) {
      const f = flashed[i]!;
      const t = f.job.result.timings;
      const transfer = t.transfer ?? NaN;
      const wire = f.job.result.wireBytes ?? 0;
      const served = servedRate(f.job);
      rows.push([
        String(i + 1),
        d.resetToMarker.toFixed(1),
        f.resetToMarker.toFixed(1),
        (d.resetToMarker / f.resetToMarker).toFixed(3),
        transfer.toFixed(1),
        (t.verify ?? NaN).toFixed(1),
        (t.boot ?? NaN).toFixed(1),
        mib(wire),
        mib(f.job.result.bytesWritten),
        (served.bytes / 1e6 / served.seconds).toFixed(1),
        (wire / 1e6 / transfer).toFixed(1),
        (f.job.result.bytesWritten / 1e6 / transfer).toFixed(1),
      ]);
    }
    printColumns(rows);
    console.log(
      'flash: transfer = stage 2 fetching, writing and reading back every part; card boot = from the ' +
        "board's last report to the marker (stage 2's reset, stage 1 from the card, kernel and initramfs " +
        'read from the card, the boot); TFTP MB/s = wire bytes over the seconds the agent spent serving ' +
        "parts; wire and written MB/s over the transfer phase (the emulated card's writes included)",
    );
    const d = median(diskless.map((m) => m.resetToMarker));
    const f = median(flashed.map((m) => m.resetToMarker));
    const ratio = d / f;
    console.log(
      `reset → marker (median of ${rounds}): diskless ${d.toFixed(1)} s, flash+boot ${f.toFixed(1)} s: ` +
        `${ratio.toFixed(3)}×; goal diskless ≤ 0.3 × flash+boot: ${ratio <= 0.3 ? 'met' : 'MISSED'}`,
    );
    const served = diskless[0]!.job.result;
    console.log(
      `diskless job: ${served.message}; phases ${JSON.stringify(served.timings)}` +
        (served.wireBytes !== undefined ? `, ${mib(served.wireBytes)} over TFTP` : ''),
    );
    const flashJob = flashed[0]!.job.result;
    console.log(
      `flash job: ${flashJob.message}; phases ${JSON.stringify(flashJob.timings)} (stage, before the reset ` +
        'and so outside reset → marker: mapping, injection and gzip of the parts)',
    );
    console.log(`load average after: ${loadAverage()}`);
  } finally {
    if (process.env.KEEP_NETBOOT_BENCH_DIR) console.log(`kept ${dir}`);
    else await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await runNetbootBench();
