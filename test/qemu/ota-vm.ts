/**
 * A board that boots from its own card and is updated in place over SSH (issue 12), under QEMU:
 * the `virt` machine with the test U-Boot standing in for the Pi firmware, a virtio-blk disk as
 * the card (Linux's /dev/vda), a virtio NIC on a tap link inside a private network namespace
 * (netboot-vm.ts's `runInPrivateNetwork` and `setUpTapLink`).
 *
 * U-Boot's boot command does what a Pi's firmware does with its card: it reads kernel8.img,
 * initrd.img and cmdline.txt from the FAT boot partition (`load virtio 0:1`), takes cmdline.txt
 * as the command line and starts the kernel with the device tree QEMU gave it. So every boot —
 * the first, and the one after the update's `reboot -f` (PSCI reset: QEMU restarts U-Boot) —
 * boots what is on the disk at that moment.
 *
 * The serial console is a unix socket (what a targets row's `unix:<path>` console reads) whose
 * every byte QEMU also appends to a log file, client or not: `OtaVm.console` reads that file, so
 * the test follows the boards' lines while the agent holds the socket.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import ssh2 from 'ssh2';
import { TAP_LINK, setUpTapLink, sha256File } from './netboot-vm.js';
import { INIT_BANNER } from './os-image.js';
import { OTA_OS_LINES, MARKER_FILE } from './ota-os.js';
import { QEMU_BINARY, boardEnvironment, qmpCommand, startQemuProcess, type QemuBoard } from './qemu-board.js';

const execFileAsync = promisify(execFile);

const ENV_SIZE = 0x40000; // CONFIG_ENV_SIZE of qemu_arm64_defconfig (as qemu-board.ts)
const PFLASH_SIZE = 64 * 1024 * 1024;
const hex = (n: number) => `0x${n.toString(16)}`;

/** The board's address on the tap link (the image's default, OTA_BOARD_ADDRESS without its prefix). */
export const OTA_BOARD_IP = '10.42.0.2';

/**
 * Where U-Boot puts what it reads from the boot partition. They fit a 128 MiB machine (U-Boot sits
 * at its top): kernel8.img at kernel_addr_r, inflated by booti through kernel_comp_addr_r back to
 * kernel_addr_r (the raw Image is 32 MiB with its bss), then initrd.img and cmdline.txt above it.
 */
export const OTA_BOOT_ADDR = {
  kernel: 0x4040_0000,
  ramdisk: 0x4280_0000,
  cmdline: 0x42f0_0000,
  inflate: 0x4300_0000,
} as const;

/** What U-Boot prints at each step of its boot from the disk, and when a step fails. */
export const DISK_BOOT_LINES = {
  loaded: /ota-vm: disk boot: loaded kernel8\.img (\S+) initrd\.img (\S+) cmdline\.txt (\S+)/,
  booting: /ota-vm: disk boot: booti/,
  failed: /ota-vm: disk boot FAILED/,
} as const;

/**
 * U-Boot's environment scripts of the boot from the disk, `bootcmd` first: `virtio scan`, the
 * three files from partition 1, cmdline.txt as `bootargs` (NUL-terminated in RAM, a trailing
 * newline cut, read with `setexpr.s`, as netboot-vm.ts's firmware stand-in does), and `booti`.
 */
export function diskBootScripts(): Record<string, string> {
  const say = (text: string) => `echo "ota-vm: disk boot: ${text}"`;
  const sizes = 'kernel8.img ${kernel_comp_size} initrd.img ${disk_initrd_size} cmdline.txt ${disk_cmdline_size}';
  return {
    bootcmd: [
      'virtio scan',
      'if run disk_load && run disk_args; then ' +
        `${say(`loaded ${sizes}`)}; ` +
        `${say('booti')}; ` +
        'booti ${kernel_addr_r} ${ramdisk_addr_r}:${disk_initrd_size} ${fdtcontroladdr}; fi',
      'echo "ota-vm: disk boot FAILED (see the lines above)"',
    ].join('; '),
    disk_load: [
      'load virtio 0:1 ${kernel_addr_r} kernel8.img',
      // booti inflates a gzip'd Image only when told the compressed size and a scratch area.
      'setenv kernel_comp_size ${filesize}',
      'load virtio 0:1 ${ramdisk_addr_r} initrd.img',
      'setenv disk_initrd_size ${filesize}',
      'load virtio 0:1 ${disk_cmdline_addr} cmdline.txt',
      'setenv disk_cmdline_size ${filesize}',
    ].join(' && '),
    disk_args: [
      'setexpr disk_end ${disk_cmdline_addr} + ${disk_cmdline_size}',
      'mw.b ${disk_end} 0 1',
      'setexpr disk_last ${disk_end} - 1',
      'if itest.b *${disk_last} == 0x0a; then mw.b ${disk_last} 0 1; fi',
      'setexpr.s bootargs *${disk_cmdline_addr}',
    ].join('; '),
  };
}

/** The whole U-Boot environment of the boot from the disk (written to pflash as QEMU starts). */
export function otaVmEnvironment(): Record<string, string> {
  return boardEnvironment({
    tftpPort: 69,
    env: {
      kernel_addr_r: hex(OTA_BOOT_ADDR.kernel),
      ramdisk_addr_r: hex(OTA_BOOT_ADDR.ramdisk),
      kernel_comp_addr_r: hex(OTA_BOOT_ADDR.inflate),
      disk_cmdline_addr: hex(OTA_BOOT_ADDR.cmdline),
      ...diskBootScripts(),
    },
  });
}

export interface OtaVmOptions {
  ubootBin: string;
  /** Holds env.img, the sockets, console.log (the serial log) and qemu.log; the caller creates and removes it. */
  workDir: string;
  mac: string;
  /** The raw disk image (the card), written in place. */
  disk: string;
  /** RAM in MiB: enough for the RAM system and one part, or too little for the refusal case. */
  memoryMiB: number;
  /** The tap inside the namespace (setUpTapLink's). */
  tap?: string;
  /** Start with the CPU stopped until a QMP `cont` (OtaVm.resume). */
  startPaused?: boolean;
  /** Hard limit for the whole QEMU run. */
  timeoutMs: number;
}

export interface OtaVm {
  /** QEMU's process; its console() holds only QEMU's own messages (the serial is on the socket). */
  readonly qemu: QemuBoard;
  /** The serial console's unix socket (`unix:<path>` in a targets row). */
  readonly serialSocket: string;
  readonly qmpSocket: string;
  /** Every byte the board printed on its serial console so far. */
  readonly consoleFile: string;
  console(): Promise<string>;
  /**
   * Resolves with the first match of `re` in the console from character `from` on (0: from the
   * start) and where it ends; rejects when QEMU exits or `timeoutMs` passes first.
   */
  waitForConsole(re: RegExp, timeoutMs: number, from?: number): Promise<{ match: RegExpExecArray; end: number }>;
  /** Lets a VM started paused run. */
  resume(): Promise<void>;
  kill(): Promise<void>;
}

/** Starts the VM (inside the namespace, after setUpTapLink): U-Boot boots from the disk at once. */
export async function startOtaVm(o: OtaVmOptions): Promise<OtaVm> {
  const envText = join(o.workDir, 'env.txt');
  const envImage = join(o.workDir, 'env.img');
  await writeFile(
    envText,
    Object.entries(otaVmEnvironment())
      .map(([k, v]) => `${k}=${v}\n`)
      .join(''),
  );
  await execFileAsync('mkenvimage', ['-s', hex(ENV_SIZE), '-o', envImage, envText]);
  await truncate(envImage, PFLASH_SIZE);
  const qmpSocket = join(o.workDir, 'qmp.sock');
  const serialSocket = join(o.workDir, 'serial.sock');
  const consoleFile = join(o.workDir, 'serial.log');
  await writeFile(consoleFile, '');
  const args = [
    '-M',
    'virt',
    '-cpu',
    'cortex-a57',
    '-m',
    `${o.memoryMiB}M`,
    '-display',
    'none',
    '-bios',
    o.ubootBin,
    '-netdev',
    `tap,id=n0,ifname=${o.tap ?? TAP_LINK.name},script=no,downscript=no`,
    // virtio over MMIO: the NIC and the disk U-Boot drives, and the kernel with virtio_mmio.
    '-device',
    `virtio-net-device,netdev=n0,mac=${o.mac}`,
    '-drive',
    `if=none,id=card,format=raw,file=${o.disk}`,
    '-device',
    'virtio-blk-device,drive=card',
    '-drive',
    `if=pflash,format=raw,unit=1,file=${envImage}`,
    '-chardev',
    `socket,id=serial0,path=${serialSocket},server=on,wait=off,logfile=${consoleFile},logappend=on`,
    '-serial',
    'chardev:serial0',
    '-monitor',
    'none',
    '-qmp',
    `unix:${qmpSocket},server=on,wait=off`,
  ];
  if (o.startPaused) args.push('-S');
  const qemu = startQemuProcess(QEMU_BINARY, args, { workDir: o.workDir, timeoutMs: o.timeoutMs, qmpSocket });
  const readConsole = async () => (await readFile(consoleFile)).toString('latin1');
  return {
    qemu,
    serialSocket,
    qmpSocket,
    consoleFile,
    console: readConsole,
    async waitForConsole(re, timeoutMs, from = 0) {
      const until = Date.now() + timeoutMs;
      let exited = false;
      void qemu.waitForExit(timeoutMs + 1000).then(
        () => (exited = true),
        () => undefined,
      );
      for (;;) {
        const text = (await readConsole()).slice(from);
        const flags = re.flags.includes('g') ? re.flags : `${re.flags}g`;
        const global = new RegExp(re.source, flags);
        const match = global.exec(text);
        if (match) return { match, end: from + match.index + match[0].length };
        if (exited) throw new Error(`QEMU exited before the console showed ${re}`);
        if (Date.now() > until) throw new Error(`the console did not show ${re} within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async resume() {
      await waitForPath(qmpSocket, 10_000);
      await qmpCommand(qmpSocket, 'cont');
    },
    kill: () => qemu.kill(),
  };
}

/** Waits for a path QEMU creates as it starts (its sockets). */
export async function waitForPath(path: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() > until) throw new Error(`${path} did not appear within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A disk of `size` bytes holding `image` at its start and `fill` after it (what a card beyond the image holds). */
export async function makeDisk(o: { image: string; path: string; size: number; fill?: number }): Promise<void> {
  const { size: imageSize } = await stat(o.image);
  if (imageSize > o.size) throw new Error(`a ${imageSize}-byte image does not fit a ${o.size}-byte disk`);
  const disk = Buffer.alloc(o.size, o.fill ?? 0);
  (await readFile(o.image)).copy(disk, 0);
  await writeFile(o.path, disk);
}

/** The first `length` bytes of `file` equal all of `image`. */
export async function diskHolds(disk: string, image: string): Promise<boolean> {
  const [d, i] = await Promise.all([readFile(disk), readFile(image)]);
  return d.length >= i.length && d.subarray(0, i.length).equals(i);
}

// ---- SSH from the test ------------------------------------------------------------------------

export interface SshTarget {
  host: string;
  port: number;
  user: string;
  /** The private key file (OpenSSH format). */
  keyFile: string;
  /** The host key the board must present: an OpenSSH public-key line. */
  hostKeyLine: string;
  timeoutMs: number;
}

/**
 * Runs one command on the board over SSH (Node's ssh2, the agent's client library) and resolves
 * with its exit code and output; rejects when the connection, the host key or the login fails.
 */
export async function sshRun(
  t: SshTarget,
  command: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const want = Buffer.from(t.hostKeyLine.trim().split(/\s+/)[1] ?? '', 'base64');
  const privateKey = await readFile(t.keyFile);
  return await new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      client.end();
      reject(new Error(`ssh ${t.user}@${t.host}:${t.port} "${command}" did not finish within ${t.timeoutMs} ms`));
    }, t.timeoutMs);
    const finish = (settle: () => void) => {
      clearTimeout(timer);
      client.end();
      settle();
    };
    client.on('error', (err) => finish(() => reject(err)));
    client.on('ready', () => {
      client.exec(command, (err, stream) => {
        if (err) return finish(() => reject(err));
        stream.on('data', (d: Buffer) => (stdout += d.toString()));
        stream.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        stream.on('close', (code: number | null) => finish(() => resolve({ code, stdout, stderr })));
      });
    });
    client.connect({
      host: t.host,
      port: t.port,
      username: t.user,
      privateKey,
      readyTimeout: t.timeoutMs,
      hostVerifier: (key: Buffer) => key.equals(want),
    });
  });
}

// ---- The standalone proof -------------------------------------------------------------------

export interface StandaloneOtaInput {
  ubootBin: string;
  workDir: string;
  mac: string;
  /** The disk (a copy of image A, and room after it). */
  disk: string;
  memoryMiB: number;
  /** The image's marker: INIT_BANNER marker on the console means dropbear listens. */
  marker: string;
  /** The client key and the host key the test pins. */
  keyFile: string;
  hostKeyLine: string;
  timeoutMs: number;
}

export interface StandaloneOtaResult {
  /** ms from QEMU's start to each line (U-Boot's disk boot, the test OS's steps, the marker). */
  at: Record<string, number | undefined>;
  /** The FAILED line, when one came instead of the marker. */
  failure?: string;
  /** What the SSH commands printed, by name. */
  ssh: Record<string, string>;
  diskBefore: string;
  diskAfter: string;
  console: string;
  consoleFile: string;
}

/**
 * Inside the namespace: tap0 at 10.42.0.1, the VM booting image A from its disk, followed on the
 * console to its marker; then one SSH session per question (the marker file, the architecture,
 * the root mount, the RAM), as the agent's probe asks them; then the VM is killed.
 */
export async function runStandaloneOta(o: StandaloneOtaInput): Promise<StandaloneOtaResult> {
  await setUpTapLink();
  const diskBefore = await sha256File(o.disk);
  const since = performance.now();
  const vm = await startOtaVm({
    ubootBin: o.ubootBin,
    workDir: o.workDir,
    mac: o.mac,
    disk: o.disk,
    memoryMiB: o.memoryMiB,
    timeoutMs: o.timeoutMs,
  });
  const at: StandaloneOtaResult['at'] = {};
  try {
    const steps: Record<string, RegExp> = {
      diskLoaded: DISK_BOOT_LINES.loaded,
      booti: DISK_BOOT_LINES.booting,
      ...Object.fromEntries(Object.entries(OTA_OS_LINES).filter(([k]) => k !== 'failed')),
    };
    const followed = Object.entries(steps).map(([key, re]) =>
      vm.waitForConsole(re, o.timeoutMs).then(
        () => void (at[key] = Math.round(performance.now() - since)),
        () => undefined,
      ),
    );
    const marker = new RegExp(`${INIT_BANNER} ${o.marker.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`);
    const failed = new RegExp(`${OTA_OS_LINES.failed.source}|${DISK_BOOT_LINES.failed.source}`);
    const end = await Promise.race([
      vm.waitForConsole(marker, o.timeoutMs).then(() => 'marker' as const),
      vm.waitForConsole(failed, o.timeoutMs).then(() => 'failed' as const),
    ]);
    const ssh: Record<string, string> = {};
    let failure: string | undefined;
    if (end === 'marker') {
      at.marker = Math.round(performance.now() - since);
      const target: SshTarget = {
        host: OTA_BOARD_IP,
        port: 22,
        user: 'root',
        keyFile: o.keyFile,
        hostKeyLine: o.hostKeyLine,
        timeoutMs: 20_000,
      };
      for (const [name, command] of Object.entries({
        marker: `cat ${MARKER_FILE}`,
        arch: 'uname -m',
        id: 'id -u',
        root: "grep ' / ' /proc/self/mountinfo",
        memAvailable: "grep '^MemAvailable:' /proc/meminfo",
        ramFs: "grep -E ' (/run|/tmp) ' /proc/self/mountinfo",
        sshConnection: 'echo "$SSH_CONNECTION"',
      })) {
        const r = await sshRun(target, command);
        ssh[name] = `${r.stdout}${r.stderr}`.trim();
      }
      at.sshDone = Math.round(performance.now() - since);
    } else {
      failure = failed.exec(await vm.console())?.[0];
    }
    await vm.kill();
    await Promise.all(followed);
    return {
      at,
      ...(failure ? { failure } : {}),
      ssh,
      diskBefore,
      diskAfter: await sha256File(o.disk),
      console: await vm.console(),
      consoleFile: vm.consoleFile,
    };
  } finally {
    await vm.kill();
  }
}
