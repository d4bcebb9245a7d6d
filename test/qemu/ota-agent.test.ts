/**
 * Issue 12 end to end: the in-place update over SSH, under QEMU inside `unshare -rn`, driven by
 * the real agent.
 *
 * The board (ota-vm.ts) boots from its own virtio disk through U-Boot as a Pi boots from its card;
 * the test OS on it (ota-os.ts) runs Debian arm64's kernel, busybox and dropbear and prints its
 * image's marker. First the OS alone: it boots, answers SSH with its pinned host key, and booting
 * writes nothing to its disk.
 *
 * Then three boards, each living through its jobs in order (ota-agent-scenario.ts: one agent per
 * job, its row `layout ota, reset none`, the console on the VM's serial socket):
 * - board 1 (256 MiB) running image A: a wrong pinned host key (refused, nothing touched), a cancel
 *   before the pivot (untouched, still running A), the update to image B (the test's own SSH
 *   session drops at the pivot, the board reboots into B, whose marker passes the `console:` boot
 *   check, and the disk equals B byte for byte), then back to A with one part corrupt once
 *   (retried);
 * - board 2 (112 MiB): refused for its RAM before anything is touched;
 * - board 3 (256 MiB) running A: a cancel after the pivot (the result says the board was in its
 *   RAM system; it finds its files gone and reboots into its untouched A), then a part corrupt
 *   every time (CARD_PARTLY_WRITTEN: the parts before it are B's, the rest still A's).
 *
 * Each board's jobs run once, when the first test that needs them asks; the tests read the record.
 */
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TAP_LINK, privateNetworkAvailable, runInPrivateNetwork } from './netboot-vm.js';
import { INIT_BANNER, newMarker } from './os-image.js';
import {
  MARKER_FILE,
  OTA_BOARD_ADDRESS,
  OTA_OS_LINES,
  PREPARE_OTA_OS_TIMEOUT_MS,
  buildOtaTestImage,
  makeOtaKeys,
  makeTestKey,
  otaOsGate,
  type OtaImage,
  type OtaKeys,
  type OtaOsParts,
  type TestKey,
} from './ota-os.js';
import type { OtaBoardInput, OtaBoardResult, OtaJobRecord, OtaJobSpec } from './ota-agent-scenario.js';
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
/** Too little for one part of the agent's default 64 MiB and its margin (MemAvailable about 64 MiB). */
const SMALL_BOARD_RAM_MIB = 112;
/** The jobs' part size (but board 2's): four parts of the 32 MiB image, so a failing part 2 comes after a write. */
const PART_SIZE = 8 * MiB;
/**
 * The agent's `ota` settings of the tests. busybox's tftp has no window: at 1468-byte blocks it
 * moves 0.6 MB/s into the QEMU board, at 16 KiB (IP fragments on the tap link) 4–6 MB/s.
 */
const OTA_SETTINGS = { partSize: PART_SIZE, tftpBlockSize: 16384 };
/** Each board's jobs: boots, switches (the board's kill loop is slow under TCG), transfers, reboots. */
const BOARD_RUN_TIMEOUT_MS = 360_000;

describe.skipIf(!run)(title, () => {
  let ubootBin = '';
  let parts: OtaOsParts;
  let workDir = '';
  let keys: OtaKeys;
  let imageA: OtaImage;
  let imageB: OtaImage;
  let wrongHostKey: TestKey;

  beforeAll(async () => {
    ubootBin = await uboot.ubootBin();
    parts = await osGate.parts();
    workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-ota-'));
    keys = await makeOtaKeys(join(workDir, 'keys'));
    const image = (label: string) =>
      buildOtaTestImage({
        path: join(workDir, `${label.toLowerCase()}.img`),
        parts,
        keys,
        marker: newMarker(`ota-${label.toLowerCase()}`),
        label,
      });
    // Same layout, other markers and root contents (each root's payload file comes from its marker).
    [imageA, imageB] = await Promise.all([image('A'), image('B')]);
    wrongHostKey = await makeTestKey(join(workDir, 'keys'), 'other_host_ed25519');
  }, BUILD_TIMEOUT_MS + PREPARE_OTA_OS_TIMEOUT_MS);

  afterAll(async () => {
    // KEEP_OTA_AGENT_DIR=1 keeps the boards' consoles, agent logs and disks to look at.
    if (workDir && !process.env.KEEP_OTA_AGENT_DIR) await rm(workDir, { recursive: true, force: true });
    else if (workDir) console.log(`OTA work folder kept: ${workDir}`);
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

  // ---- The agent's jobs ----------------------------------------------------------------------

  const consoleCheck = (image: OtaImage) => `console:${INIT_BANNER} ${image.marker}`;
  const runs = new Map<string, Promise<OtaBoardResult>>();

  /** Runs a board's jobs once (the first test that asks starts them) and resolves with its record. */
  function board(name: string, o: { memoryMiB: number; jobs: () => OtaJobSpec[] }): Promise<OtaBoardResult> {
    let run = runs.get(name);
    if (!run) {
      run = (async () => {
        const dir = join(workDir, name);
        await mkdir(dir);
        const disk = join(dir, 'disk.img');
        // The card beyond the image holds a pattern: an update must not touch it.
        await makeDisk({ image: imageA.path, path: disk, size: DISK_SIZE, fill: 0x5a });
        const input: OtaBoardInput = {
          ubootBin,
          workDir: dir,
          mac: MAC,
          memoryMiB: o.memoryMiB,
          disk,
          firstMarker: imageA.marker,
          busybox: parts.busybox,
          keyFile: keys.client.opensshFile,
          hostKeyLine: keys.host.publicLine,
          images: { A: imageA.path, B: imageB.path },
          chunkSize: PART_SIZE,
          jobs: o.jobs(),
          bootTimeoutMs: BOOT_TIMEOUT_MS,
          timeoutMs: BOARD_RUN_TIMEOUT_MS,
        };
        return runInPrivateNetwork<OtaBoardResult>({
          module: 'test/qemu/ota-agent-scenario.ts',
          fn: 'runOtaBoardScenario',
          input,
          timeoutMs: BOARD_RUN_TIMEOUT_MS + 20_000,
          workDir: dir,
        });
      })();
      // Awaited by its tests; a failure before they ask is theirs to report, not an unhandled rejection.
      run.catch(() => {});
      runs.set(name, run);
    }
    return run;
  }

  /** What the board says after a job that must have left it running its system: the marker, RAM roots left. */
  const AFTER = `cat ${MARKER_FILE}; echo "ram roots: $(grep -c rpi-flash- /proc/self/mountinfo)"`;

  const board1 = () =>
    board('board1', {
      memoryMiB: BOARD_RAM_MIB,
      jobs: () => [
        {
          label: 'wrong-host-key',
          image: imageB.path,
          bootCheck: consoleCheck(imageB),
          hostKey: wrongHostKey.publicLine,
          ota: OTA_SETTINGS,
          sshAfter: AFTER,
        },
        {
          label: 'cancel-before-pivot',
          image: imageB.path,
          bootCheck: consoleCheck(imageB),
          ota: OTA_SETTINGS,
          // The probe's summary: logged in and looked at, nothing staged on the board yet.
          cancelOn: '^info agent ota-board: aarch64 ',
          sshAfter: AFTER,
        },
        {
          label: 'a-to-b',
          image: imageB.path,
          bootCheck: consoleCheck(imageB),
          writeZeros: true,
          ota: OTA_SETTINGS,
          holdSsh: true,
          sshAfter: AFTER,
        },
        {
          label: 'b-to-a-corrupt-once',
          image: imageA.path,
          bootCheck: consoleCheck(imageA),
          writeZeros: true,
          ota: OTA_SETTINGS,
          faults: { corrupt: { part: 2, block: 3, times: 'once' } },
          sshAfter: AFTER,
        },
      ],
    });
  const board2 = () =>
    board('board2', {
      memoryMiB: SMALL_BOARD_RAM_MIB,
      // The agent's default part size (64 MiB) and margin (16 MiB): more than the board has free.
      jobs: () => [{ label: 'too-little-ram', image: imageB.path, bootCheck: consoleCheck(imageB), sshAfter: AFTER }],
    });
  const board3 = () =>
    board('board3', {
      memoryMiB: BOARD_RAM_MIB,
      jobs: () => [
        {
          label: 'cancel-after-pivot',
          image: imageB.path,
          bootCheck: consoleCheck(imageB),
          writeZeros: true,
          ota: OTA_SETTINGS,
          // The board's switched-ro report: it runs from RAM, nothing written yet.
          cancelOn: '^info board the board runs from RAM',
          afterMarker: { marker: imageA.marker, timeoutMs: 150_000 },
          sshAfter: AFTER,
        },
        {
          label: 'corrupt-always',
          image: imageB.path,
          bootCheck: consoleCheck(imageB),
          writeZeros: true,
          ota: OTA_SETTINGS,
          faults: { corrupt: { part: 2, block: 3, times: 'always' } },
        },
      ],
    });

  /**
   * A job of a board's record. The three boards run at once, each in a namespace of its own (the
   * same addresses in each): most of a job is waiting on round trips, not on the 2 cores.
   */
  async function job(run: () => Promise<OtaBoardResult>, label: string): Promise<OtaJobRecord> {
    void board1();
    void board2();
    void board3();
    const r = await run();
    const j = r.jobs.find((x) => x.label === label);
    if (!j) throw new Error(`no job ${label} in ${r.jobs.map((x) => x.label).join(', ')}`);
    return j;
  }

  /** The job's steps as the agent saw them, ms from the flash request (for the docs' timings). */
  function timeline(j: OtaJobRecord): string {
    const steps: [string, RegExp][] = [
      ['logged in, probed', / info agent ota-board: aarch64 /],
      ['RAM root ready', / its RAM system is ready in /],
      ['script started', / the switch script runs on /],
      ['start report', / the switch script reached the agent/],
      ['processes stopped', / the board stopped its other processes/],
      ['switched to RAM', / the board runs from RAM/],
      ...[1, 2, 3, 4].map((n): [string, RegExp] => [`part ${n} ok`, new RegExp(` part ${n}/4: written and read back`)]),
      ['done-ok', / board reports the update succeeded/],
    ];
    const at = steps.map(([name, re]) => `${name} ${j.jobLog.find((l) => re.test(l))?.split(' ')[0] ?? '?'}`);
    const boot = j.phases.find((p) => p.endsWith(' boot end'))?.split(' ')[0] ?? '?';
    return `  ${at.join(', ')}, booted B ${boot} (ssh dropped ${j.sshDroppedAtMs ?? '?'})`;
  }

  async function withStory(j: OtaJobRecord, check: () => void | Promise<void>): Promise<void> {
    try {
      await check();
    } catch (err) {
      const agentLog = await readFile(j.agentLog, 'utf8').catch(() => '');
      const { console: text, jobLog, ...rest } = j;
      (err as Error).message +=
        `\n--- job ${j.label} ---\n${JSON.stringify(rest, null, 1)}` +
        `\n--- job log ---\n${jobLog.filter((l) => !/ console \[/.test(l)).join('\n')}` +
        `\n--- console since the job began ---\n${consoleTail(text, 6000)}` +
        `\n--- agent log (${j.agentLog}) ---\n${consoleTail(agentLog, 4000)}`;
      throw err;
    }
  }

  it(
    'a wrong pinned host key is refused before logging in: nothing touched, the board still runs A',
    async () => {
      const j = await job(board1, 'wrong-host-key');
      await withStory(j, () => {
        expect(j.result).toMatchObject({
          ok: false,
          code: 'SSH_HOST_KEY_MISMATCH',
          card: 'untouched',
          bytesWritten: 0,
        });
        expect(j.diskHolds).toBe('A');
        expect(j.sshAfter).toBe(`${imageA.marker}\nram roots: 0`);
        // The agent never got as far as the probe.
        expect(j.jobLog.some((l) => / info agent ota-board: aarch64 /.test(l))).toBe(false);
      });
    },
    BOARD_RUN_TIMEOUT_MS + 60_000,
  );

  it(
    'a cancel before the pivot leaves the board untouched and running A, with no RAM root left',
    async () => {
      const j = await job(board1, 'cancel-before-pivot');
      await withStory(j, () => {
        expect(j.cancelledAtMs).toBeDefined();
        expect(j.result).toMatchObject({ ok: false, code: 'CANCELLED', card: 'untouched', bytesWritten: 0 });
        expect(j.diskHolds).toBe('A');
        // dropbear still answers (no process was stopped), the marker file is A's, the tmpfs is gone.
        // The cancel came while the agent staged: the RAM root was mounted and filled on the board, then
        // taken away again (no RAM root left), and the switch script never ran.
        expect(j.jobLog.some((l) => / its RAM system is ready in \/run\/rpi-flash-/.test(l))).toBe(true);
        expect(j.jobLog.some((l) => / the switch script runs on /.test(l))).toBe(false);
        expect(j.sshAfter).toBe(`${imageA.marker}\nram roots: 0`);
        expect(j.console).not.toMatch(/rpi-flash: /);
      });
    },
    BOARD_RUN_TIMEOUT_MS + 60_000,
  );

  it(
    'updates A to B in place: the SSH session drops at the pivot, the board reboots into B, whose marker ' +
      'passes the console: check, and the disk equals B byte for byte',
    async () => {
      const j = await job(board1, 'a-to-b');
      const { diskTailShaBefore } = await board1();
      await withStory(j, () => {
        expect(j.result).toMatchObject({ ok: true, code: 'OK', card: 'written', bytesWritten: 32 * MiB });
        expect(j.result.parts.map((p) => p.status)).toEqual(['ok', 'ok', 'ok', 'ok']);
        // The session the test held went when the switch stopped the board's processes, before the
        // board reported it runs from RAM.
        const switched = j.jobLog.find((l) => / info board the board runs from RAM/.test(l));
        expect(switched).toBeDefined();
        // The board's reports in order: start, every other process stopped, then the pivot's.
        const reports = [
          / the switch script reached the agent/,
          / the board stopped its other processes/,
          / the board runs from RAM/,
        ];
        const order = reports.map((re) => j.jobLog.findIndex((l) => re.test(l)));
        expect(order.every((i) => i >= 0)).toBe(true);
        expect([...order].sort((x, y) => x - y)).toEqual(order);
        expect(j.sshDroppedAtMs).not.toBeNull();
        expect(j.sshDroppedAtMs!).toBeLessThan(Number(switched!.split(' ')[0]));
        // The reboot went through U-Boot reading the disk: B's init, then B's marker, which the check saw.
        expect(j.console).toMatch(/ota-vm: disk boot: booti[\s\S]*init of image B started/);
        expect(j.console).toContain(`${INIT_BANNER} ${imageB.marker}`);
        expect(j.diskHolds).toBe('B');
        // The card beyond the image is as it was.
        expect(j.diskTailSha).toBe(diskTailShaBefore);
        expect(j.sshAfter).toBe(`${imageB.marker}\nram roots: 0`);
      });
      console.log(`OTA A→B: ${j.jobMs} ms, phases ${JSON.stringify(j.result.timings)}\n${timeline(j)}`);
    },
    BOARD_RUN_TIMEOUT_MS + 60_000,
  );

  it(
    'a part that arrives corrupt once is fetched again and the update succeeds (B back to A)',
    async () => {
      const j = await job(board1, 'b-to-a-corrupt-once');
      await withStory(j, () => {
        expect(j.result).toMatchObject({ ok: true, code: 'OK', card: 'written' });
        expect(j.result.parts.map((p) => p.retries)).toEqual([0, 1, 0, 0]);
        // The board's own report of the bad CRC, as the agent read it.
        expect(
          j.jobLog.some((l) => / warn board part 2: CRC mismatch \(board computed [0-9a-f]+\), retry 1$/.test(l)),
        ).toBe(true);
        expect(j.diskHolds).toBe('A');
        expect(j.sshAfter).toBe(`${imageA.marker}\nram roots: 0`);
      });
    },
    BOARD_RUN_TIMEOUT_MS + 60_000,
  );

  it(
    'a board with too little RAM for a part is refused before anything is touched',
    async () => {
      const j = await job(board2, 'too-little-ram');
      await withStory(j, () => {
        expect(j.result).toMatchObject({ ok: false, code: 'BOARD_UNFIT', card: 'untouched', bytesWritten: 0 });
        expect(j.result.message).toMatch(/RAM|memory/i);
        expect(j.diskHolds).toBe('A');
        expect(j.sshAfter).toBe(`${imageA.marker}\nram roots: 0`);
      });
    },
    BOARD_RUN_TIMEOUT_MS + 60_000,
  );

  it(
    'a cancel after the pivot is reported with the board in its RAM system, which then reboots into its untouched A',
    async () => {
      const j = await job(board3, 'cancel-after-pivot');
      await withStory(j, () => {
        expect(j.cancelledAtMs).toBeDefined();
        expect(j.result).toMatchObject({ ok: false, code: 'CANCELLED', card: 'untouched' });
        // The agent says where it left the board (the result's message is the cancel's reason).
        const leftInRam =
          / warn agent ota-board is left in its RAM system \(old root ro\): .* into its untouched old system$/;
        expect(j.jobLog.some((l) => leftInRam.test(l))).toBe(true);
        expect(j.afterMarkerAtMs).not.toBeNull();
        expect(j.console).toMatch(/init of image A started/);
        expect(j.diskHolds).toBe('A');
        expect(j.sshAfter).toBe(`${imageA.marker}\nram roots: 0`);
      });
    },
    BOARD_RUN_TIMEOUT_MS + 60_000,
  );

  it(
    'a part corrupt every time fails the job as partly written: the parts before it are B, those after still A',
    async () => {
      const j = await job(board3, 'corrupt-always');
      await withStory(j, () => {
        expect(j.result).toMatchObject({ ok: false, code: 'CARD_PARTLY_WRITTEN', card: 'partial' });
        expect(j.result.parts.map((p) => p.status)).toEqual(['ok', 'failed', 'missing', 'missing']);
        // Part 1 is B's (its boot partition's start: the FAT, issue.txt); part 2 holds the kernel, the same
        // in both images; parts 3 and 4 (B's root) were never written.
        expect(j.diskChunks).toEqual(['B', 'A+B', 'A', 'A']);
      });
    },
    BOARD_RUN_TIMEOUT_MS + 60_000,
  );
});
