/**
 * Issue 10 item 3: stage 1 reads its files from the partition distro boot found boot.scr on. Distro
 * boot hands over `devtype`, `devnum` and `distro_bootpart` as hush-local variables, which `env
 * exists` does not see; the committed uboot/boot.scr must take their values. Proved on Debian's
 * real rpi_3 build (QEMU raspi3b) with its stock distro boot: the card has two FAT partitions,
 * both marked bootable, and boot.scr only on the second; each partition has its own rpi-flash.env
 * naming a different kernel, so the console says which one stage 1 read.
 */
import { execFile } from 'node:child_process';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { STAGE1_SCR } from '../../scripts/build-boot-scr.js';
import { putFiles } from '../image/build-image.js';
import { piTestGate, startPiBoard } from './pi-board.js';
import { withConsoleOnFailure } from './qemu-board.js';
import { useQemuWorkspace } from './test-uboot.js';

const execFileAsync = promisify(execFile);
const gate = await piTestGate('stage 1 on the real rpi_3 build (QEMU raspi3b)');

const MiB = 1024 ** 2;
const CARD_SIZE = 64 * MiB;
/** Partition 1 at 4 MiB (16 MiB), partition 2 after it (32 MiB): both FAT16 LBA, both bootable. */
const PARTITIONS = [
  { start: 4 * MiB, size: 16 * MiB },
  { start: 20 * MiB, size: 32 * MiB },
];
const TIMEOUT_MS = 90_000;

async function run(cmd: string, args: string[], input?: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = execFile(cmd, args, (err, _out, stderr) =>
      err ? reject(new Error(`${cmd} failed: ${stderr || err.message}`)) : resolve(),
    );
    child.stdin!.end(input ?? '');
  });
}

/** A card whose partitions hold `files[i]`: MBR by sfdisk, FAT by mkfs.vfat --offset, files by mcopy. */
async function buildCard(path: string, files: Array<Record<string, string | Buffer>>): Promise<void> {
  await writeFile(path, Buffer.alloc(0));
  await truncate(path, CARD_SIZE);
  const table = ['label: dos', 'label-id: 0x52504632']
    .concat(PARTITIONS.map((p) => `start=${p.start / 512}, size=${p.size / 512}, type=e, bootable`))
    .join('\n');
  await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', path], `${table}\n`);
  for (const [i, p] of PARTITIONS.entries()) {
    await execFileAsync(
      'mkfs.vfat',
      ['-F', '16', '--offset', String(p.start / 512), '-n', `PART${i + 1}`, path].concat([String(p.size / 1024)]),
    );
    await putFiles(path, p.start, files[i]!);
  }
}

const env = (kernel: string) => `# rpi-flash test card\nrpf_kernel=${kernel}\nrpf_arm64=1\n`;

describe.skipIf(!gate.run)(gate.title, () => {
  // useQemuWorkspace's "ubootBin" is here the folder of the fetched builds.
  const ws = useQemuWorkspace({ ubootBin: () => gate.folder() }, { prefix: 'rpi-flash-pi-stage1-' });

  it('with boot.scr on partition 2, reads rpi-flash.env and the kernel from mmc 0:2', async () => {
    const sdImage = join(ws.workDir, 'sd.img');
    // Not arm64 Images: booti refuses them, which is as far as this test needs the boot to go.
    await buildCard(sdImage, [
      { 'rpi-flash.env': env('wrong.img'), 'wrong.img': 'partition 1 kernel\n' },
      {
        'boot.scr': await readFile(STAGE1_SCR),
        'rpi-flash.env': env('right.img'),
        'right.img': 'partition 2 kernel\n',
      },
    ]);
    const board = await startPiBoard({
      folder: ws.ubootBin,
      build: 'rpi_3',
      sdImage,
      workDir: ws.workDir,
      timeoutMs: TIMEOUT_MS,
    });
    await withConsoleOnFailure(board, async () => {
      await board.waitForConsole(
        /rpi-flash: (the kernel \S+ did not start|kernel \S+ not found|cannot boot)/,
        TIMEOUT_MS,
      );
      const text = board.console().replace(/\r/g, '');
      // Distro boot looked at partition 1 first and found boot.scr on partition 2.
      expect(text).toMatch(/Scanning mmc 0:1\.\.\.[^]*Scanning mmc 0:2\.\.\.\nFound U-Boot script \/boot\.scr/);
      expect(text).toContain('rpi-flash: stage 1');
      // No NIC U-Boot drives on raspi3b: stage 1 goes on to the installed system.
      expect(text).toContain('rpi-flash: no network (no address, NIC or server): booting the installed system');
      expect(text).not.toContain('rpi-flash: no rpi-flash.env');
      expect(text).toMatch(/rpi-flash: booting right\.img initrd - fdt \S+/);
      expect(text).toContain('rpi-flash: the kernel right.img did not start');
      expect(text).not.toContain('wrong.img');
    });
  });
});
