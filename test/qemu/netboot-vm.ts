/**
 * A board that network-boots like a Raspberry Pi, under QEMU (issue 11): QEMU's `virt` machine on
 * a tap link inside a private network namespace (`unshare -rn`, no root needed), with the test
 * U-Boot standing in for the Pi firmware. Its boot command does what the firmware's network boot
 * does: DHCP, then TFTP of kernel8.img, initrd.img and cmdline.txt from the board's prefix folder,
 * cmdline.txt as the kernel's command line, and the kernel started with the device tree the
 * machine came with (QEMU's, as a Pi's firmware hands over its own).
 *
 * Inside the namespace the servers listen on the real ports (DHCP 67, TFTP 69, NBD 10809) on the
 * tap's address, as in a lab. The namespace lives only as long as one process, so a run is a child
 * process: `runInPrivateNetwork` starts `node` inside `unshare -rn` on an exported function of a
 * module the caller names (the caller's own servers and the VM both run in that function), and
 * hands back what it returns. The standalone proof's function, `runStandaloneNetboot` (dnsmasq for
 * DHCP, the project's TFTP server, nbdkit), is at the end of this file; a run driven by the agent
 * writes its own and calls the same pieces.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { TftpServer, realFileResolver, type TransferEnd } from '../../runner-agent/src/tftp/server.js';
import { NETBOOT_LINES } from './netboot-os.js';
import { INIT_BANNER } from './os-image.js';
import {
  GUEST_ADDR,
  QEMU_BINARY,
  boardEnvironment,
  qmpCommand,
  startQemuProcess,
  withConsoleOnFailure,
  type QemuBoard,
} from './qemu-board.js';

const execFileAsync = promisify(execFile);
const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const THIS_FILE = fileURLToPath(import.meta.url);

/** The link the VM and the servers share inside the namespace. */
export const TAP_LINK = { name: 'tap0', hostAddress: '10.42.0.1', prefixLength: 24 } as const;
/** The NBD port (IANA's), which Debian's initramfs script uses when `nbdroot=` names none. */
export const NBD_PORT = 10809;

const ENV_SIZE = 0x40000; // CONFIG_ENV_SIZE of qemu_arm64_defconfig (as qemu-board.ts)
const PFLASH_SIZE = 64 * 1024 * 1024;
const hex = (n: number) => `0x${n.toString(16)}`;
/** Where the stand-in puts cmdline.txt before copying it into bootargs: below the load buffer. */
const CMDLINE_ADDR = GUEST_ADDR.load;

/** What U-Boot prints at each step of the stand-in, and when a step fails. */
export const FIRMWARE_LINES = {
  start: /netboot-vm: firmware stand-in: dhcp/,
  loaded: /netboot-vm: firmware stand-in: loaded (\S+) (\S+) (\S+)/,
  booting: /netboot-vm: firmware stand-in: booti/,
  failed: /netboot-vm: firmware stand-in FAILED/,
  /** waitForReset's first boot: U-Boot stops at its prompt until a reset (QMP `system_reset`). */
  waiting: /netboot-vm: firmware stand-in: waiting for a reset/,
} as const;

/** What U-Boot prints in the `distro-dhcp` boot (NetbootVmOptions.boot). */
export const DISTRO_DHCP_LINES = {
  start: /netboot-vm: distro boot: dhcp/,
  /** The DHCP/TFTP of the script failed, or the script returned. */
  failed: /netboot-vm: distro boot FAILED/,
} as const;

/** What U-Boot prints in the `distro` boot (NetbootVmOptions.boot) before it tries the card. */
export const DISTRO_LINES = {
  card: /netboot-vm: distro boot: mmc 0:1/,
} as const;

/** The script Debian's distro boot fetches over DHCP/TFTP (`boot_script_dhcp` of its Pi builds). */
export const DISTRO_DHCP_SCRIPT = 'boot.scr.uimg';

/** Whether this machine lets us make a private network namespace with a tap link in it. */
export async function privateNetworkAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    await execFileAsync('unshare', ['-rn', 'sh', '-c', 'ip tuntap add tap0 mode tap && test -c /dev/net/tun']);
    return { ok: true };
  } catch (err) {
    return {
      ok: false,
      reason:
        'unshare -rn with a tap link does not work here (user namespaces, iproute2, /dev/net/tun): ' +
        (err as Error).message,
    };
  }
}

/**
 * Inside the namespace: loopback up, then `tap0` with the host's address, up. QEMU opens the tap
 * by name (`ifname=`); its carrier comes up when QEMU does.
 */
export async function setUpTapLink(
  link: { name: string; hostAddress: string; prefixLength: number } = TAP_LINK,
): Promise<void> {
  const ip = (...args: string[]) => execFileAsync('ip', args);
  await ip('link', 'set', 'lo', 'up');
  await ip('tuntap', 'add', link.name, 'mode', 'tap');
  await ip('addr', 'add', `${link.hostAddress}/${link.prefixLength}`, 'dev', link.name);
  await ip('link', 'set', link.name, 'up');
}

export interface FirmwareFiles {
  kernel: string;
  initrd: string;
  cmdline: string;
}

/**
 * The `distro-dhcp` boot (NetbootVmOptions.boot): what Debian's U-Boot does on a board whose card
 * holds nothing bootable — distro boot's `bootcmd_dhcp` (include/config_distro_bootcmd.h): a
 * hush-local `devtype=dhcp`, then `dhcp ${scriptaddr} ${boot_script_dhcp}` (DHCP, then TFTP of
 * the script from the server the answer names) and `source` of it. Here U-Boot stands in for
 * both the Pi firmware and the U-Boot it would load. `pci enum; mmc list` first: the SD card on
 * QEMU's sdhci-pci is probed only then (a Pi's is there from the start), so a script it runs can
 * write the card.
 */
export function distroDhcpScripts(): Record<string, string> {
  return { bootcmd: ['pci enum', 'mmc list', ...DISTRO_DHCP_STEPS].join('; '), boot_script_dhcp: DISTRO_DHCP_SCRIPT };
}

/** distro boot's bootcmd_dhcp, after the card is probed (distroDhcpScripts, distroScripts). */
const DISTRO_DHCP_STEPS = [
  'devtype=dhcp',
  'echo "netboot-vm: distro boot: dhcp"',
  'if dhcp ${scriptaddr} ${boot_script_dhcp}; then source ${scriptaddr}; fi',
  'echo "netboot-vm: distro boot FAILED (no script over DHCP/TFTP, or it returned)"',
];

/**
 * The `distro` boot (NetbootVmOptions.boot): Debian's Pi U-Boot's distro boot order, the card
 * before the network (`boot_targets` starts with mmc0, ends with dhcp). From the card's first
 * partition it sources `boot.scr.uimg` or `boot.scr` (scan_dev_for_scripts, with distro boot's
 * hush-local devtype/devnum/distro_bootpart, which stage 1 reads); a blank card, or a script that
 * returns, falls through to distroDhcpScripts' DHCP boot. A card the agent flashed holds stage 1
 * as boot.scr, which boots the installed system when the agent has no job for the board.
 */
export function distroScripts(): Record<string, string> {
  const card = [
    'devtype=mmc',
    'devnum=0',
    'distro_bootpart=1',
    'echo "netboot-vm: distro boot: mmc 0:1"',
    'for script in boot.scr.uimg boot.scr; do ' +
      'if fatload mmc 0:1 ${scriptaddr} ${script}; then source ${scriptaddr}; fi; done',
  ];
  return {
    bootcmd: ['pci enum', 'mmc list', ...card, ...DISTRO_DHCP_STEPS].join('; '),
    boot_script_dhcp: DISTRO_DHCP_SCRIPT,
  };
}

/** Option 60 of a Pi 3 boot ROM DISCOVER (DESIGN §8). */
export const PI3_ROM_VENDOR_CLASS = 'PXEClient:Arch:00000:UNDI:002001';

/** The names Raspberry Pi OS's config.txt has the firmware load (see netboot-os.ts's CONFIG_TXT). */
export const PI_FIRMWARE_FILES: FirmwareFiles = { kernel: 'kernel8.img', initrd: 'initrd.img', cmdline: 'cmdline.txt' };

/**
 * U-Boot's environment scripts standing in for the Pi firmware, `bootcmd` first: `dhcp`, then
 * `tftpboot` of the kernel, the initramfs and cmdline.txt from `${netboot_prefix}`
 * (`netboot_load`), cmdline.txt as `bootargs` (`netboot_args`: NUL-terminated in RAM, a trailing
 * newline cut, read with `setexpr.s`), and `booti` with `${fdtcontroladdr}`, the device tree QEMU
 * gave U-Boot. Any failing step ends in FIRMWARE_LINES.failed.
 */
export function firmwareScripts(files: FirmwareFiles = PI_FIRMWARE_FILES): Record<string, string> {
  for (const name of [files.kernel, files.initrd, files.cmdline])
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`firmware file name ${JSON.stringify(name)} is not plain`);
  const say = (text: string) => `echo "netboot-vm: firmware stand-in: ${text}"`;
  return {
    bootcmd: [
      say('dhcp'),
      'if dhcp && run netboot_server && run netboot_load && run netboot_args; then ' +
        `${say('loaded ${netboot_kernel_size} ${netboot_initrd_size} ${netboot_cmdline_size}')}; ` +
        `${say('booti')}; echo "netboot-vm: bootargs: \${bootargs}"; ` +
        'booti ${kernel_addr_r} ${ramdisk_addr_r}:${netboot_initrd_size} ${fdtcontroladdr}; fi',
      'echo "netboot-vm: firmware stand-in FAILED (see the lines above)"',
    ].join('; '),
    netboot_load: [
      `tftpboot \${kernel_addr_r} \${netboot_prefix}${files.kernel}`,
      'setenv netboot_kernel_size ${filesize}',
      `tftpboot \${ramdisk_addr_r} \${netboot_prefix}${files.initrd}`,
      'setenv netboot_initrd_size ${filesize}',
      `tftpboot \${netboot_cmdline_addr} \${netboot_prefix}${files.cmdline}`,
      'setenv netboot_cmdline_size ${filesize}',
    ].join(' && '),
    netboot_args: [
      'setexpr netboot_end ${netboot_cmdline_addr} + ${netboot_cmdline_size}',
      'mw.b ${netboot_end} 0 1',
      'setexpr netboot_last ${netboot_end} - 1',
      'if itest.b *${netboot_last} == 0x0a; then mw.b ${netboot_last} 0 1; fi',
      'setexpr.s bootargs *${netboot_cmdline_addr}',
    ].join('; '),
  };
}

export interface NetbootVmOptions {
  ubootBin: string;
  /** Holds env.img, the QMP socket and console.log; the caller creates and removes it. */
  workDir: string;
  /** The NIC's MAC (what the DHCP server sees). */
  mac: string;
  /**
   * The board's folder on the TFTP server with its trailing `/` (`1234abcd/` like a Pi's serial,
   * `dc-a6-32-01-36-c2/` by MAC), or '' for the TFTP root.
   */
  prefix: string;
  /** The tap inside the namespace (setUpTapLink's). */
  tap?: string;
  /**
   * The TFTP server to ask; by default the one the DHCP answer names (its `siaddr`, what U-Boot's
   * `dhcp` puts in `serverip`), as a Pi's firmware does.
   */
  serverIp?: string;
  /** TFTP server port; 69 by default. */
  tftpPort?: number;
  files?: FirmwareFiles;
  /**
   * DHCP option 60 of U-Boot's DISCOVER and REQUEST (its `bootp_vci`), e.g. PI3_ROM_VENDOR_CLASS
   * for a responder that answers only what looks like a Pi's boot ROM; U-Boot's own by default.
   */
  vendorClass?: string;
  /**
   * Boot only after a reset: the first boot arms the stand-in (a word in RAM), prints
   * FIRMWARE_LINES.waiting and stops at the prompt; a boot after a QMP `system_reset` (a
   * `qmp:<qmpSocket>` reset line's) network-boots. For a job that stages the board's files before
   * it resets the board, as the agent does. One network boot per QEMU run is what is sure: Linux
   * may overwrite the word, and the next reset then waits again.
   */
  waitForReset?: boolean;
  /**
   * The serial console on a unix socket (`-serial unix:<path>,server=on,wait=off`, what a
   * `unix:<path>` console spec reads) instead of stdio, and no monitor: `console()` then shows
   * only QEMU's own messages, so followNetboot cannot follow the boot. Output printed while no
   * client is connected is lost.
   */
  serialSocket?: string;
  /** Extra or overriding U-Boot environment variables (e.g. `tftpwindowsize`, `tftpblocksize`). */
  env?: Record<string, string>;
  /**
   * What U-Boot's boot command does: `firmware` (the default) stands in for the Pi firmware's
   * network boot (firmwareScripts); `distro-dhcp` for a blank card's distro boot, which fetches
   * `boot.scr.uimg` over DHCP/TFTP and sources it (distroDhcpScripts); `distro` for Debian's
   * whole order, the card's boot script first and DHCP after it (distroScripts), so a card the
   * agent flashed boots its installed system after the flash's reset.
   */
  boot?: 'firmware' | 'distro-dhcp' | 'distro';
  /**
   * A raw SD card image on QEMU's sdhci-pci (written in place; a power of two in bytes), as
   * qemu-board.ts gives its boards. None by default: the firmware stand-in never touches a card.
   */
  sdImage?: string;
  /**
   * Start with the CPU stopped (QEMU's `-S`) until a QMP `cont`: a caller reading the console on
   * `serialSocket` connects first, so it loses none of the first boot's lines.
   */
  startPaused?: boolean;
  /** Hard limit for the whole QEMU run. */
  timeoutMs: number;
}

/** The whole U-Boot environment of the stand-in (written to pflash as QEMU starts). */
export function netbootVmEnvironment(
  o: Omit<NetbootVmOptions, 'ubootBin' | 'workDir' | 'mac' | 'timeoutMs' | 'serialSocket' | 'sdImage' | 'startPaused'>,
): Record<string, string> {
  if (o.prefix !== '' && !/^[A-Za-z0-9._-]+\/$/.test(o.prefix))
    throw new Error(`prefix must be '' or one folder name ending in '/': ${JSON.stringify(o.prefix)}`);
  const distro = o.boot === 'distro-dhcp' || o.boot === 'distro';
  const scripts =
    o.boot === 'distro' ? distroScripts() : o.boot === 'distro-dhcp' ? distroDhcpScripts() : firmwareScripts(o.files);
  return boardEnvironment({
    tftpPort: o.tftpPort ?? 69,
    bootcmd: '',
    env: {
      // No address until DHCP gives one; the DHCP answer alone must do, as for the firmware.
      ipaddr: '',
      netmask: '',
      serverip: '',
      // `dhcp ADDR FILE` downloads only when autoload is not "no" (U-Boot's net_auto_load).
      autoload: distro ? 'yes' : 'no',
      netboot_prefix: o.prefix,
      netboot_cmdline_addr: hex(CMDLINE_ADDR),
      netboot_server: o.serverIp ? `setenv serverip ${o.serverIp}` : 'true',
      ...(o.vendorClass === undefined ? {} : { bootp_vci: o.vendorClass }),
      // Replaces boardEnvironment's bootcmd, which starts with `pci enum; mmc list`: the firmware
      // stand-in needs no SD card (distro-dhcp probes it itself).
      ...scripts,
      ...(o.waitForReset ? armedBootcmd(scripts.bootcmd!) : {}),
      ...o.env,
    },
  });
}

/**
 * waitForReset's arming word: a word in RAM that QEMU's system_reset keeps (it reloads only its
 * ROM images) and a cold start has zeroed. Not the pflash env: U-Boot's `saveenv` to QEMU's CFI
 * flash times out mid-write and leaves a bad CRC (tried: U-Boot 2023.01, QEMU 7.2). Far from what
 * U-Boot and the stand-in use, but Linux may reuse it: after the kernel ran, a reset may find the
 * word gone and wait for one more.
 */
const ARMED_ADDR = GUEST_ADDR.load + 0x700_0000;
const ARMED_MAGIC = 0x6e657462; // "netb"

/** waitForReset's boot command: `boot` (the stand-in's or distro boot's) once the word is armed, else arm and stop. */
function armedBootcmd(boot: string): Record<string, string> {
  return {
    bootcmd:
      `if itest.l *${hex(ARMED_ADDR)} == ${hex(ARMED_MAGIC)}; then run netboot_firmware; else ` +
      `mw.l ${hex(ARMED_ADDR)} ${hex(ARMED_MAGIC)} 1; ` +
      'echo "netboot-vm: firmware stand-in: waiting for a reset"; fi',
    netboot_firmware: boot,
  };
}

/** Starts the VM (inside the namespace, after setUpTapLink): U-Boot runs the stand-in at once. */
export async function startNetbootVm(o: NetbootVmOptions): Promise<QemuBoard> {
  const env = netbootVmEnvironment(o);
  const envText = join(o.workDir, 'env.txt');
  const envImage = join(o.workDir, 'env.img');
  await writeFile(
    envText,
    Object.entries(env)
      .map(([k, v]) => `${k}=${v}\n`)
      .join(''),
  );
  await execFileAsync('mkenvimage', ['-s', hex(ENV_SIZE), '-o', envImage, envText]);
  await truncate(envImage, PFLASH_SIZE);
  const qmpSocket = join(o.workDir, 'qmp.sock');
  const args = [
    '-M',
    'virt',
    '-cpu',
    'cortex-a57',
    '-m',
    '1G',
    '-nographic',
    '-bios',
    o.ubootBin,
    '-netdev',
    `tap,id=n0,ifname=${o.tap ?? TAP_LINK.name},script=no,downscript=no`,
    // virtio over MMIO: the NIC U-Boot drives, and the kernel with virtio_mmio + virtio_net.
    '-device',
    `virtio-net-device,netdev=n0,mac=${o.mac}`,
    '-drive',
    `if=pflash,format=raw,unit=1,file=${envImage}`,
    '-qmp',
    `unix:${qmpSocket},server=on,wait=off`,
  ];
  if (o.serialSocket) args.push('-serial', `unix:${o.serialSocket},server=on,wait=off`, '-monitor', 'none');
  if (o.sdImage)
    args.push(
      '-device',
      'sdhci-pci',
      '-drive',
      `if=none,id=sdcard,format=raw,file=${o.sdImage}`,
      '-device',
      'sd-card,drive=sdcard',
    );
  if (o.startPaused) args.push('-S');
  return startQemuProcess(QEMU_BINARY, args, { workDir: o.workDir, timeoutMs: o.timeoutMs, qmpSocket });
}

// ---- Helper processes inside the namespace ---------------------------------------------------

const peers = new Set<ChildProcess>();

/**
 * Starts a server the run needs (dnsmasq, nbdkit…) through `setpriv --pdeathsig KILL`, so it dies
 * with this process whatever ends it; its output goes to `logFile`. Stopped by stopPeers().
 */
export async function startPeer(command: string, args: string[], logFile: string): Promise<ChildProcess> {
  const log = createWriteStream(logFile);
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', command, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  peers.add(child);
  child.once('close', () => peers.delete(child));
  await new Promise<void>((ok, fail) => {
    child.once('spawn', () => ok());
    child.once('error', (err) => fail(new Error(`could not start ${command}: ${err.message}`)));
  });
  return child;
}

/** Ends every peer startPeer started (SIGTERM, then SIGKILL after 2 s) and waits for them. */
export async function stopPeers(): Promise<void> {
  await Promise.all(
    [...peers].map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise<void>((ok) => child.once('close', () => ok()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await gone;
      clearTimeout(timer);
    }),
  );
}

/** Resolves once something accepts TCP connections on host:port (a server that has started). */
export async function waitForTcp(host: string, port: number, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((done) => {
      const s = connect({ host, port });
      s.once('connect', () => {
        s.destroy();
        done(true);
      });
      s.once('error', () => done(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`${what} did not listen on ${host}:${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---- Running a function inside unshare -rn ---------------------------------------------------

export interface PrivateNetworkRun {
  /** The module holding `fn` (a path; relative to the repository root). */
  module: string;
  /** Its exported async function, called with `input`; what it resolves with must be JSON. */
  fn: string;
  input: unknown;
  /** Kills the child (and so, by pdeathsig, QEMU and the peers) when it passes; the child also dies with its caller. */
  timeoutMs: number;
  /** Where the child writes its result (result.json); the caller creates and removes it. */
  workDir: string;
}

/**
 * Runs `fn(input)` of `module` in a new process inside `unshare -rn` (loopback down, no other
 * link: the function sets up its tap) and resolves with its result; rejects with the child's
 * stderr when it throws or dies.
 */
export async function runInPrivateNetwork<T>(o: PrivateNetworkRun): Promise<T> {
  await mkdir(o.workDir, { recursive: true });
  const request = {
    module: resolve(REPO_ROOT, o.module),
    fn: o.fn,
    input: o.input,
    result: join(o.workDir, 'result.json'),
  };
  await rm(request.result, { force: true });
  try {
    // setpriv inside the namespace: entering it resets a parent-death signal set before.
    const child = ['setpriv', '--pdeathsig', 'KILL', process.execPath, '--import', 'tsx', THIS_FILE];
    await execFileAsync('unshare', ['-rn', ...child, JSON.stringify(request)], {
      cwd: REPO_ROOT,
      timeout: o.timeoutMs,
      killSignal: 'SIGKILL',
      maxBuffer: 64 * 1024 * 1024,
    });
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string; killed?: boolean };
    const why = e.killed ? `killed after ${o.timeoutMs} ms` : e.message.split('\n')[0];
    throw new Error(`the run inside unshare -rn failed (${why}):\n${(e.stderr ?? '').slice(-8000)}`, { cause: err });
  }
  return JSON.parse(await readFile(request.result, 'utf8')) as T;
}

async function childMain(arg: string): Promise<void> {
  const request = JSON.parse(arg) as { module: string; fn: string; input: unknown; result: string };
  const mod = (await import(pathToFileURL(request.module).href)) as Record<string, unknown>;
  const fn = mod[request.fn];
  if (typeof fn !== 'function') throw new Error(`${request.module} exports no function ${request.fn}`);
  try {
    const result: unknown = await (fn as (input: unknown) => Promise<unknown>)(request.input);
    await writeFile(request.result, JSON.stringify(result ?? null));
  } finally {
    await stopPeers();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  childMain(process.argv[2] ?? '').then(
    // QEMU's and the peers' handles may linger a moment: the result is written, leave now.
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}

// ---- Following a network boot on the console ------------------------------------------------

export interface NetbootProgress {
  /**
   * ms from `since` (QEMU's start, or the reset with waitForReset) to the first console line of
   * each step (FIRMWARE_LINES, NETBOOT_LINES, `marker`).
   */
  at: Record<string, number | undefined>;
  /** `marker`: the root's init printed the marker; `failed`: a FAILED line (firmware stand-in or /init). */
  end: 'marker' | 'failed';
  /** The FAILED line, when there was one. */
  failure?: string;
  /** QEMU's exit code: 0 when an init powered the VM off; null when it had to be killed. */
  exitCode: number | null;
}

/**
 * Follows a network boot to its end: the root's init printing `INIT_BANNER marker`, or a FAILED
 * line. Then waits for the power-off (both inits power off; the firmware stand-in's failure
 * leaves U-Boot at its prompt, so QEMU is killed) and returns each step's time.
 */
export async function followNetboot(
  board: QemuBoard,
  o: { marker: string; timeoutMs: number; since?: number },
): Promise<NetbootProgress> {
  const since = o.since ?? performance.now();
  const at: NetbootProgress['at'] = {};
  const lines: Record<string, RegExp> = {
    firmwareDhcp: FIRMWARE_LINES.start,
    firmwareLoaded: FIRMWARE_LINES.loaded,
    booti: FIRMWARE_LINES.booting,
    ...Object.fromEntries(Object.entries(NETBOOT_LINES).filter(([k]) => k !== 'failed')),
  };
  const steps = Object.entries(lines).map(([key, re]) =>
    board.waitForConsole(re, o.timeoutMs).then(
      () => void (at[key] = Math.round(performance.now() - since)),
      () => undefined,
    ),
  );
  const marker = new RegExp(`${INIT_BANNER} ${o.marker.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`);
  const failed = new RegExp(`${NETBOOT_LINES.failed.source}|${FIRMWARE_LINES.failed.source}`);
  const end = await Promise.race([
    board.waitForConsole(marker, o.timeoutMs).then(() => 'marker' as const),
    board.waitForConsole(failed, o.timeoutMs).then(() => 'failed' as const),
  ]);
  if (end === 'marker') at.marker = Math.round(performance.now() - since);
  const failure = end === 'failed' ? failed.exec(board.console())?.[0] : undefined;
  let exitCode: number | null;
  if (failure && FIRMWARE_LINES.failed.test(failure)) {
    await board.kill();
    exitCode = null;
  } else {
    exitCode = await board.waitForExit(30_000);
  }
  await board.kill();
  await Promise.all(steps);
  return { at, end, ...(failure ? { failure } : {}), exitCode };
}

// ---- The standalone proof: dnsmasq (DHCP), the project's TFTP server, nbdkit -------------------

export interface StandaloneNetbootInput {
  ubootBin: string;
  workDir: string;
  mac: string;
  /** The disk image whose partition 2 nbdkit exports (through the cow filter: never written). */
  image: string;
  /** The TFTP root; the board's files are under `<tftpRoot>/<prefix>`. */
  tftpRoot: string;
  prefix: string;
  /** The image's marker: the run ends when `INIT_BANNER marker` is on the console. */
  marker: string;
  /** false: no NBD server (the initramfs's connect must fail). Default true. */
  nbd?: boolean;
  /** U-Boot's DHCP option 60 (NetbootVmOptions.vendorClass). */
  vendorClass?: string;
  /** Boot first to the prompt, then network-boot after a QMP system_reset, as a job's reset line does. */
  waitForReset?: boolean;
  timeoutMs: number;
  /** Extra U-Boot environment (tftpwindowsize…). */
  env?: Record<string, string>;
}

export interface StandaloneNetbootResult extends NetbootProgress {
  transfers: Pick<TransferEnd, 'path' | 'bytes' | 'ok'>[];
  /** The address the initramfs's DHCP lease gave (NETBOOT_LINES.address). */
  leasedAddress?: string;
  consoleLog: string;
  console: string;
  dnsmasqLog: string;
  nbdkitLog: string;
}

/**
 * The proof without the agent, run inside the namespace: tap0 at 10.42.0.1, dnsmasq answering
 * DHCP on it (root-less in the user namespace: `--user=root` is the namespace's root, the lease
 * file in workDir), the project's TftpServer on 10.42.0.1:69 serving `tftpRoot`, nbdkit on
 * 10.42.0.1:10809 exporting partition 2 of the image through the cow filter (any export name),
 * then the VM, followed to its end.
 */
export async function runStandaloneNetboot(o: StandaloneNetbootInput): Promise<StandaloneNetbootResult> {
  await setUpTapLink();
  const host = TAP_LINK.hostAddress;
  const dnsmasqLog = join(o.workDir, 'dnsmasq.log');
  const nbdkitLog = join(o.workDir, 'nbdkit.log');
  await startPeer(
    'dnsmasq',
    [
      '--no-daemon',
      '--conf-file=/dev/null',
      '--port=0',
      `--interface=${TAP_LINK.name}`,
      '--bind-interfaces',
      '--user=root',
      '--pid-file=',
      `--dhcp-leasefile=${join(o.workDir, 'dnsmasq.leases')}`,
      '--dhcp-range=10.42.0.100,10.42.0.199,255.255.255.0,10m',
      // Nothing else is on the link: skip the 3 s ping that proves a new address unused.
      '--no-ping',
      // siaddr: the TFTP server U-Boot's `dhcp` puts in serverip (also the initramfs's ROOTSERVER).
      `--dhcp-boot=${PI_FIRMWARE_FILES.kernel},,${host}`,
      '--log-dhcp',
    ],
    dnsmasqLog,
  );
  const transfers: StandaloneNetbootResult['transfers'] = [];
  const tftp = new TftpServer({
    address: host,
    port: 69,
    resolver: realFileResolver(o.tftpRoot),
    onTransferEnd: (t) => transfers.push({ path: t.path, bytes: t.bytes, ok: t.ok }),
  });
  await tftp.listen();
  await writeFile(nbdkitLog, '');
  if (o.nbd !== false) {
    await startPeer(
      'nbdkit',
      [
        '--foreground',
        '--exit-with-parent',
        '-i',
        host,
        '-p',
        String(NBD_PORT),
        '--filter=cow',
        '--filter=partition',
        'file',
        o.image,
        'partition=2',
      ],
      nbdkitLog,
    );
  }
  let board: QemuBoard | undefined;
  try {
    if (o.nbd !== false) await waitForTcp(host, NBD_PORT, 10_000, 'nbdkit');
    const since = performance.now();
    board = await startNetbootVm({
      ubootBin: o.ubootBin,
      workDir: o.workDir,
      mac: o.mac,
      prefix: o.prefix,
      timeoutMs: o.timeoutMs,
      vendorClass: o.vendorClass,
      waitForReset: o.waitForReset,
      env: o.env,
    });
    const b = board;
    return await withConsoleOnFailure(b, async () => {
      let from = since;
      if (o.waitForReset) {
        await b.waitForConsole(FIRMWARE_LINES.waiting, o.timeoutMs);
        from = performance.now();
        await qmpCommand(b.qmpSocket, 'system_reset');
      }
      const progress = await followNetboot(b, { marker: o.marker, timeoutMs: o.timeoutMs, since: from });
      const text = b.console();
      return {
        ...progress,
        transfers,
        leasedAddress: NETBOOT_LINES.address.exec(text)?.[1],
        consoleLog: b.consoleLog,
        console: text,
        dnsmasqLog,
        nbdkitLog,
      };
    });
  } finally {
    await board?.kill();
    await tftp.close();
    await stopPeers();
  }
}

/** sha256 of a file, hex (the test checks the image is unchanged after the boot wrote its root). */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
