/**
 * Network boot driven by the real agent (issue 11), inside a private network namespace: the
 * function here runs as `runInPrivateNetwork`'s child (test/qemu/netboot-vm.ts), so the agent
 * serves the boards as in a lab — its DHCP responder in `full` mode on port 67 and its TFTP
 * server on port 69, both on the tap link's address, the NBD export on that address too.
 *
 * One agent (`startAgent`, the composition root) with a targets row per board; the image uploaded
 * once over the real WebSocket protocol (src/protocol/client.ts, as the action does); then, board
 * by board, one QEMU VM (netboot-vm.ts) whose first boot stops at its prompt, and one job: lease,
 * `flash` with the method and boot check given, which stages the board's files, resets the VM
 * through QMP and follows it. Two kinds of run:
 *
 * - `netboot`: the job's `method: 'netboot'`; U-Boot stands in for the Pi firmware (DHCP as a Pi 3
 *   boot ROM, TFTP of kernel8.img, initrd.img and cmdline.txt from the row's folder), the kernel's
 *   initramfs takes its root from the job's NBD export, and the root's init prints the marker the
 *   `console:` boot check waits for.
 * - `netflash`: the row's layout `netflash` and a blank card; U-Boot does what distro boot does
 *   without a bootable card (`dhcp ${scriptaddr} boot.scr.uimg; source`), so stage 1 comes from the
 *   agent, fetches the job's flash.scr, and stage 2 writes the card. With the board's `boot:
 *   'distro'` U-Boot tries the card first, as Debian's distro boot does: after stage 2's reset it
 *   runs the flashed card's stage 1, which finds no job and boots the card's system (its root on
 *   the card), so a `console:` boot check on the root's marker sees the flashed system come up.
 *
 * A board may name its own kind (one run can hold a netboot job and a netflash job of the same
 * image, as bench/netboot.ts compares them); each job records when the client saw each phase
 * start and every console line with the agent's capture time.
 *
 * What a test must check after each job is gathered here, while the agent still runs: the job's
 * overlay directories, nbdkit processes of this agent (by /proc), the staged folders, the DHCP
 * answers; and after all jobs the stored image's sha256. Everything is plain data (JSON).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type RunningAgent } from '../../runner-agent/src/agent.js';
import { validateConfig } from '../../runner-agent/src/config.js';
import { openConsole } from '../../runner-agent/src/console/capture.js';
import { createLogger, formatRecord, silentLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { connectAgent, type AgentConnection } from '../../src/protocol/client.js';
import type { AgentMessage, JobMethod, JobResult, Phase } from '../../src/protocol/messages.js';
import { qemuAgentSettings } from './agent-scenario.js';
import {
  FIRMWARE_LINES,
  PI3_ROM_VENDOR_CLASS,
  TAP_LINK,
  setUpTapLink,
  sha256File,
  startNetbootVm,
  type NetbootVmOptions,
} from './netboot-vm.js';
import { qmpCommand, type QemuBoard } from './qemu-board.js';

const TOKEN = 'qemu-netboot-agent-token-0123456789';
/** The lab network the agent's full-mode DHCP serves: the tap link's. */
export const LAB_SUBNET = `10.42.0.0/${TAP_LINK.prefixLength}`;

export interface NetbootAgentBoard {
  name: string;
  /** The VM's NIC: what the DHCP responder looks up in the targets database. */
  mac: string;
  /** The row's IP: full-mode DHCP gives the board this address; the NBD export admits only it. */
  ip: string;
  /** The row's `netboot` cell: `serial`, `mac` or `prefix:<folder>`. */
  netboot: string;
  serial?: string;
  /** The row's `layout` cell (`netflash`), or none. */
  layout?: string;
  /** The folder the VM's firmware stand-in asks under, with its `/`: what the row's cell names. */
  prefix: string;
  /** This board's job, when it differs from the run's (NetbootAgentInput.kind). */
  kind?: 'netboot' | 'netflash';
  /**
   * What the VM's U-Boot does on a boot (NetbootVmOptions.boot): by default `firmware` for a
   * netboot job, `distro-dhcp` for a netflash job; `distro` to boot the flashed card afterwards.
   */
  boot?: NetbootVmOptions['boot'];
  /** What an earlier job found the board's U-Boot can do (staging/board-caps.ts); default: not probed yet. */
  caps?: { unzip: boolean };
}

export interface NetbootAgentInput {
  ubootBin: string;
  /** Holds targets.csv, the agent's state and TFTP root, a folder per board; the caller made it. */
  workDir: string;
  /** The raw image to upload. */
  image: string;
  kind: 'netboot' | 'netflash';
  boards: NetbootAgentBoard[];
  /** The job's boot check (`console:<line>` for netboot, `none` for netflash). */
  bootCheck: string;
  /** Each VM's SD card: this many zero bytes (a power of two). */
  sdSize: number;
  /** Stage 1 (a script image): the agent's uboot.bootScr, served as boot.scr.uimg by netflash. */
  stage1: string;
  /** Per board: the VM's hard limit and the wait for its first boot. */
  timeoutMs: number;
  /** The agent's `flash` settings over the run's (2 MiB parts, TFTP windowsize 8). */
  flash?: Record<string, unknown>;
  /** The agent's `timeouts` over the run's (boardShow 30, stall 30, boot 120 s). */
  timeouts?: Record<string, unknown>;
}

export interface DhcpAnswerSeen {
  kind: string;
  message: string;
  yiaddr: string;
}

export interface NetbootAgentJob {
  board: string;
  result: JobResult;
  /** Every job `log` event the client received, as `<level> <source> <message>`. */
  jobLog: string[];
  /** Epoch ms just before the flash request and at its result. */
  requestedAt: number;
  resultAt: number;
  /** Epoch ms at which the client saw each phase of the job start. */
  phaseStartedAt: Partial<Record<Phase, number>>;
  /** Every console line of the job, with the epoch ms the agent's capture read it at. */
  consoleLines: Array<{ time: number; line: string }>;
  /** The DHCP replies the agent sent this board during its job. */
  dhcp: DhcpAnswerSeen[];
  /** nbdkit's pid from the agent's "NBD export ready" line, when the job started an export. */
  nbdkitPid?: number;
  /** After the result: entries left under `<stateDir>/netboot/`. */
  overlayLeft: string[];
  /** After the result: processes whose command line names the agent's state directory (its nbdkit). */
  processesLeft: string[];
  /** After the result: whether /proc still has the export's nbdkit pid. */
  nbdkitPidAlive: boolean;
  /** After the result: entries under the TFTP root (dot-files excluded). */
  tftpLeftovers: string[];
  sdImage: string;
  sdBefore: string;
  sdAfter: string;
  /** QEMU's own output (the console is on a socket: the agent's record has it). */
  qemuLog: string;
  /** The job's console record (`<stateDir>/jobs/<job>.console.log`), '' when none. */
  jobConsole: string;
  /** QEMU's exit code once the job was over (0: the root's init powered off), null when it was killed. */
  vmExit: number | null;
}

export interface NetbootAgentResult {
  sha256: string;
  /** The stored image's sha256 after all jobs (recomputed from the store's file). */
  storedAfter: string;
  storedPath: string;
  stateDir: string;
  jobs: NetbootAgentJob[];
  agentLog: string;
}

/** Every process on the machine whose command line contains `needle` (its pid and argv). */
async function processesNaming(needle: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const argv = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (argv.includes(needle)) out.push(`${name}: ${argv.split('\0').join(' ').trim()}`);
  }
  return out;
}

async function alive(pid: number): Promise<boolean> {
  const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => undefined);
  return argv !== undefined && argv.includes('nbdkit');
}

function targetsCsv(boards: readonly NetbootAgentBoard[], dir: (b: NetbootAgentBoard) => string): string {
  const rows = boards.map((b) => {
    for (const cell of [b.name, b.netboot, b.serial ?? '', b.layout ?? '', dir(b)])
      if (/[,"\n]/.test(cell)) throw new Error(`targets cell ${JSON.stringify(cell)} needs no CSV quoting here`);
    const d = dir(b);
    const reset = `qmp:${join(d, 'qmp.sock')}`;
    const consoleSpec = `unix:${join(d, 'serial.sock')}`;
    return [b.name, b.mac, b.ip, reset, b.serial ?? '', b.layout ?? '', consoleSpec, b.netboot].join(',');
  });
  return ['name,mac,ip,reset,serial,layout,console,netboot', ...rows].join('\n') + '\n';
}

/** Waits for a path QEMU creates as it starts (its sockets). */
async function waitForPath(path: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() > until) throw new Error(`${path} did not appear within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The console on QEMU's socket: the file appears at bind(), a moment before QEMU listens on it
 * (seen on a loaded machine: the first connect refused), so a refused connect is tried again.
 */
async function openWhenListening(path: string, timeoutMs: number): Promise<Awaited<ReturnType<typeof openConsole>>> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await openConsole({ kind: 'unix', path }, { log: silentLogger });
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * Starts the board's VM stopped, reads its console from the first instruction, lets it run and
 * waits for the first boot to stop at its prompt (armed for the reset). The console is let go
 * before the job: the agent reads it next (one reader at a time on QEMU's socket).
 */
async function bootToPrompt(o: {
  input: NetbootAgentInput;
  board: NetbootAgentBoard;
  dir: string;
  sdImage: string;
}): Promise<QemuBoard> {
  const serialSocket = join(o.dir, 'serial.sock');
  const kind = o.board.kind ?? o.input.kind;
  const boot = o.board.boot ?? (kind === 'netboot' ? 'firmware' : 'distro-dhcp');
  const vm = await startNetbootVm({
    ubootBin: o.input.ubootBin,
    workDir: o.dir,
    mac: o.board.mac,
    prefix: o.board.prefix,
    waitForReset: true,
    serialSocket,
    sdImage: o.sdImage,
    startPaused: true,
    timeoutMs: o.input.timeoutMs,
    ...(boot === 'firmware' ? { vendorClass: PI3_ROM_VENDOR_CLASS } : { boot }),
  });
  try {
    await waitForPath(serialSocket, 10_000);
    await waitForPath(vm.qmpSocket, 10_000);
    const watcher = await openWhenListening(serialSocket, 10_000);
    try {
      await qmpCommand(vm.qmpSocket, 'cont');
      const armed = await watcher.waitFor(FIRMWARE_LINES.waiting, { timeoutMs: 60_000, since: 0 });
      if (!armed)
        throw new Error(`the VM's first boot did not stop at its prompt:\n${watcher.lines().slice(-30).join('\n')}`);
    } finally {
      await watcher.close();
    }
    return vm;
  } catch (err) {
    await vm.kill();
    throw err;
  }
}

export async function runNetbootAgentScenario(input: NetbootAgentInput): Promise<NetbootAgentResult> {
  await setUpTapLink();
  const host = TAP_LINK.hostAddress;
  const boardDir = (b: NetbootAgentBoard) => join(input.workDir, b.name);
  for (const b of input.boards) await mkdir(boardDir(b), { recursive: true });
  await writeFile(join(input.workDir, 'targets.csv'), targetsCsv(input.boards, boardDir));
  const config = await validateConfig(
    qemuAgentSettings(TOKEN, {
      // netflash's stage 2 in QEMU's memory map (qemuAgentSettings), parts small for the test card.
      flash: { partSize: '2MiB', tftpWindowSize: 8, ...input.flash },
      timeouts: { boardShow: 30, stall: 30, boot: 120, ...input.timeouts },
      // As in a lab: the real ports on the boards' network, the agent its only DHCP server.
      tftp: { root: 'tftp', address: host, port: 69 },
      dhcp: { mode: 'full', serverIp: host, subnet: LAB_SUBNET },
      defaultLayout: 'inject',
      uboot: { binaries: { arm64: input.ubootBin }, bootScr: input.stage1 },
    }),
    input.workDir,
  );
  const records: LogRecord[] = [];
  const agentLog = join(input.workDir, 'agent.log');
  let agent: RunningAgent | undefined;
  let conn: AgentConnection | undefined;
  let vm: QemuBoard | undefined;
  try {
    agent = await startAgent(config, { log: createLogger({ level: 'debug', sink: (r) => records.push(r) }) });
    const a = agent;
    let jobLog: string[] = [];
    let phaseStartedAt: NetbootAgentJob['phaseStartedAt'] = {};
    let consoleLines: NetbootAgentJob['consoleLines'] = [];
    const onEvent = (m: AgentMessage) => {
      if (m.type === 'log') {
        jobLog.push(`${m.level} ${m.source} ${m.message}`);
        if (m.source === 'console') consoleLines.push({ time: m.time, line: m.message });
      }
      if (m.type === 'phase' && m.state === 'start') phaseStartedAt[m.phase] = Date.now();
    };
    conn = await connectAgent({ url: a.url, token: TOKEN, client: 'qemu-netboot-agent-test', onEvent });
    const sha256 = await sha256File(input.image);
    const { size } = await stat(input.image);
    await conn.lease(input.boards[0]!.name, { holder: 'qemu-netboot-agent-test' });
    await conn.upload({ path: input.image, sha256, size, compression: 'none' });

    const jobs: NetbootAgentJob[] = [];
    for (const [i, board] of input.boards.entries()) {
      const dir = boardDir(board);
      const kind = board.kind ?? input.kind;
      const sdImage = join(dir, 'sd.img');
      // Zeros, sparse: a card of hundreds of MiB need not pass through memory.
      await writeFile(sdImage, '');
      await truncate(sdImage, input.sdSize);
      if (board.caps) {
        const capsDir = join(config.stateDir, 'boards');
        await mkdir(capsDir, { recursive: true });
        const caps = { ...board.caps, seen: '', job: 'earlier' };
        await writeFile(join(capsDir, `${encodeURIComponent(board.name)}.caps.json`), JSON.stringify(caps));
      }
      const sdBefore = await sha256File(sdImage);
      vm = await bootToPrompt({ input, board, dir, sdImage });

      if (i > 0) await conn.lease(board.name, { holder: 'qemu-netboot-agent-test' });
      jobLog = [];
      phaseStartedAt = {};
      consoleLines = [];
      const dhcp: DhcpAnswerSeen[] = [];
      const unsubscribe = a.dhcp!.onAnswered((name, kind, message, answer) => {
        if (name === board.name) dhcp.push({ kind, message, yiaddr: answer.yiaddr });
      });
      const firstRecord = records.length;
      const method: JobMethod = kind === 'netboot' ? 'netboot' : 'flash';
      const requestedAt = Date.now();
      const result = await conn.flash({ sha256, bootCheck: input.bootCheck, method });
      const resultAt = Date.now();
      unsubscribe();

      // What the job left behind, while the agent still runs.
      const ready = records.slice(firstRecord).find((r) => r.msg === 'NBD export ready');
      const nbdkitPid = typeof ready?.fields.pid === 'number' ? ready.fields.pid : undefined;
      const netbootDir = join(config.stateDir, 'netboot');
      const overlayLeft = existsSync(netbootDir) ? await readdir(netbootDir) : [];
      const processesLeft = await processesNaming(config.stateDir);
      const nbdkitPidAlive = nbdkitPid !== undefined && (await alive(nbdkitPid));
      const tftpLeftovers = (await readdir(config.tftp.root)).filter((n) => !n.startsWith('.'));

      // netboot, or a console check on the root's marker: the root's init powers the VM off after
      // it; netflash otherwise: U-Boot looks for a script again after stage 2's reset and finds
      // none (withdrawn), then waits at its prompt.
      const poweredOff = kind === 'netboot' || input.bootCheck.startsWith('console:');
      const vmExit = poweredOff ? await vm.waitForExit(30_000).catch(() => null) : null;
      await vm.kill();
      const qemuLog = vm.consoleLog;
      vm = undefined;
      const jobConsole = await readFile(join(config.stateDir, 'jobs', `${result.job}.console.log`), 'utf8').catch(
        () => '',
      );
      jobs.push({
        board: board.name,
        result,
        jobLog,
        requestedAt,
        resultAt,
        phaseStartedAt,
        consoleLines,
        dhcp,
        ...(nbdkitPid !== undefined ? { nbdkitPid } : {}),
        overlayLeft,
        processesLeft,
        nbdkitPidAlive,
        tftpLeftovers,
        sdImage,
        sdBefore,
        sdAfter: await sha256File(sdImage),
        qemuLog,
        jobConsole,
        vmExit,
      });
    }
    const stored = await a.store.get(sha256);
    if (!stored) throw new Error(`the agent's store lost image ${sha256}`);
    return {
      sha256,
      storedAfter: await sha256File(stored.path),
      storedPath: stored.path,
      stateDir: config.stateDir,
      jobs,
      agentLog,
    };
  } finally {
    conn?.close();
    await vm?.kill();
    await agent?.stop();
    await writeFile(agentLog, records.map(formatRecord).join('\n') + '\n').catch(() => {});
  }
}
