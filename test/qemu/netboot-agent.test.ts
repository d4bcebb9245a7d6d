/**
 * Issue 11 end to end: network boot and network flash driven by the real agent.
 *
 * - `method: netboot` under QEMU, inside `unshare -rn` (netboot-agent-scenario.ts): the agent is
 *   the lab's DHCP server (full mode) and TFTP server on the tap link; U-Boot stands in for the
 *   Pi firmware and fetches the boot files from the row's folder (by serial, by MAC), straight out
 *   of the uploaded image's boot partition; the kernel's initramfs mounts its root from the job's
 *   NBD export; the `console:` boot check sees the root's marker. The job writes nothing: the
 *   VM's card keeps its sha256, the stored image keeps its sha256, and the job's export (nbdkit,
 *   its overlay directory) is gone when the result comes.
 * - Refusals before the reset, on loopback with an in-process agent (no VM is needed: nothing
 *   reaches the board): a row without a netboot folder, an image whose initramfs has no
 *   nbd-client, a board that never asks (the export started, then stopped with its overlay).
 * - Layout `netflash` under QEMU: a VM with a blank card whose U-Boot does what distro boot does
 *   without a bootable card (`dhcp ${scriptaddr} boot.scr.uimg; source`), gets stage 1 from the
 *   agent, which runs the job's flash.scr; the card then equals the injected image byte for byte.
 *
 * KEEP_NETBOOT_AGENT_DIR=1 keeps the work folder (agent logs, consoles, cards) for a look after the run.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../../runner-agent/src/agent.js';
import { validateConfig } from '../../runner-agent/src/config.js';
import { planInjection } from '../../runner-agent/src/image/inject.js';
import { getPiModel } from '../../runner-agent/src/image/models.js';
import { createLogger, formatRecord, type LogRecord } from '../../runner-agent/src/log.js';
import { connectAgent } from '../../src/protocol/client.js';
import type { AgentMessage, JobResult } from '../../src/protocol/messages.js';
import { macDir } from '../../src/protocol/tftp-names.js';
import type { NetbootAgentInput, NetbootAgentResult } from './netboot-agent-scenario.js';
import {
  NETBOOT_LINES,
  PREPARE_NETBOOT_OS_TIMEOUT_MS,
  ROOT_PROOF_FILE,
  buildNetbootTestImage,
  cardCmdline,
  netbootOsGate,
  type NetbootOsParts,
} from './netboot-os.js';
import { DISTRO_DHCP_LINES, TAP_LINK, privateNetworkAvailable, runInPrivateNetwork } from './netboot-vm.js';
import { INIT_BANNER, buildDiskImage, newMarker, stage1ScriptImage } from './os-image.js';
import { consoleTail } from './qemu-board.js';
import { BUILD_TIMEOUT_MS, inCi, qemuTestGate } from './test-uboot.js';

const execFileAsync = promisify(execFile);

const uboot = await qemuTestGate('network boot and network flash driven by the real agent (QEMU, unshare -rn)');
const osGate = await netbootOsGate();
const network = await privateNetworkAvailable();
const nbdkit = await nbdkitAvailable();
const missing = [!osGate.run && osGate.reason, !network.ok && network.reason, !nbdkit.ok && nbdkit.reason].filter(
  (r): r is string => typeof r === 'string' && r !== '',
);
// Under CI nothing may be missing: the tests run and fail on whatever is.
const run = uboot.run && (missing.length === 0 || inCi);
const title = uboot.run && !run ? `${uboot.title} (skipped: ${missing.join('; ')})` : uboot.title;

const KiB = 1024;
const MiB = 1024 * KiB;
const TOKEN = 'netboot-agent-test-token-0123456789';
/** The netboot image is 88 MiB (a 56 MiB boot partition for Debian's 33 MB kernel, a 32 MiB root). */
const NETBOOT_CARD = 128 * MiB;
/** netflash: a 12 MiB image on a 16 MiB blank card. */
const NETFLASH_IMAGE = 12 * MiB;
const NETFLASH_CARD = 16 * MiB;
/** Per board: U-Boot, 33 MB of kernel over TFTP and the Debian kernel's boot, under TCG on 2 busy cores. */
const BOARD_TIMEOUT_MS = 150_000;

async function nbdkitAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    await execFileAsync('nbdkit', [
      '--filter=ip',
      '--filter=exportname',
      '--filter=cow',
      '--filter=partition',
      'file',
      '--version',
    ]);
    return { ok: true };
  } catch {
    return {
      ok: false,
      reason: 'nbdkit with its ip, exportname, cow and partition filters is missing (Debian: nbdkit)',
    };
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

/** A job's story for a failed assertion: its log, the console the agent kept, the agent's log. */
async function story(r: NetbootAgentResult, i = 0): Promise<string> {
  const job = r.jobs[i];
  const agentLog = await readFile(r.agentLog, 'utf8').catch(() => '');
  return (
    `\n--- job log ---\n${job?.jobLog.join('\n') ?? '(no job)'}` +
    `\n--- console (the job's record) ---\n${consoleTail(job?.jobConsole ?? '', 6000)}` +
    `\n--- agent log (${r.agentLog}) ---\n${consoleTail(agentLog, 6000)}`
  );
}

async function withStory<T>(r: NetbootAgentResult, i: number, check: () => Promise<T> | T): Promise<T> {
  try {
    return await check();
  } catch (err) {
    (err as Error).message += await story(r, i);
    throw err;
  }
}

describe.skipIf(!run)(title, () => {
  let ubootBin = '';
  let parts: NetbootOsParts;
  let dir = '';
  let stage1 = '';
  /** The test OS: its initramfs boots the root from NBD; the root's init prints `marker`. */
  const netbootImage = { path: '', marker: '' };
  /** The same OS with no nbd-client in its initramfs. */
  let noClientImage = '';

  beforeAll(async () => {
    if (missing.length) throw new Error(`the network-boot agent tests need: ${missing.join('; ')}`);
    ubootBin = await uboot.ubootBin();
    parts = await osGate.parts();
    dir = await mkdtemp(join(tmpdir(), 'rpi-flash-netboot-agent-'));
    stage1 = join(dir, 'boot.scr');
    // Stage 1 from the current boot.cmd (the committed boot.scr may lag behind it in a working tree).
    await writeFile(stage1, await stage1ScriptImage());
    netbootImage.marker = newMarker('netboot-agent');
    netbootImage.path = join(dir, 'netboot.img');
    await buildNetbootTestImage({ path: netbootImage.path, parts, marker: netbootImage.marker });
    // The variant: the prepared tree without nbd-client, so its initramfs cannot mount an NBD root.
    const rootfs = join(dir, 'rootfs-no-nbd-client');
    await execFileAsync('cp', ['-a', parts.rootfs, rootfs]);
    await rm(join(rootfs, 'sbin', 'nbd-client'));
    noClientImage = join(dir, 'no-nbd-client.img');
    await buildNetbootTestImage({ path: noClientImage, parts: { ...parts, rootfs }, marker: 'unused' });
    await rm(rootfs, { recursive: true });
  }, BUILD_TIMEOUT_MS + PREPARE_NETBOOT_OS_TIMEOUT_MS);

  afterAll(async () => {
    if (dir && !process.env.KEEP_NETBOOT_AGENT_DIR) await rm(dir, { recursive: true, force: true });
  });

  /** One run of the scenario inside its own private network namespace. */
  async function inNamespace(
    name: string,
    o: Omit<NetbootAgentInput, 'ubootBin' | 'workDir' | 'stage1' | 'timeoutMs'>,
  ) {
    const workDir = join(dir, name);
    await mkdir(workDir, { recursive: true });
    const input: NetbootAgentInput = { ...o, ubootBin, workDir, stage1, timeoutMs: BOARD_TIMEOUT_MS };
    const started = performance.now();
    const r = await runInPrivateNetwork<NetbootAgentResult>({
      module: 'test/qemu/netboot-agent-scenario.ts',
      fn: 'runNetbootAgentScenario',
      input,
      timeoutMs: o.boards.length * BOARD_TIMEOUT_MS + 30_000,
      workDir,
    }).catch(async (err: Error) => {
      // The child wrote the agent's log before it died; the folder goes with the test.
      const agentLog = await readFile(join(workDir, 'agent.log'), 'utf8').catch(() => '(none)');
      err.message += `\n--- agent log ---\n${consoleTail(agentLog, 8000)}`;
      throw err;
    });
    console.log(`${name}: ${Math.round(performance.now() - started)} ms in the namespace`);
    return r;
  }

  it(
    'method netboot: the board boots the image from the agent (DHCP, TFTP by serial and by MAC, NBD root) ' +
      'and nothing is written',
    async () => {
      const boards = [
        // A Pi 3's ROM and a Pi 4's default EEPROM name the folder by the serial's low 32 bits.
        {
          name: 'qemu-net-serial',
          mac: '52:54:00:4e:42:11',
          ip: '10.42.0.50',
          serial: '100000004e420011',
          netboot: 'serial',
          prefix: '4e420011/',
        },
        // A Pi 4 with TFTP_PREFIX=2 names it by its MAC (the macdir's spelling).
        {
          name: 'qemu-net-mac',
          mac: '52:54:00:4e:42:12',
          ip: '10.42.0.51',
          netboot: 'mac',
          prefix: '52-54-00-4e-42-12/',
        },
      ];
      const r = await inNamespace('netboot', {
        kind: 'netboot',
        image: netbootImage.path,
        boards,
        bootCheck: `console:${INIT_BANNER} ${netbootImage.marker}`,
        sdSize: NETBOOT_CARD,
      });
      expect(r.jobs).toHaveLength(boards.length);
      for (const [i, job] of r.jobs.entries()) {
        const board = boards[i]!;
        await withStory(r, i, () => {
          expect(job.result).toMatchObject({
            ok: true,
            code: 'OK',
            method: 'netboot',
            card: 'untouched',
            bytesWritten: 0,
            parts: [],
          } satisfies Partial<JobResult>);
          expect(job.result.message).toMatch(/booted from the network/);
          const log = job.jobLog.join('\n');
          expect(log).toContain(`netboot: serving ${board.name}'s firmware folder ${board.prefix}`);
          expect(log).toMatch(/netboot: kernel8\.img served/);
          expect(log).toMatch(/netboot: initrd\.img served/);
          // Two DHCP exchanges from the one MAC, each given the row's IP: the firmware's (asking
          // as a Pi 3 ROM) and the initramfs's udhcpc.
          const got = (kind: string, message: string) =>
            job.dhcp.some((d) => d.kind === kind && d.message === message && d.yiaddr === board.ip);
          expect(got('pi3-rom', 'OFFER') && got('pi3-rom', 'ACK'), JSON.stringify(job.dhcp)).toBe(true);
          expect(got('generic', 'OFFER') && got('generic', 'ACK'), JSON.stringify(job.dhcp)).toBe(true);
          // The firmware was served the cmdline.txt the agent rewrote, and the initramfs followed it to
          // the job's export on the agent's address; it wrote to the root (into the overlay).
          const port = /over NBD at 10\.42\.0\.1:(\d+)/.exec(log)?.[1];
          expect(port).toMatch(/^\d+$/);
          const card = cardCmdline().replace(/ ?root=\S+/, '');
          expect(job.jobConsole).toContain(
            `netboot-vm: bootargs: ${card} root=/dev/nbd0 nbdroot=${TAP_LINK.hostAddress}:${port}/rpi-flash ip=dhcp rw`,
          );
          const nbdroot = NETBOOT_LINES.nbdroot.exec(job.jobConsole);
          expect(nbdroot?.slice(1, 5)).toEqual([TAP_LINK.hostAddress, port, 'rpi-flash', '/dev/nbd0']);
          expect(job.jobConsole).toContain(`address ${board.ip}/`);
          expect(job.jobConsole).toContain(`wrote /newroot/${ROOT_PROOF_FILE}`);
          expect(job.jobConsole).toContain(`${INIT_BANNER} ${netbootImage.marker}`);
          expect(job.vmExit).toBe(0); // the root's init powered the VM off
          // Nothing left: no export process, no overlay, no staged folder.
          expect(job.nbdkitPid).toBeGreaterThan(0);
          expect(job.nbdkitPidAlive).toBe(false);
          expect(job.processesLeft).toEqual([]);
          expect(job.overlayLeft).toEqual([]);
          expect(job.tftpLeftovers).toEqual([]);
          // "The SD card was never written."
          expect(job.sdAfter).toBe(job.sdBefore);
        });
      }
      // The board wrote to its root, yet the stored image is as uploaded.
      expect(r.storedAfter).toBe(r.sha256);
      expect(await sha256(netbootImage.path)).toBe(r.sha256);
      const each = r.jobs.map((j) => `${j.board} ${j.resultAt - j.requestedAt} ms ${JSON.stringify(j.result.timings)}`);
      console.log(`netboot jobs: ${each.join('; ')}`);
    },
    2 * BOARD_TIMEOUT_MS + 60_000,
  );

  it(
    'layout netflash: a blank card is flashed by stage 1 from the network; the card equals the injected image',
    async () => {
      const image = join(dir, 'netflash.img');
      // A Raspberry Pi OS-like image (config.txt, an arm64 kernel's header) with bytes worth writing.
      const kernel = randomBytes(512 * KiB);
      kernel.writeUInt32LE(0x644d5241, 56); // "ARM\x64": an arm64 Image
      const payload = randomBytes(2 * MiB);
      await buildDiskImage({
        path: image,
        size: NETFLASH_IMAGE,
        bootPartitionSize: NETFLASH_IMAGE - 4 * MiB,
        files: {
          'config.txt': 'arm_64bit=1\nkernel=kernel8.img\nenable_uart=1\n',
          'cmdline.txt': 'console=ttyAMA0 root=/dev/mmcblk0p2 rootwait\n',
          'kernel8.img': kernel,
          'payload.bin': payload,
        },
      });
      const board = {
        name: 'qemu-netflash',
        mac: '52:54:00:4e:42:21',
        ip: '10.42.0.60',
        netboot: 'prefix:qemu-netflash',
        layout: 'netflash',
        prefix: 'qemu-netflash/',
      };
      const r = await inNamespace('netflash', {
        kind: 'netflash',
        image,
        boards: [board],
        bootCheck: 'none',
        sdSize: NETFLASH_CARD,
      });
      const job = r.jobs[0]!;
      await withStory(r, 0, async () => {
        expect(job.result).toMatchObject({ ok: true, code: 'OK', method: 'flash', card: 'written' });
        const log = job.jobLog.join('\n');
        expect(log).toContain('netflash: serving the injected boot partition (boot.scr also as boot.scr.uimg)');
        // Stage 1 came over the network and ran the job's script.
        expect(job.jobConsole).toMatch(DISTRO_DHCP_LINES.start);
        expect(job.jobConsole).toContain(
          `rpi-flash: running ${macDir(board.mac)}/flash.scr from ${TAP_LINK.hostAddress}`,
        );
        expect(job.dhcp.some((d) => d.message === 'ACK' && d.yiaddr === board.ip)).toBe(true);
        expect(job.tftpLeftovers).toEqual([]);
        expect(r.storedAfter).toBe(r.sha256);

        // The card: the image with the inject layout's patches (U-Boot, stage 1, rpi-flash.env,
        // config.txt), zeros after it. The new files' FAT timestamps are the staging time, to the
        // 2 s FAT keeps: the one free parameter, searched over the job's span.
        const card = await readFile(job.sdImage);
        const raw = await readFile(image);
        const [ubootData, bootScr] = await Promise.all([readFile(ubootBin), readFile(stage1)]);
        let matched: Date | undefined;
        let best = { at: '', differing: Number.POSITIVE_INFINITY };
        for (let t = job.requestedAt - 2000; t <= job.resultAt + 2000 && !matched; t += 2000) {
          const now = new Date(t);
          const { patches } = await planInjection(image, raw.length, {
            ubootBin: ubootData,
            bootScr,
            model: getPiModel('arm64'),
            now,
          });
          const expected = Buffer.alloc(NETFLASH_CARD);
          raw.copy(expected);
          for (const p of patches) p.data.copy(expected, p.offset);
          if (card.equals(expected)) matched = now;
          else {
            let differing = 0;
            for (let i = 0; i < card.length; i++) if (card[i] !== expected[i]) differing++;
            if (differing < best.differing) best = { at: now.toISOString(), differing };
          }
        }
        expect(matched, `closest candidate ${best.at}: ${best.differing} bytes differ`).toBeDefined();
      });
      console.log(`netflash job: ${job.resultAt - job.requestedAt} ms (${JSON.stringify(job.result.timings)})`);
    },
    BOARD_TIMEOUT_MS + 60_000,
  );

  describe('refused before the reset, with nothing left behind (loopback, no VM)', () => {
    let agent: RunningAgent;
    let labDir = '';
    const records: LogRecord[] = [];
    const resetFile = (name: string) => join(labDir, `reset-${name}`);

    beforeAll(async () => {
      labDir = join(dir, 'loopback');
      await mkdir(labDir, { recursive: true });
      // The reset is a command that leaves a file: whether the job reached the reset shows.
      const row = (name: string, mac: string, ip: string, serial: string, netboot: string) =>
        `${name},${mac},${ip},cmd:touch ${resetFile(name)},${serial},${netboot}`;
      await writeFile(
        join(labDir, 'targets.csv'),
        [
          'name,mac,ip,reset,serial,netboot',
          row('no-folder', '52:54:00:4e:43:01', '127.0.0.31', '', ''),
          row('no-client', '52:54:00:4e:43:02', '127.0.0.32', '10000000aabbcc32', 'serial'),
          row('silent', '52:54:00:4e:43:03', '127.0.0.33', '', 'prefix:silent-board'),
        ].join('\n') + '\n',
      );
      const config = await validateConfig(
        {
          listen: { host: '127.0.0.1', port: 0 },
          token: TOKEN,
          targets: 'targets.csv',
          tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
          stateDir: 'state',
          bootCheck: 'none',
          logLevel: 'debug',
        },
        labDir,
      );
      agent = await startAgent(config, { log: createLogger({ level: 'debug', sink: (r) => records.push(r) }) });
    });

    afterAll(async () => {
      await agent?.stop();
      if (labDir) await writeFile(join(labDir, 'agent.log'), records.map(formatRecord).join('\n') + '\n');
    });

    /** Uploads `image` and runs one `method: netboot` job on `target`; returns its result and log. */
    async function netbootJob(target: string, image: string, timeouts?: { boardShow: number }) {
      const jobLog: string[] = [];
      const conn = await connectAgent({
        url: agent.url,
        token: TOKEN,
        client: 'netboot-agent-test',
        onEvent: (m: AgentMessage) => void (m.type === 'log' && jobLog.push(`${m.level} ${m.source} ${m.message}`)),
      });
      try {
        const sha = await sha256(image);
        await conn.lease(target, { holder: 'netboot-agent-test' });
        await conn.upload({ path: image, sha256: sha, size: (await stat(image)).size, compression: 'none' });
        const firstRecord = records.length;
        const result = await conn.flash({
          sha256: sha,
          method: 'netboot',
          bootCheck: 'none',
          ...(timeouts ? { timeouts } : {}),
        });
        const stored = await agent.store.get(sha);
        return {
          result,
          jobLog,
          sha,
          storedSha: stored && (await sha256(stored.path)),
          jobRecords: records.slice(firstRecord),
        };
      } finally {
        conn.close();
      }
    }

    /** Nothing of a network-boot job remains: no overlay, no nbdkit of this agent, no staged folder. */
    async function nothingLeft(): Promise<void> {
      const { stateDir, tftp } = agent.config;
      const overlays = join(stateDir, 'netboot');
      expect(existsSync(overlays) ? await readdir(overlays) : []).toEqual([]);
      const processes: string[] = [];
      for (const pid of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
        const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
        if (argv.includes(stateDir)) processes.push(argv.split('\0').join(' '));
      }
      expect(processes).toEqual([]);
      expect((await readdir(tftp.root)).filter((n) => !n.startsWith('.'))).toEqual([]);
    }

    it('a row without a netboot folder: NETBOOT_TARGET_INCOMPLETE, the board not reset', async () => {
      const { result, jobLog } = await netbootJob('no-folder', netbootImage.path);
      expect(result, jobLog.join('\n')).toMatchObject({
        ok: false,
        code: 'NETBOOT_TARGET_INCOMPLETE',
        card: 'untouched',
      });
      expect(result.message).toMatch(/no netboot column/);
      expect(result.timings.reset).toBeUndefined();
      expect(existsSync(resetFile('no-folder'))).toBe(false);
      await nothingLeft();
    });

    it('an initramfs without nbd-client: IMAGE_NO_NBD_CLIENT, the board not reset, no export started', async () => {
      const { result, jobLog, sha, storedSha, jobRecords } = await netbootJob('no-client', noClientImage);
      expect(result, jobLog.join('\n')).toMatchObject({ ok: false, code: 'IMAGE_NO_NBD_CLIENT', card: 'untouched' });
      expect(result.message).toMatch(/initrd\.img holds no nbd-client/);
      expect(existsSync(resetFile('no-client'))).toBe(false);
      expect(jobRecords.some((r) => r.msg === 'NBD export ready')).toBe(false);
      expect(storedSha).toBe(sha);
      await nothingLeft();
    });

    it('a board that never asks: BOARD_NO_NETBOOT after boardShow; the export stopped, its overlay gone', async () => {
      const { result, jobLog, sha, storedSha, jobRecords } = await netbootJob('silent', netbootImage.path, {
        boardShow: 2,
      });
      expect(result, jobLog.join('\n')).toMatchObject({ ok: false, code: 'BOARD_NO_NETBOOT', card: 'untouched' });
      expect(result.message).toMatch(/asked the agent for nothing within 2 s of the reset/);
      expect(existsSync(resetFile('silent')), 'the board was reset').toBe(true);
      // The export was up for the board (its port on the agent's address) and is down now.
      const ready = jobRecords.find((r) => r.msg === 'NBD export ready');
      expect(ready?.fields.pid).toEqual(expect.any(Number));
      const port = Number(/NBD at 127\.0\.0\.1:(\d+)/.exec(jobLog.join('\n'))?.[1]);
      expect(port).toBeGreaterThan(0);
      const refused = await new Promise<boolean>((resolve) => {
        const s = connect({ host: '127.0.0.1', port });
        s.once('connect', () => {
          s.destroy();
          resolve(false);
        });
        s.once('error', () => resolve(true));
      });
      expect(refused, `nothing listens on the export's port ${port} any more`).toBe(true);
      const argv = await readFile(`/proc/${String(ready?.fields.pid)}/cmdline`, 'utf8').catch(() => '');
      expect(argv, "the export's nbdkit has exited").not.toContain('nbdkit');
      expect(storedSha).toBe(sha);
      await nothingLeft();
    });
  });
});
