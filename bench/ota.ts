/**
 * In-place update over SSH (layout `ota`) against the U-Boot path, for the same image, under QEMU
 * and driven by the real agent in `unshare -rn`, in the same run (issue 12's speed line).
 *
 * The image: the OTA test OS (ota-os.ts: Debian's arm64 kernel, busybox, dropbear) with a root
 * partition holding `--payload-mib` of incompressible bytes (real files compress, so this is the
 * U-Boot path's worst case for its gzip'd parts and the same bytes for both).
 *
 * - ota: a 256 MiB board running image A from its virtio disk gets image B: the agent logs in,
 *   uploads its busybox and the switch script, the board pivots into RAM, fetches each part with
 *   busybox's tftp (no window; `ota.tftpBlockSize` as given), writes it with dd and reads it back,
 *   then reboots into B, whose marker passes the `console:` check.
 * - U-Boot: a board with a blank SD card boots the agent's U-Boot over the network (layout
 *   `netflash`, the test U-Boot standing in for the Pi firmware) and stage 2 writes image B onto
 *   the card: the path every U-Boot board takes after its reset (TFTP windowsize 8, gzip'd parts as
 *   the 64-bit builds get them); its boot check is `none`, the image's kernel wants a virtio root.
 *
 * Both write the mapped ranges only (the agent's default). Printed per path: the job's phases,
 * wire bytes and bytes written; then the ratio of the flash (transfer + verify: fetch, check,
 * write and read back every part) and of the whole job, ota over U-Boot.
 *
 *   npx tsx bench/ota.ts [--payload-mib=160] [--block-size=16384]
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { JobResult } from '../src/protocol/messages.js';
import type { NetbootAgentInput, NetbootAgentResult } from '../test/qemu/netboot-agent-scenario.js';
import { privateNetworkAvailable, runInPrivateNetwork } from '../test/qemu/netboot-vm.js';
import type { OtaBoardInput, OtaBoardResult } from '../test/qemu/ota-agent-scenario.js';
import { INIT_BANNER, newMarker, stage1ScriptImage } from '../test/qemu/os-image.js';
import { buildOtaTestImage, findOtaOsParts, makeOtaKeys, prepareOtaOsParts } from '../test/qemu/ota-os.js';
import { makeDisk } from '../test/qemu/ota-vm.js';
import { loadAverage, numberOption, printColumns } from './report.js';
import { findTestUboot } from '../test/qemu/test-uboot.js';

const MiB = 1024 * 1024;
const BOOT_PARTITION = 16 * MiB;
/** The disk and the SD card: a power of two above the image (4 MiB + boot + root). */
const CARD_SIZE = 512 * MiB;
const BOARD_RAM_MIB = 256;
/** One path's run on 2 busy cores: boots, the transfer through emulated disks, the reboot. */
const RUN_TIMEOUT_MS = 20 * 60_000;

const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
/** A phase's seconds, or '-' for a phase the job did not have. */
const seconds = (s: number | undefined) => (s === undefined ? '-' : s.toFixed(1));
const flashSeconds = (r: JobResult) => (r.timings.transfer ?? NaN) + (r.timings.verify ?? 0);
const jobSeconds = (r: JobResult) => Object.values(r.timings).reduce((a, b) => a + (b ?? 0), 0);

export async function runOtaBench(): Promise<void> {
  const payloadMiB = numberOption('payload-mib', 160, true);
  const blockSize = numberOption('block-size', 16384, true);
  const uboot = await findTestUboot();
  const network = await privateNetworkAvailable();
  for (const gate of [uboot, network])
    if (!gate.ok) {
      console.log(`ota: skipped — ${gate.reason}`);
      return;
    }
  if (!uboot.ok) return;
  const parts = (await findOtaOsParts()) ?? (await prepareOtaOsParts());
  const dir = await mkdtemp(join(tmpdir(), 'rpi-flash-bench-ota-'));
  try {
    const keys = await makeOtaKeys(join(dir, 'keys'));
    const rootPartitionSize = payloadMiB * MiB + 64 * MiB;
    const image = (label: string) =>
      buildOtaTestImage({
        path: join(dir, `${label.toLowerCase()}.img`),
        parts,
        keys,
        marker: newMarker(`bench-ota-${label.toLowerCase()}`),
        label,
        payloadBytes: payloadMiB * MiB,
        bootPartitionSize: BOOT_PARTITION,
        rootPartitionSize,
      });
    const [imageA, imageB] = await Promise.all([image('A'), image('B')]);
    if (imageB.size > CARD_SIZE)
      throw new Error(`--payload-mib=${payloadMiB}: the image outgrows the ${mib(CARD_SIZE)} card`);
    console.log(
      `image ${mib(imageB.size)}: boot ${mib(BOOT_PARTITION)} (Debian's arm64 kernel, busybox, dropbear), ` +
        `ext4 root ${mib(rootPartitionSize)} holding ${mib(payloadMiB * MiB)} of incompressible payload; ` +
        `card ${mib(CARD_SIZE)}; ` +
        `ota: 64 MiB parts, busybox tftp blocks of ${blockSize} B; U-Boot: 64 MiB parts gzip'd, TFTP windowsize 8; ` +
        `load average ${loadAverage()} (1, 5, 15 min)`,
    );

    // ---- ota: A → B on a running board ----
    const otaDir = join(dir, 'ota');
    await mkdir(otaDir);
    const disk = join(otaDir, 'disk.img');
    await makeDisk({ image: imageA.path, path: disk, size: CARD_SIZE });
    const otaInput: OtaBoardInput = {
      ubootBin: uboot.ubootBin,
      workDir: otaDir,
      mac: '52:54:00:12:34:81',
      memoryMiB: BOARD_RAM_MIB,
      disk,
      firstMarker: imageA.marker,
      busybox: parts.busybox,
      keyFile: keys.client.opensshFile,
      hostKeyLine: keys.host.publicLine,
      images: { A: imageA.path, B: imageB.path },
      chunkSize: 64 * MiB,
      jobs: [
        {
          label: 'a-to-b',
          image: imageB.path,
          bootCheck: `console:${INIT_BANNER} ${imageB.marker}`,
          ota: { tftpBlockSize: blockSize },
        },
      ],
      bootTimeoutMs: 180_000,
      timeoutMs: RUN_TIMEOUT_MS,
    };
    const ota = await runInPrivateNetwork<OtaBoardResult>({
      module: 'test/qemu/ota-agent-scenario.ts',
      fn: 'runOtaBoardScenario',
      input: otaInput,
      timeoutMs: RUN_TIMEOUT_MS + 30_000,
      workDir: otaDir,
    });
    const otaJob = ota.jobs[0]!;
    if (!otaJob.result.ok) throw new Error(`ota: the job failed with ${otaJob.result.code}: ${otaJob.result.message}`);

    // ---- U-Boot: stage 2 writes B onto a blank card ----
    const ubootDir = join(dir, 'uboot');
    await mkdir(ubootDir);
    const stage1 = join(ubootDir, 'boot.scr');
    await writeFile(stage1, await stage1ScriptImage());
    const ubootInput: NetbootAgentInput = {
      ubootBin: uboot.ubootBin,
      workDir: ubootDir,
      image: imageB.path,
      kind: 'netflash',
      boards: [
        {
          name: 'bench-uboot',
          mac: '52:54:00:12:34:82',
          ip: '10.42.0.82',
          netboot: 'prefix:bench-uboot',
          layout: 'netflash',
          prefix: 'bench-uboot/',
          caps: { unzip: true },
        },
      ],
      bootCheck: 'none',
      sdSize: CARD_SIZE,
      stage1,
      timeoutMs: RUN_TIMEOUT_MS,
      flash: { partSize: '64MiB', compress: 'auto' },
      timeouts: { boardShow: 60, stall: 60, boot: 600 },
    };
    const viaUboot = await runInPrivateNetwork<NetbootAgentResult>({
      module: 'test/qemu/netboot-agent-scenario.ts',
      fn: 'runNetbootAgentScenario',
      input: ubootInput,
      timeoutMs: RUN_TIMEOUT_MS + 30_000,
      workDir: ubootDir,
    });
    const ubootJob = viaUboot.jobs[0]!;
    if (!ubootJob.result.ok)
      throw new Error(`U-Boot: the job failed with ${ubootJob.result.code}: ${ubootJob.result.message}`);

    const rows = [
      ['path', 'stage s', 'reset s', 'transfer s', 'verify s', 'boot s', 'job s', 'wire', 'written', 'written MB/s'],
    ];
    for (const [name, r] of [
      ['ota', otaJob.result],
      ['U-Boot', ubootJob.result],
    ] as const) {
      const t = r.timings;
      rows.push([
        name,
        seconds(t.stage),
        seconds(t.reset),
        seconds(t.transfer),
        seconds(t.verify),
        seconds(t.boot),
        jobSeconds(r).toFixed(1),
        r.wireBytes === undefined ? '-' : mib(r.wireBytes),
        mib(r.bytesWritten),
        (r.bytesWritten / 1e6 / flashSeconds(r)).toFixed(1),
      ]);
    }
    printColumns(rows);
    console.log(
      "ota: stage = log in, probe, stage the parts, upload busybox and the script into the board's RAM; " +
        'transfer = the switch into RAM, then fetch, check, write and read back every part; boot = the reboot ' +
        'into B until its marker. U-Boot: reset = the board boots U-Boot and stage 1 from the network; ' +
        'transfer = stage 2 fetching, writing and reading back every part; no boot check',
    );
    const flashRatio = flashSeconds(otaJob.result) / flashSeconds(ubootJob.result);
    const jobRatio = jobSeconds(otaJob.result) / jobSeconds(ubootJob.result);
    console.log(
      `flash (transfer + verify): ota ${flashSeconds(otaJob.result).toFixed(1)} s, U-Boot ` +
        `${flashSeconds(ubootJob.result).toFixed(1)} s: ${flashRatio.toFixed(2)}×; ` +
        `whole job (ota with its reboot and boot check, U-Boot without): ${jobRatio.toFixed(2)}×`,
    );
    console.log(`load average after: ${loadAverage()}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await runOtaBench();
