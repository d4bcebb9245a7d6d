/**
 * One flash job through the real agent onto a real U-Boot under QEMU (DESIGN §5 step 3, issue 3):
 * the agent's composition root (`startAgent`) with a targets row whose reset is
 * `qmp:<the board's QMP socket>`, the job submitted over the real WebSocket protocol
 * (`connectAgent`), the shipped stage 1 (uboot/boot.cmd) on the board fetching the generated
 * flash.scr, and stage 2 writing the emulated SD card.
 *
 * The board boots once before the job (stage 1 finds no job and stops at the prompt), then the
 * agent stages the job and resets it through QMP — exactly what a lab's RUN line does.
 *
 * Used in-process by agent-flash.test.ts and bench/uboot-tftp.ts, and as a command
 * (`node --import tsx test/qemu/agent-scenario.ts '<AgentScenarioOptions as JSON>'`, the result
 * as JSON on stdout) so the same run can happen inside `unshare -rn`. Faults are plain data for
 * that reason.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { startAgent, type RunningAgent, type StartOptions } from '../../runner-agent/src/agent.js';
import { validateConfig } from '../../runner-agent/src/config.js';
import { createLogger, formatRecord, type LogRecord } from '../../runner-agent/src/log.js';
import { connectAgent, type AgentConnection } from '../../src/protocol/client.js';
import type { AgentMessage, JobResult } from '../../src/protocol/messages.js';
import { STAGE1_SOURCE, writeScriptImage } from './flash-scenario.js';
import { GUEST_ADDR, startQemuBoard, withConsoleOnFailure, type QemuBoard } from './qemu-board.js';

const TOKEN = 'qemu-agent-test-token-0123456789';
export const TARGET_NAME = 'qemu-pi';
const NO_JOB = /rpi-flash: no job for /g;

/**
 * Stage 2's RAM on QEMU's `virt` machine (1 GiB from 0x40000000): flash.scr lands at
 * GUEST_ADDR.script, parts at GUEST_ADDR.load; the CRC slot and beacon buffer sit just below the
 * load buffer. U-Boot relocates itself to the top of RAM (near 0x7f000000), far above all of it.
 */
export const QEMU_FLASH_ADDR = {
  loadAddr: GUEST_ADDR.load,
  crcAddr: GUEST_ADDR.load - 0x20_0000,
  beaconAddr: GUEST_ADDR.load - 0x10_0000,
  // Compressed parts land 128 MiB above the load buffer, far below U-Boot near 0x7f000000.
  zipAddr: GUEST_ADDR.load + 0x800_0000,
} as const;

/**
 * Agent settings for a board under QEMU (the raw object `validateConfig` takes): loopback
 * listeners on ephemeral ports, a `targets.csv` in the work folder, stage 2 in QEMU's memory map,
 * no boot check; `over` replaces top-level settings and extends `flash` and `timeouts`.
 */
export function qemuAgentSettings(
  token: string,
  over: { flash?: Record<string, unknown>; timeouts?: Record<string, unknown>; [key: string]: unknown } = {},
): Record<string, unknown> {
  const hex = (n: number) => `0x${n.toString(16)}`;
  const { flash, timeouts, ...rest } = over;
  return {
    listen: { host: '127.0.0.1', port: 0 },
    token,
    targets: 'targets.csv',
    // slirp makes the VM appear as 127.0.0.1: the targets rows of QEMU boards hold that IP (checkClientIp).
    tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
    stateDir: 'state',
    flash: {
      retries: 2,
      loadAddr: hex(QEMU_FLASH_ADDR.loadAddr),
      crcAddr: hex(QEMU_FLASH_ADDR.crcAddr),
      beaconAddr: hex(QEMU_FLASH_ADDR.beaconAddr),
      zipAddr: hex(QEMU_FLASH_ADDR.zipAddr),
      mmcDev: 0,
      ...flash,
    },
    timeouts: { boardShow: 20, stall: 15, boot: 5, leaseGrace: 30, shutdown: 5, ...timeouts },
    bootCheck: 'none',
    logLevel: 'debug',
    ...rest,
  };
}

/** TFTP faults as data (they cross into the `unshare -rn` child as JSON). */
export interface TftpFaultPlan {
  /** Corrupt one DATA block of one part: only the first time it is sent, or every time. */
  corrupt?: { part: number; block: number; times: 'once' | 'always' };
  /** From this block of this part on the server sends no DATA at all, for any file: it goes silent mid-transfer. */
  silenceFrom?: { part: number; block: number };
}

export interface AgentScenarioOptions {
  ubootBin: string;
  /** Holds the targets CSV, TFTP root, state, sd.img, env, console and agent logs; created if missing. */
  workDir: string;
  mac: string;
  /** The raw image to upload and flash. */
  imageFile: string;
  /** The SD card: a power of two in bytes, pre-filled with `sdFill` so untouched sectors show. */
  sdSize: number;
  sdFill: number;
  /** Overrides of the agent's `flash` settings (partSize, retries, tftpWindowSize…). */
  flash?: Record<string, unknown>;
  /** Overrides of the agent's timeouts in seconds (boardShow, stall…). */
  timeouts?: Record<string, number>;
  faults?: TftpFaultPlan;
  /** After the result, wait this long for stage 1 to run again and find no job (0: don't wait). */
  waitForNoJobMs?: number;
  /** Hard limit for QEMU and the job. */
  timeoutMs: number;
  /** The targets row's IP; default 127.0.0.1, the address the board's requests come from (slirp). */
  targetIp?: string;
  /** The card holds the image already (after `sdFill`): a re-flash, for read-compare. */
  sdHoldsImage?: boolean;
  /** What an earlier job found the board's U-Boot can do (staging/board-caps.ts); default: not probed yet. */
  caps?: { unzip: boolean };
}

export interface AgentScenarioResult {
  result: JobResult;
  /** Every job `log` event the client received, as text. */
  jobLog: string[];
  /** Entries left under the TFTP root after the job (dot-files excluded). */
  tftpLeftovers: string[];
  /** Stage 1 ran again after the job's reset and found no flash.scr. */
  noJobAfterReset: boolean;
  /** The downloads U-Boot completed after the job's reset, with the rate it printed for each. */
  ubootTransfers: UbootTransfer[];
  /** From QEMU's start to the board's first "no job" (boot + stage 1). */
  bootMs: number;
  /** From the flash request to the result. */
  jobMs: number;
  sdImage: string;
  consoleLog: string;
  agentLog: string;
}

/** The test's TFTP fault hooks: the agent passes them to its TFTP server (`StartOptions.tftpFaults`). */
export function tftpFaults(plan: TftpFaultPlan): NonNullable<StartOptions['tftpFaults']> {
  const partOf = (path: string) => {
    const m = /\/part-(\d+)(\.gz)?$/.exec(path);
    return m ? Number(m[1]) : undefined;
  };
  let corrupted = false;
  let silent = false;
  return {
    corrupt(path, block, data) {
      const c = plan.corrupt;
      if (!c || partOf(path) !== c.part || block !== c.block) return undefined;
      if (c.times === 'once' && corrupted) return undefined;
      corrupted = true;
      const bad = Buffer.from(data);
      bad[bad.length >> 1]! ^= 0xff;
      return bad;
    },
    drop(path, block) {
      const s = plan.silenceFrom;
      if (s && partOf(path) === s.part && block >= s.block) silent = true;
      return silent;
    },
  };
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function countMatches(text: string, re: RegExp): number {
  return [...text.matchAll(re)].length;
}

export interface UbootTransfer {
  file: string;
  /** `Bytes transferred = N`. */
  bytes: number;
  /** The rate U-Boot printed under its `#` bar, in MiB/s (it prints Bytes/s, KiB/s or MiB/s). */
  mibPerSecond: number;
}

const RATE_UNITS: Record<string, number> = { Bytes: 1 / 1024 / 1024, KiB: 1 / 1024, MiB: 1 };

/**
 * Every completed `tftpboot` in a console log: `Filename '…'.`, the `#` bar, a rate line such as
 * `\t 5.3 MiB/s`, `done`, `Bytes transferred = N (hex)`.
 */
export function parseUbootTransfers(console: string): UbootTransfer[] {
  const out: UbootTransfer[] = [];
  for (const chunk of console.split(/^Filename '/m).slice(1)) {
    const file = /^([^']*)'/.exec(chunk)?.[1];
    const rate = /^\s*(\d+(?:\.\d+)?) (Bytes|KiB|MiB)\/s\s*$/m.exec(chunk);
    const bytes = /^Bytes transferred = (\d+)/m.exec(chunk);
    if (file === undefined || !rate || !bytes) continue;
    out.push({ file, bytes: Number(bytes[1]), mibPerSecond: Number(rate[1]) * RATE_UNITS[rate[2]!]! });
  }
  return out;
}

export async function runAgentScenario(o: AgentScenarioOptions): Promise<AgentScenarioResult> {
  await mkdir(o.workDir, { recursive: true });
  const sdImage = join(o.workDir, 'sd.img');
  const sd = Buffer.alloc(o.sdSize, o.sdFill);
  if (o.sdHoldsImage) (await readFile(o.imageFile)).copy(sd, 0);
  await writeFile(sdImage, sd);
  const qmpSocket = join(o.workDir, 'qmp.sock'); // where startQemuBoard puts it
  await writeFile(
    join(o.workDir, 'targets.csv'),
    `name,mac,ip,reset\n${TARGET_NAME},${o.mac},${o.targetIp ?? '127.0.0.1'},qmp:${qmpSocket}\n`,
  );
  const config = await validateConfig(
    qemuAgentSettings(TOKEN, {
      flash: { partSize: '1MiB', ...o.flash },
      ...(o.timeouts ? { timeouts: o.timeouts } : {}),
      // The test images are bare patterns (no FAT boot partition): written as they are.
      defaultLayout: 'whole',
    }),
    o.workDir,
  );
  if (o.caps) {
    const dir = join(config.stateDir, 'boards');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, `${TARGET_NAME}.caps.json`), JSON.stringify({ ...o.caps, seen: '', job: 'earlier' }));
  }
  const records: LogRecord[] = [];
  const agentLog = join(o.workDir, 'agent.log');
  const stage1 = join(o.workDir, 'stage1.scr');
  await writeScriptImage(STAGE1_SOURCE, stage1, 'rpi-flash stage 1');

  let agent: RunningAgent | undefined;
  let board: QemuBoard | undefined;
  let conn: AgentConnection | undefined;
  const started = performance.now();
  try {
    agent = await startAgent(config, {
      log: createLogger({ level: 'debug', sink: (r) => records.push(r) }),
      ...(o.faults ? { tftpFaults: tftpFaults(o.faults) } : {}),
    });
    board = await startQemuBoard({
      ubootBin: o.ubootBin,
      mac: o.mac,
      tftpPort: agent.tftp.port,
      sdImage,
      stage1,
      timeoutMs: o.timeoutMs,
      workDir: o.workDir,
    });
    const b = board;
    const a = agent;
    return await withConsoleOnFailure(b, async () => {
      // The first boot finds no job; only then may the job be staged (else that boot could take it).
      await b.waitForConsole(/rpi-flash: no job for /, Math.min(o.timeoutMs, 60_000));
      const bootMs = performance.now() - started;
      const consoleBefore = b.console().length;

      const jobLog: string[] = [];
      const onEvent = (m: AgentMessage) => {
        if (m.type === 'log') jobLog.push(`${m.level} ${m.source} ${m.message}`);
      };
      conn = await connectAgent({ url: a.url, token: TOKEN, client: 'qemu-agent-test', onEvent });
      await conn.lease(TARGET_NAME, { holder: 'qemu-test' });
      const size = (await stat(o.imageFile)).size;
      const sha256 = await sha256File(o.imageFile);
      await conn.upload({ path: o.imageFile, sha256, size, compression: 'none' });
      const asked = performance.now();
      const result = await conn.flash({ sha256, bootCheck: 'none' });
      const jobMs = performance.now() - asked;

      let noJobAfterReset = false;
      if (o.waitForNoJobMs) {
        // Stage 1 again, after the reset the job's script ended with: it must find no flash.scr.
        const before = countMatches(b.console().slice(0, consoleBefore), NO_JOB);
        const pattern = new RegExp(`(?:[\\s\\S]*?rpi-flash: no job for ){${before + 1}}`);
        noJobAfterReset = await b.waitForConsole(pattern, o.waitForNoJobMs).then(
          () => true,
          () => false,
        );
      }
      const tftpLeftovers = (await readdir(config.tftp.root)).filter((n) => !n.startsWith('.'));
      return {
        result,
        jobLog,
        tftpLeftovers,
        noJobAfterReset,
        ubootTransfers: parseUbootTransfers(b.console().slice(consoleBefore)),
        bootMs,
        jobMs,
        sdImage,
        consoleLog: b.consoleLog,
        agentLog,
      };
    });
  } finally {
    conn?.close();
    // QEMU first: a board still retrying TFTP must not keep the agent's transfers alive.
    await board?.kill();
    await agent?.stop();
    await writeFile(agentLog, records.map(formatRecord).join('\n') + '\n').catch(() => {});
  }
}

// As a command: `node --import tsx test/qemu/agent-scenario.ts '<AgentScenarioOptions as JSON>'`
// prints the result as JSON on stdout.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const options = JSON.parse(process.argv[2] ?? '') as AgentScenarioOptions;
  runAgentScenario(options).then(
    (result) => {
      process.stdout.write(JSON.stringify(result) + '\n');
    },
    (err: unknown) => {
      process.stderr.write(`${(err as Error).message ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
