/**
 * Debian's real Raspberry Pi U-Boot builds on QEMU's Pi machines (issue 10, DESIGN §10): the
 * binaries `scripts/prepare-pi-uboot.sh` fetched, each booted on the machine of its model.
 *
 * How each one boots (measured with QEMU 7.2):
 * - rpi_3, rpi_arm64 on raspi3b: `-kernel u-boot.bin` (QEMU parks the other cores in a spin
 *   table); rpi_arm64 takes its device tree from the firmware, so QEMU passes the upstream
 *   bcm2837-rpi-3-b.dtb with `-dtb`.
 * - rpi_2, rpi_3_32b on raspi2b, rpi on raspi1ap, rpi_0_w on raspi0: `-kernel` of a uImage made
 *   here (load and entry 0x8000, CONFIG_TEXT_BASE). QEMU takes a raw file for a zImage and puts it
 *   at 0x10000, where U-Boot does not run; with `-bios`, all four cores of raspi2b enter U-Boot.
 * - Every build gets a device tree with `-dtb`, as the Pi firmware always hands one over: QEMU
 *   writes the machine's ARM memory into its /memory node, as start.elf does, and U-Boot's board
 *   code keeps its address in `fdt_addr` (stage 2's RAM probe reads it). rpi_arm64 takes its
 *   control tree from the firmware, so it gets the upstream bcm2837-rpi-3-b.dtb; the others keep
 *   the tree appended to their u-boot.bin for themselves and get a copy of it (firmwareTree).
 * - The console is the PL011 (`-serial` 0) or the mini UART (1), as the build's device tree says.
 * - No NIC: U-Boot says `No ethernet found.` to every `tftpboot`; a test preloads what it needs
 *   with `-device loader` at or above 0x14000000 (the pre-relocation stack sits below 128 MiB) and
 *   types its commands at the prompt after stopping autoboot (bootdelay 2).
 * - `reset` reboots the machine; with `-no-reboot` QEMU exits instead, which ends a run.
 * What U-Boot sees: 448 MiB of RAM on raspi0/raspi1ap (512 MB less the GPU's 64), 960 MiB on
 * raspi2b/raspi3b, and the card as mmc 0.
 */
import { execFile } from 'node:child_process';
import { access, constants, copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { waitUntil } from '../support/wait.js';
import { inCi } from './test-uboot.js';
import { startQemuProcess, type QemuBoard } from './qemu-board.js';

const execFileAsync = promisify(execFile);

export const PREPARE_SCRIPT = fileURLToPath(new URL('../../scripts/prepare-pi-uboot.sh', import.meta.url));
export const HOW_TO_PREPARE = 'bash scripts/prepare-pi-uboot.sh';

export type PiBuild = 'rpi' | 'rpi_0_w' | 'rpi_2' | 'rpi_3' | 'rpi_3_32b' | 'rpi_arm64';

export interface PiMachine {
  /** The Debian architecture whose u-boot-rpi ships the build. */
  arch: 'arm64' | 'armhf' | 'armel';
  qemu: 'qemu-system-aarch64' | 'qemu-system-arm';
  machine: 'raspi0' | 'raspi1ap' | 'raspi2b' | 'raspi3b';
  /** Which `-serial` the build's console is on: 0 the PL011, 1 the mini UART. */
  serial: 0 | 1;
  /** `raw`: -kernel u-boot.bin; `uimage`: -kernel of a uImage at 0x8000. */
  load: 'raw' | 'uimage';
  /** The device tree passed with -dtb, from the kernel package (builds that take the firmware's); else firmwareTree. */
  dtb?: string;
  /** The RAM U-Boot reports (`DRAM:`). */
  ramMiB: number;
}

export const PI_MACHINES: Record<PiBuild, PiMachine> = {
  rpi: { arch: 'armel', qemu: 'qemu-system-arm', machine: 'raspi1ap', serial: 0, load: 'uimage', ramMiB: 448 },
  rpi_0_w: { arch: 'armel', qemu: 'qemu-system-arm', machine: 'raspi0', serial: 1, load: 'uimage', ramMiB: 448 },
  rpi_2: { arch: 'armhf', qemu: 'qemu-system-arm', machine: 'raspi2b', serial: 0, load: 'uimage', ramMiB: 960 },
  rpi_3_32b: { arch: 'armhf', qemu: 'qemu-system-arm', machine: 'raspi2b', serial: 1, load: 'uimage', ramMiB: 960 },
  rpi_3: { arch: 'arm64', qemu: 'qemu-system-aarch64', machine: 'raspi3b', serial: 1, load: 'raw', ramMiB: 960 },
  rpi_arm64: {
    arch: 'arm64',
    qemu: 'qemu-system-aarch64',
    machine: 'raspi3b',
    serial: 1,
    load: 'raw',
    dtb: 'bcm2837-rpi-3-b.dtb',
    ramMiB: 960,
  },
};

export const PI_BUILDS = Object.keys(PI_MACHINES) as PiBuild[];

/** The U-Boot prompt of every Debian Pi build (CONFIG_SYS_PROMPT). */
export const PI_PROMPT = 'U-Boot> ';
/** U-Boot's text base on the 32-bit builds: where the uImage loads and starts. */
const TEXT_BASE_32 = 0x8000;

async function haveTool(tool: string): Promise<boolean> {
  return execFileAsync('sh', ['-c', `command -v ${tool}`]).then(
    () => true,
    () => false,
  );
}

/** What the Pi tests need on the machine, and why they cannot run when it is not there. */
export async function piToolsAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  for (const tool of ['qemu-system-arm', 'qemu-system-aarch64', 'mkimage', 'setpriv'])
    if (!(await haveTool(tool)))
      return { ok: false, reason: `${tool} is not installed (Debian: qemu-system-arm, u-boot-tools, util-linux)` };
  return { ok: true };
}

async function preparedFolder(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync('bash', [PREPARE_SCRIPT, ...args], {
    timeout: 10 * 60_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout.trim();
}

/**
 * How a Pi test file gates itself (the rules of test-uboot.ts): on a developer machine without
 * QEMU or the fetched builds the tests skip and say what to run; in CI (`CI` set) they run, and
 * `folder()` (for beforeAll) fetches the builds or fails naming what is missing.
 */
export async function piTestGate(name: string): Promise<{ run: boolean; title: string; folder(): Promise<string> }> {
  const tools = await piToolsAvailable();
  let found: string | undefined;
  let reason = tools.ok ? '' : tools.reason;
  if (tools.ok) {
    found = await preparedFolder(['--cached-only']).catch(() => undefined);
    if (!found) reason = `Debian's Pi U-Boot builds are not fetched; run: ${HOW_TO_PREPARE}`;
  }
  const run = found !== undefined || inCi;
  return {
    run,
    title: found !== undefined || inCi ? name : `${name} (skipped: ${reason})`,
    async folder() {
      if (found) return found;
      if (!tools.ok) throw new Error(`CI needs QEMU for the Pi U-Boot tests: ${tools.reason}`);
      return preparedFolder([]).catch((err: Error & { stderr?: string }) => {
        throw new Error(`${HOW_TO_PREPARE} failed: ${err.message}\n${(err.stderr ?? '').slice(-4000)}`);
      });
    },
  };
}

/** The u-boot.bin of a build inside a folder the prepare script made. */
export function piUbootBin(folder: string, build: PiBuild): string {
  return join(folder, PI_MACHINES[build].arch, 'usr/lib/u-boot', build, 'u-boot.bin');
}

export interface PiBoardOptions {
  /** The folder `scripts/prepare-pi-uboot.sh` printed. */
  folder: string;
  build: PiBuild;
  /** The SD card, a raw image whose size is a power of two (QEMU's sd-card wants one). */
  sdImage: string;
  /** Files QEMU places in RAM before U-Boot starts (copied into workDir: reread at each reset). */
  preload?: Array<{ file: string; addr: number }>;
  workDir: string;
  timeoutMs: number;
}

const hex = (n: number) => `0x${n.toString(16)}`;

const FDT_MAGIC = 0xd00dfeed;

/**
 * The device tree appended to a u-boot.bin (CONFIG_OF_SEPARATE), written to workDir: the last
 * FDT header in the file whose total size fits in it.
 */
async function firmwareTree(bin: string, workDir: string): Promise<string> {
  const data = await readFile(bin);
  const magic = Buffer.alloc(4);
  magic.writeUInt32BE(FDT_MAGIC);
  for (let at = data.lastIndexOf(magic); at >= 0; at = data.lastIndexOf(magic, at - 1)) {
    const size = at + 8 <= data.length ? data.readUInt32BE(at + 4) : 0;
    if (size >= 0x100 && at + size <= data.length) {
      const file = join(workDir, 'firmware.dtb');
      await writeFile(file, data.subarray(at, at + size));
      return file;
    }
  }
  throw new Error(`${bin} carries no device tree to hand over as the firmware's`);
}

/** Boots a build on its machine. U-Boot then runs its stock boot: preboot, autoboot, distro boot. */
export async function startPiBoard(o: PiBoardOptions): Promise<QemuBoard> {
  const m = PI_MACHINES[o.build];
  const bin = piUbootBin(o.folder, o.build);
  await access(bin, constants.R_OK).catch(() => {
    throw new Error(`no ${o.build} U-Boot at ${bin}; fetch the builds with: ${HOW_TO_PREPARE}`);
  });
  let kernel = bin;
  if (m.load === 'uimage') {
    kernel = join(o.workDir, `${o.build}.uimg`);
    const base = hex(TEXT_BASE_32);
    await execFileAsync(
      'mkimage',
      ['-A', 'arm', '-O', 'linux', '-T', 'kernel', '-C', 'none', '-a', base, '-e', base].concat([
        '-n',
        `u-boot ${o.build}`,
        '-d',
        bin,
        kernel,
      ]),
    );
  }
  const qmpSocket = join(o.workDir, 'qmp.sock');
  const args = ['-M', m.machine, '-kernel', kernel];
  args.push('-dtb', m.dtb ? join(o.folder, 'dtb', m.dtb) : await firmwareTree(bin, o.workDir));
  args.push('-drive', `if=sd,format=raw,file=${o.sdImage}`);
  args.push(...(m.serial === 0 ? ['-serial', 'stdio', '-serial', 'null'] : ['-serial', 'null', '-serial', 'stdio']));
  args.push('-display', 'none', '-monitor', 'none', '-no-reboot', '-qmp', `unix:${qmpSocket},server=on,wait=off`);
  for (const [i, p] of (o.preload ?? []).entries()) {
    const copy = join(o.workDir, `preload-${i}.bin`);
    await copyFile(p.file, copy);
    args.push('-device', `loader,file=${copy},addr=${hex(p.addr)},force-raw=on`);
  }
  return startQemuProcess(m.qemu, args, { workDir: o.workDir, timeoutMs: o.timeoutMs, qmpSocket });
}

/** Stops autoboot at its countdown and waits for the prompt; the board then takes typed commands. */
export async function stopAutoboot(board: QemuBoard, timeoutMs: number): Promise<void> {
  await board.waitForConsole(/Hit any key to stop autoboot/, timeoutMs);
  board.type('\n');
  await board.waitForConsole(/Hit any key to stop autoboot[^]*U-Boot> $/m, timeoutMs);
}

/**
 * Types one command line and resolves with what it printed up to the next prompt. The echo of
 * the line itself (the console echoes what is typed) is left out.
 */
export async function typeCommand(board: QemuBoard, line: string, timeoutMs: number): Promise<string> {
  const from = board.console().length;
  board.type(`${line}\n`);
  const rest = () => board.console().slice(from);
  // The typed line comes back first (the console echoes it); the prompt after it ends the output.
  const done = () => {
    const after = rest();
    const echoEnd = after.indexOf('\n');
    return echoEnd >= 0 && after.slice(echoEnd).includes(PI_PROMPT);
  };
  await waitUntil(done, `the prompt after typing: ${line}`, { ms: timeoutMs });
  const after = rest();
  const body = after.slice(after.indexOf('\n') + 1);
  return body.slice(0, body.lastIndexOf(PI_PROMPT)).replace(/\r/g, '');
}
