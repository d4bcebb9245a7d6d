/**
 * Issue 11, the QEMU test OS on its own: a board that network-boots like a Pi, inside a private
 * network namespace. The test U-Boot stands in for the firmware (DHCP from dnsmasq on a tap link,
 * `tftpboot` of kernel8.img, initrd.img and cmdline.txt from the board's prefix folder on the
 * project's TFTP server), Debian's arm64 kernel boots the image's initramfs, which gets an address
 * by DHCP, connects /dev/nbd0 to nbdkit's export of the image's partition 2 (cow filter), mounts it
 * read-write and switches to it; the root's init prints the image's marker and powers off. The
 * image file is not changed by any of it.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  NETBOOT_LINES,
  ROOT_PROOF_FILE,
  buildNetbootTestImage,
  cardCmdline,
  nbdRootCmdline,
  netbootInitScript,
  netbootOsGate,
  PREPARE_NETBOOT_OS_TIMEOUT_MS,
  type NetbootOsParts,
} from './netboot-os.js';
import {
  NBD_PORT,
  PI3_ROM_VENDOR_CLASS,
  TAP_LINK,
  privateNetworkAvailable,
  runInPrivateNetwork,
  sha256File,
  type StandaloneNetbootInput,
  type StandaloneNetbootResult,
} from './netboot-vm.js';
import { INIT_BANNER, newMarker, readBootFile } from './os-image.js';
import { consoleTail, killAllQemuBoards } from './qemu-board.js';
import { BUILD_TIMEOUT_MS, inCi, qemuTestGate } from './test-uboot.js';

const execFileAsync = promisify(execFile);

const uboot = await qemuTestGate('network boot of the test OS (U-Boot as the firmware, Linux, NBD root, QEMU)');
const osGate = await netbootOsGate();
const network = await privateNetworkAvailable();
const peers = await peersAvailable();
const missing = [!osGate.run && osGate.reason, !network.ok && network.reason, !peers.ok && peers.reason].filter(
  (r): r is string => typeof r === 'string' && r !== '',
);
// Under CI nothing may be missing: the test runs and fails on whatever is.
const run = uboot.run && (missing.length === 0 || inCi);
const title = uboot.run && !run ? `${uboot.title} (skipped: ${missing.join('; ')})` : uboot.title;

const MAC = '52:54:00:4e:42:01';
/** A Pi's serial folder (TFTP_PREFIX 0: the low 32 bits of the serial, 8 hex digits). */
const PREFIX = '4e420001/';
const EXPORT_NAME = 'root';
/** U-Boot + 33 MB over TFTP + the Debian kernel's boot under TCG on 2 busy cores. */
const RUN_TIMEOUT_MS = 150_000;

async function peersAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  const checks: [string, string][] = [
    ['dnsmasq --version', 'dnsmasq-base'],
    ['nbdkit --filter=cow --filter=partition file --version', 'nbdkit'],
    ['busybox sh -c true', 'busybox'],
  ];
  for (const [command, pkg] of checks) {
    try {
      await execFileAsync('sh', ['-c', `${command} >/dev/null 2>&1`]);
    } catch {
      return { ok: false, reason: `${command.split(' ')[0]} is missing (Debian: ${pkg})` };
    }
  }
  return { ok: true };
}

describe('the network-boot initramfs, without a VM', () => {
  it('moves the root of a card command line to NBD in the grammar of Debian local-top/nbd', () => {
    const card = cardCmdline();
    expect(card).toContain('root=PARTUUID=5250460a-02');
    expect(nbdRootCmdline(card, { server: '10.42.0.1', port: 10809, exportName: 'root' })).toBe(
      'console=ttyAMA0,115200 rootfstype=ext4 fsck.repair=yes rootwait root=/dev/nbd0 nbdroot=10.42.0.1:10809/root',
    );
    expect(nbdRootCmdline(`${card} quiet`, { server: '10.0.0.5', exportName: 'pi-4' })).toMatch(
      / quiet root=\/dev\/nbd0 nbdroot=10\.0\.0\.5\/pi-4$/,
    );
  });

  it.skipIf(!peers.ok && !inCi)('/init is a valid busybox sh script', async () => {
    const script = join(tmpdir(), `rpi-flash-netboot-init-${process.pid}.sh`);
    await writeFile(script, netbootInitScript({ modules: ['lib/modules/x/kernel/a.ko'] }));
    try {
      await execFileAsync('busybox', ['sh', '-n', script]);
    } finally {
      await rm(script, { force: true });
    }
  });
});

describe.skipIf(!run)(title, () => {
  let ubootBin = '';
  let parts: NetbootOsParts;
  let workDir = '';

  beforeAll(async () => {
    if (missing.length) throw new Error(`the network-boot test needs: ${missing.join('; ')}`);
    ubootBin = await uboot.ubootBin();
    parts = await osGate.parts();
  }, BUILD_TIMEOUT_MS + PREPARE_NETBOOT_OS_TIMEOUT_MS);

  beforeEach(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-netboot-'));
  });

  afterEach(async () => {
    await killAllQemuBoards();
    await rm(workDir, { recursive: true, force: true });
  });

  /** Builds an image, lays out its prefix folder as the agent will serve it, and boots it in the namespace. */
  async function netboot(o: { nbd?: boolean } = {}) {
    const marker = newMarker('netboot');
    const image = join(workDir, 'netboot.img');
    const built = await buildNetbootTestImage({ path: image, parts, marker });
    const before = await sha256File(image);
    // What the agent will serve from the image: here copied out of the boot partition with mtools,
    // cmdline.txt with its root moved to NBD.
    const folder = join(workDir, 'tftp', PREFIX);
    await mkdir(folder, { recursive: true });
    for (const name of ['kernel8.img', 'initrd.img'])
      await writeFile(join(folder, name), await readBootFile(image, name));
    const cardLine = (await readBootFile(image, 'cmdline.txt')).toString().trim();
    expect(cardLine).toBe(built.cmdline);
    const cmdline = nbdRootCmdline(cardLine, { server: TAP_LINK.hostAddress, port: NBD_PORT, exportName: EXPORT_NAME });
    await writeFile(join(folder, 'cmdline.txt'), `${cmdline}\n`);
    const input: StandaloneNetbootInput = {
      ubootBin,
      workDir: join(workDir, 'vm'),
      mac: MAC,
      image,
      tftpRoot: join(workDir, 'tftp'),
      prefix: PREFIX,
      marker,
      nbd: o.nbd,
      // The firmware stand-in asks as a Pi 3's boot ROM does, and boots from the network only after a
      // QMP system_reset, as a job's reset line resets a board (its first boot stops at the prompt).
      vendorClass: PI3_ROM_VENDOR_CLASS,
      waitForReset: true,
      timeoutMs: RUN_TIMEOUT_MS - 10_000,
    };
    await mkdir(input.workDir);
    const result = await runInPrivateNetwork<StandaloneNetbootResult>({
      module: 'test/qemu/netboot-vm.ts',
      fn: 'runStandaloneNetboot',
      input,
      timeoutMs: RUN_TIMEOUT_MS,
      workDir: input.workDir,
    });
    return { result, marker, image, before, cmdline };
  }

  /** Runs the assertions; a failure shows each step's time and the console's end. */
  function withStory(r: StandaloneNetbootResult, check: () => Promise<void> | void) {
    return Promise.resolve()
      .then(check)
      .catch((err: unknown) => {
        (err as Error).message +=
          `\n--- steps (ms from QEMU's start) ---\n${JSON.stringify(r.at)}` +
          `\n--- board console (${r.consoleLog}) ---\n${consoleTail(r.console, 8000)}`;
        throw err;
      });
  }

  it(
    "DHCPs, loads the boot files from its prefix folder, mounts the image's partition 2 over NBD and prints the marker",
    async () => {
      const { result: r, marker, image, before, cmdline } = await netboot();
      await withStory(r, async () => {
        expect(r.failure).toBeUndefined();
        expect(r.end).toBe('marker');
        expect(r.console).toContain(`${INIT_BANNER} ${marker}`);
        expect(r.exitCode).toBe(0); // the root's init powered the VM off
        // The firmware stand-in fetched exactly the prefix folder's three files, whole.
        expect(r.transfers.filter((t) => t.ok).map((t) => t.path)).toEqual(
          ['kernel8.img', 'initrd.img', 'cmdline.txt'].map((n) => `${PREFIX}${n}`),
        );
        expect(r.console).toContain(`netboot-vm: bootargs: ${cmdline}`);
        expect(await readFile(r.dnsmasqLog, 'utf8')).toContain(`vendor class: ${PI3_ROM_VENDOR_CLASS}`);
        // Every step of /init, in order, then the marker.
        const order = ['start', 'modules', 'link', 'address', 'nbdroot', 'connected', 'mounted', 'wrote', 'switching'];
        const times = [...order.map((k) => r.at[k]), r.at.marker];
        expect(times.every((t) => t !== undefined)).toBe(true);
        expect(times).toEqual([...(times as number[])].sort((a, b) => a - b));
        expect(r.leasedAddress).toMatch(/^10\.42\.0\.1\d\d$/);
        expect(NETBOOT_LINES.nbdroot.exec(r.console)?.slice(1)).toEqual([
          TAP_LINK.hostAddress,
          String(NBD_PORT),
          EXPORT_NAME,
          '/dev/nbd0',
        ]);
        // The root was written to (the proof file) and the image is as it was: the cow filter kept it.
        expect(r.console).toContain(`wrote /newroot/${ROOT_PROOF_FILE}`);
        expect(await sha256File(image)).toBe(before);
      });
      console.log(`network boot: ${JSON.stringify(r.at)}`);
    },
    RUN_TIMEOUT_MS + 30_000,
  );

  it(
    'without an NBD server says so in one FAILED line and powers off',
    async () => {
      const { result: r, marker } = await netboot({ nbd: false });
      await withStory(r, () => {
        expect(r.end).toBe('failed');
        expect(r.failure).toMatch(/^rpi-flash netboot: FAILED at nbd: /);
        expect(r.at.nbdroot).toBeDefined();
        expect(r.at.connected).toBeUndefined();
        expect(r.console).not.toContain(`${INIT_BANNER} ${marker}`);
        expect(r.exitCode).toBe(0); // /init powered the VM off rather than leaving it to a timeout
      });
    },
    RUN_TIMEOUT_MS + 30_000,
  );
});
