/**
 * Issue 12 end to end: the in-place update over SSH, under QEMU inside `unshare -rn`.
 *
 * The board (ota-vm.ts) boots from its own virtio disk through U-Boot as a Pi boots from its card;
 * the test OS on it (ota-os.ts) runs Debian arm64's kernel, busybox and dropbear and prints its
 * image's marker. First the OS alone: it boots, answers SSH with its pinned host key, and booting
 * writes nothing to its disk.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TAP_LINK, privateNetworkAvailable, runInPrivateNetwork } from './netboot-vm.js';
import { INIT_BANNER, newMarker } from './os-image.js';
import {
  OTA_BOARD_ADDRESS,
  OTA_OS_LINES,
  PREPARE_OTA_OS_TIMEOUT_MS,
  buildOtaTestImage,
  makeOtaKeys,
  otaOsGate,
  type OtaImage,
  type OtaKeys,
  type OtaOsParts,
} from './ota-os.js';
import { DISK_BOOT_LINES, makeDisk, type StandaloneOtaInput, type StandaloneOtaResult } from './ota-vm.js';
import { consoleTail } from './qemu-board.js';
import { BUILD_TIMEOUT_MS, inCi, qemuTestGate } from './test-uboot.js';

const uboot = await qemuTestGate('in-place update over SSH (QEMU, unshare -rn)');
const osGate = await otaOsGate();
const network = await privateNetworkAvailable();
const missing = [!osGate.run && osGate.reason, !network.ok && network.reason].filter(
  (r): r is string => typeof r === 'string' && r !== '',
);
// Under CI nothing may be missing: the tests run and fail on whatever is.
const run = uboot.run && (missing.length === 0 || inCi);
const title = uboot.run && !run ? `${uboot.title} (skipped: ${missing.join('; ')})` : uboot.title;

const MiB = 1024 * 1024;
/** The card: 64 MiB, the 32 MiB image at its start. */
const DISK_SIZE = 64 * MiB;
/** Enough for the RAM system and a part (MemAvailable about 200 MiB). */
const BOARD_RAM_MIB = 256;
const MAC = '52:54:00:12:34:60';
/** One boot under TCG on 2 busy cores: U-Boot, the 11 MB kernel inflated, Linux, dropbear. */
const BOOT_TIMEOUT_MS = 120_000;

describe.skipIf(!run)(title, () => {
  let ubootBin = '';
  let parts: OtaOsParts;
  let workDir = '';
  let keys: OtaKeys;
  let imageA: OtaImage;

  beforeAll(async () => {
    ubootBin = await uboot.ubootBin();
    parts = await osGate.parts();
    workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-ota-'));
    keys = await makeOtaKeys(join(workDir, 'keys'));
    imageA = await buildOtaTestImage({
      path: join(workDir, 'a.img'),
      parts,
      keys,
      marker: newMarker('ota-a'),
      label: 'A',
    });
  }, BUILD_TIMEOUT_MS + PREPARE_OTA_OS_TIMEOUT_MS);

  afterAll(async () => {
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  it(
    'the test OS boots image A from its disk, prints its marker, answers SSH with its host key and writes nothing',
    async () => {
      const dir = join(workDir, 'standalone');
      await mkdir(dir);
      const disk = join(dir, 'disk.img');
      await makeDisk({ image: imageA.path, path: disk, size: DISK_SIZE });
      const input: StandaloneOtaInput = {
        ubootBin,
        workDir: dir,
        mac: MAC,
        disk,
        memoryMiB: BOARD_RAM_MIB,
        marker: imageA.marker,
        keyFile: keys.client.opensshFile,
        hostKeyLine: keys.host.publicLine,
        timeoutMs: BOOT_TIMEOUT_MS,
      };
      const r = await runInPrivateNetwork<StandaloneOtaResult>({
        module: 'test/qemu/ota-vm.ts',
        fn: 'runStandaloneOta',
        input,
        timeoutMs: BOOT_TIMEOUT_MS + 30_000,
        workDir: dir,
      });
      try {
        expect(r.failure).toBeUndefined();
        expect(r.at.marker).toBeDefined();
        // The boot went through U-Boot reading the disk's boot partition, then the test OS's steps in order.
        const order = ['diskLoaded', 'initramfs', 'mounted', 'init', 'address', 'sshd', 'marker'];
        expect(order.filter((k) => r.at[k] === undefined)).toEqual([]);
        // The order from the console itself: two lines printed within a millisecond may be seen by
        // their waits in either order.
        const lines = [
          DISK_BOOT_LINES.loaded,
          OTA_OS_LINES.initramfs,
          OTA_OS_LINES.mounted,
          OTA_OS_LINES.init,
          OTA_OS_LINES.address,
          OTA_OS_LINES.sshd,
          new RegExp(`${INIT_BANNER} ${imageA.marker}`),
        ];
        expect(r.console).toMatch(new RegExp(lines.map((re) => re.source).join('[\\s\\S]*')));
        // What the agent's probe will ask: the image, the architecture, root, the root on a disk partition
        // mounted read-only, RAM file systems, MemAvailable, and the address it sees the client at.
        expect(r.ssh.marker).toBe(imageA.marker);
        expect(r.ssh.arch).toBe('aarch64');
        expect(r.ssh.id).toBe('0');
        expect(r.ssh.root).toMatch(/ \/ ro,[^ ]* - ext4 \/dev\/vda2 ro/);
        expect(r.ssh.ramFs).toMatch(/ \/run .* - tmpfs /);
        expect(Number(/(\d+) kB/.exec(r.ssh.memAvailable ?? '')?.[1])).toBeGreaterThan(100 * 1024);
        expect(r.ssh.sshConnection?.split(' ')[0]).toBe(TAP_LINK.hostAddress);
        expect(r.ssh.sshConnection?.split(' ')[2]).toBe(OTA_BOARD_ADDRESS.split('/')[0]);
        // Booting wrote nothing: the root is mounted read-only.
        expect(r.diskAfter).toBe(r.diskBefore);
      } catch (err) {
        (err as Error).message +=
          `\n--- steps (ms from QEMU's start) ---\n${JSON.stringify(r.at)}` +
          `\n--- ssh ---\n${JSON.stringify(r.ssh, null, 1)}` +
          `\n--- board console (${r.consoleFile}) ---\n${consoleTail(r.console, 6000)}`;
        throw err;
      }
      console.log(`OTA test OS boot: ${JSON.stringify(r.at)}`);
    },
    BOOT_TIMEOUT_MS + 60_000,
  );
});
