/**
 * The in-place update driven by the real agent (issue 12), inside a private network namespace: the
 * function here runs as `runInPrivateNetwork`'s child (netboot-vm.ts), so the agent and the board
 * meet as in a lab — the agent's TFTP server on port 69 of the tap link's address, the board's
 * dropbear on port 22 of its own.
 *
 * One board (ota-vm.ts: U-Boot booting the test OS from the VM's virtio disk) runs a list of jobs
 * one after the other, as it would live through them in a lab: each job gets an agent of its own
 * (`startAgent`, the composition root, with the job's targets row and `ota` settings), the image
 * uploaded over the real WebSocket protocol (src/protocol/client.ts, as the action does), a lease
 * and a `flash`. The row's layout is `ota` and its reset `none`: the job logs in over SSH, starts
 * the switch into RAM, and the board writes its own disk and reboots itself into what it wrote,
 * which U-Boot boots from the disk again.
 *
 * Per job the scenario can pin a wrong host key, change the agent's `ota` settings, inject TFTP
 * faults (agent-scenario.ts's plans), cancel when a job log line matches, hold an SSH session of
 * its own across the job (to see when it drops), and afterwards wait for a marker on the console
 * and run a command over SSH. What it records is plain data (JSON): the result, the job's
 * log lines and phases with their times, which image the disk holds after the job, the console.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { startAgent, type RunningAgent } from '../../runner-agent/src/agent.js';
import { validateConfig } from '../../runner-agent/src/config.js';
import { createLogger, formatRecord, type LogRecord } from '../../runner-agent/src/log.js';
import { connectAgent, type AgentConnection } from '../../src/protocol/client.js';
import type { AgentMessage, JobResult } from '../../src/protocol/messages.js';
import { qemuAgentSettings, tftpFaults, type TftpFaultPlan } from './agent-scenario.js';
import { TAP_LINK, setUpTapLink, sha256File } from './netboot-vm.js';
import { INIT_BANNER } from './os-image.js';
import { OTA_BOARD_IP, sshRun, startOtaVm, type OtaVm, type SshTarget } from './ota-vm.js';

const TOKEN = 'qemu-ota-agent-token-0123456789ab';
export const OTA_TARGET = 'ota-board';

export interface OtaJobSpec {
  /** A name for the story (`wrong-host-key`, `a-to-b`…). */
  label: string;
  /** The raw image to upload and flash. */
  image: string;
  /** The job's boot check: `console:<line>` or `none`. */
  bootCheck: string;
  /** The request's writeZeros (every byte written, so the disk can equal the image). */
  writeZeros?: boolean;
  /** The row's `hostkey` cell; the board's real host key by default. */
  hostKey?: string;
  /** The agent's `ota` settings for this job (busybox is always the input's). */
  ota?: Record<string, unknown>;
  /** The agent's `flash` settings for this job (retries…). */
  flash?: Record<string, unknown>;
  faults?: TftpFaultPlan;
  /** Cancel the job when a job log line (`<level> <source> <message>`) matches this RegExp source. */
  cancelOn?: string;
  /** Hold an SSH session of the test's own (a `cat` waiting on its stdin) from before the flash request. */
  holdSsh?: boolean;
  /** After the result: wait for `INIT_BANNER marker` on the console (printed after the result's start). */
  afterMarker?: { marker: string; timeoutMs: number };
  /** After the result (and afterMarker): run this command over SSH with the board's real host key. */
  sshAfter?: string;
}

export interface OtaBoardInput {
  ubootBin: string;
  /** Holds the board's VM files, each job's agent folder and logs; the caller made it. */
  workDir: string;
  mac: string;
  memoryMiB: number;
  /** The disk (the card), prepared by the caller; written in place by the jobs. */
  disk: string;
  /** The marker the first boot prints: the jobs start once it is on the console. */
  firstMarker: string;
  /** The static arm64 busybox the agent uploads (`ota.busybox.arm64`). */
  busybox: string;
  /** The agent's private key (OpenSSH format) and the board's real host key line. */
  keyFile: string;
  hostKeyLine: string;
  /** The images the disk may hold, by name: after each job the scenario says which one it does. */
  images: Record<string, string>;
  /** The piece size of OtaJobRecord.diskChunks (the jobs' part size, to see which parts were written). */
  chunkSize: number;
  jobs: OtaJobSpec[];
  /** The first boot's limit; each job's own limit is in its timeouts. */
  bootTimeoutMs: number;
  /** The VM's hard limit (all jobs). */
  timeoutMs: number;
}

export interface OtaJobRecord {
  label: string;
  result: JobResult;
  /** Every job `log` event, as `<ms since the request> <level> <source> <message>`. */
  jobLog: string[];
  /** Phase events as `<ms since the request> <phase> <start|end>`. */
  phases: string[];
  /** ms from the request to the result. */
  jobMs: number;
  /** ms from the request to the cancel, when the job was cancelled. */
  cancelledAtMs?: number;
  /** The held session: ms from the request to its end, or null when it was still open at the result. */
  sshDroppedAtMs?: number | null;
  /** The image the disk held just after the result, by its name in `images` (null: none of them). */
  diskHolds: string | null;
  /**
   * Per `chunkSize` piece of the disk up to the largest image's end: the names of the images whose
   * same piece it equals, joined with `+` (`B`, `A+B`), or null.
   */
  diskChunks: (string | null)[];
  /** The disk beyond the largest image is as the caller made it (compared with its state before the jobs). */
  diskTailSha: string;
  /** afterMarker: whether it came, and ms from the result. */
  afterMarkerAtMs?: number | null;
  /** What sshAfter printed (stdout and stderr), or why it could not run. */
  sshAfter?: string;
  /** The console from the request to the end of the after-checks. */
  console: string;
  /** The agent's own log of this job (a file). */
  agentLog: string;
}

export interface OtaBoardResult {
  /** ms from QEMU's start to the first marker. */
  firstBootMs: number;
  diskTailShaBefore: string;
  jobs: OtaJobRecord[];
  consoleFile: string;
}

/** The targets database of one job: the board's row, layout ota, reset none, its console and SSH. */
function targetsCsv(o: { mac: string; consoleSocket: string; keyFile: string; hostKey: string }): string {
  for (const cell of [o.consoleSocket, o.keyFile, o.hostKey])
    if (/[,"\n]/.test(cell)) throw new Error(`targets cell ${JSON.stringify(cell)} needs no CSV quoting here`);
  return (
    'name,mac,ip,reset,layout,console,ssh,sshkey,hostkey\n' +
    `${OTA_TARGET},${o.mac},${OTA_BOARD_IP},none,ota,unix:${o.consoleSocket},root,${o.keyFile},${o.hostKey}\n`
  );
}

/** Which named image the disk starts with (all of it), or null. */
function imageOnDisk(disk: Buffer, images: Record<string, Buffer>): string | null {
  for (const [name, data] of Object.entries(images))
    if (disk.length >= data.length && disk.subarray(0, data.length).equals(data)) return name;
  return null;
}

/** OtaJobRecord.diskChunks. */
function chunksOf(disk: Buffer, images: Record<string, Buffer>, chunkSize: number): (string | null)[] {
  const end = Math.max(...Object.values(images).map((b) => b.length));
  const out: (string | null)[] = [];
  for (let off = 0; off < end; off += chunkSize) {
    const piece = disk.subarray(off, Math.min(off + chunkSize, end));
    const names = Object.entries(images)
      .filter(([, data]) => data.subarray(off, off + piece.length).equals(piece))
      .map(([name]) => name);
    out.push(names.length ? names.join('+') : null);
  }
  return out;
}

function sha256Of(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * An SSH session of the test's own that stays open until the board's sshd goes: an exec of `cat`
 * whose stdin is never closed. `dropped` resolves with the time it ended.
 */
async function holdSession(t: SshTarget): Promise<{ dropped: Promise<number>; close(): void }> {
  const want = Buffer.from(t.hostKeyLine.trim().split(/\s+/)[1] ?? '', 'base64');
  const privateKey = await readFile(t.keyFile);
  const client = new ssh2.Client();
  let ended: (at: number) => void = () => {};
  const dropped = new Promise<number>((resolve) => (ended = resolve));
  await new Promise<void>((resolve, reject) => {
    client.once('error', reject);
    client.once('ready', () => {
      client.exec('cat', (err) => {
        if (err) return reject(err);
        resolve();
      });
    });
    client.connect({
      host: t.host,
      port: t.port,
      username: t.user,
      privateKey,
      readyTimeout: t.timeoutMs,
      // dropbear is killed without a goodbye: notice a dead peer even if no RST comes.
      keepaliveInterval: 1000,
      keepaliveCountMax: 3,
      hostVerifier: (key: Buffer) => key.equals(want),
    });
  });
  client.on('error', () => ended(performance.now()));
  client.on('close', () => ended(performance.now()));
  return { dropped, close: () => client.end() };
}

export async function runOtaBoardScenario(input: OtaBoardInput): Promise<OtaBoardResult> {
  await setUpTapLink();
  const vmDir = join(input.workDir, 'vm');
  await mkdir(vmDir, { recursive: true });
  const images = Object.fromEntries(
    await Promise.all(Object.entries(input.images).map(async ([k, p]) => [k, await readFile(p)] as const)),
  );
  const imageEnd = Math.max(...Object.values(images).map((b) => b.length));
  const tailSha = async () => sha256Of((await readFile(input.disk)).subarray(imageEnd));
  const diskTailShaBefore = await tailSha();
  const sshTarget: SshTarget = {
    host: OTA_BOARD_IP,
    port: 22,
    user: 'root',
    keyFile: input.keyFile,
    hostKeyLine: input.hostKeyLine,
    timeoutMs: 20_000,
  };

  const since = performance.now();
  const vm: OtaVm = await startOtaVm({
    ubootBin: input.ubootBin,
    workDir: vmDir,
    mac: input.mac,
    disk: input.disk,
    memoryMiB: input.memoryMiB,
    timeoutMs: input.timeoutMs,
  });
  try {
    const first = await vm.waitForConsole(markerLine(input.firstMarker), input.bootTimeoutMs).catch(async (err) => {
      throw new Error(`${(err as Error).message}\n--- console ---\n${(await vm.console()).slice(-4000)}`);
    });
    const firstBootMs = Math.round(performance.now() - since);
    let consoleFrom = first.end;
    const jobs: OtaJobRecord[] = [];
    for (const [i, spec] of input.jobs.entries()) {
      const record = await runJob({ input, spec, index: i, vm, sshTarget, images, tailSha, consoleFrom });
      jobs.push(record);
      consoleFrom = (await vm.console()).length;
    }
    return { firstBootMs, diskTailShaBefore, jobs, consoleFile: vm.consoleFile };
  } finally {
    await vm.kill();
  }
}

function markerLine(marker: string): RegExp {
  return new RegExp(`${INIT_BANNER} ${marker.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`);
}

async function runJob(o: {
  input: OtaBoardInput;
  spec: OtaJobSpec;
  index: number;
  vm: OtaVm;
  sshTarget: SshTarget;
  images: Record<string, Buffer>;
  tailSha: () => Promise<string>;
  consoleFrom: number;
}): Promise<OtaJobRecord> {
  const { input, spec, vm } = o;
  const dir = join(input.workDir, `job-${o.index + 1}-${spec.label}`);
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, 'targets.csv'),
    targetsCsv({
      mac: input.mac,
      consoleSocket: vm.serialSocket,
      keyFile: input.keyFile,
      hostKey: spec.hostKey ?? input.hostKeyLine,
    }),
  );
  const config = await validateConfig(
    qemuAgentSettings(TOKEN, {
      flash: { retries: 2, ...spec.flash },
      timeouts: { boardShow: 30, stall: 60, boot: 90 },
      // As in a lab: the real TFTP port on the boards' network.
      tftp: { root: 'tftp', address: TAP_LINK.hostAddress, port: 69 },
      ota: { busybox: { arm64: input.busybox }, ...spec.ota },
    }),
    dir,
  );
  const records: LogRecord[] = [];
  const agentLog = join(dir, 'agent.log');
  let agent: RunningAgent | undefined;
  let conn: AgentConnection | undefined;
  let held: Awaited<ReturnType<typeof holdSession>> | undefined;
  try {
    agent = await startAgent(config, {
      log: createLogger({ level: 'debug', sink: (r) => records.push(r) }),
      ...(spec.faults ? { tftpFaults: tftpFaults(spec.faults) } : {}),
    });
    const jobLog: string[] = [];
    const phases: string[] = [];
    let asked = 0;
    let cancelledAtMs: number | undefined;
    const ms = () => Math.round(performance.now() - asked);
    const cancelOn = spec.cancelOn ? new RegExp(spec.cancelOn) : undefined;
    const onEvent = (m: AgentMessage) => {
      if (m.type === 'log') {
        const line = `${m.level} ${m.source} ${m.message}`;
        jobLog.push(`${ms()} ${line}`);
        if (cancelOn && cancelledAtMs === undefined && cancelOn.test(line)) {
          cancelledAtMs = ms();
          conn?.cancel({ reason: `test: cancel on ${spec.cancelOn}` }).catch(() => {});
        }
      } else if (m.type === 'phase') {
        phases.push(`${ms()} ${m.phase} ${m.state}`);
      }
    };
    conn = await connectAgent({ url: agent.url, token: TOKEN, client: 'qemu-ota-agent-test', onEvent });
    await conn.lease(OTA_TARGET, { holder: 'qemu-ota-agent-test' });
    const size = (await stat(spec.image)).size;
    const sha256 = await sha256File(spec.image);
    await conn.upload({ path: spec.image, sha256, size, compression: 'none' });
    if (spec.holdSsh) held = await holdSession(o.sshTarget);
    let droppedAt: number | undefined;
    void held?.dropped.then((at) => (droppedAt = at));
    asked = performance.now();
    const result = await conn.flash({
      sha256,
      bootCheck: spec.bootCheck,
      ...(spec.writeZeros === undefined ? {} : { writeZeros: spec.writeZeros }),
    });
    const jobMs = ms();
    const resultAt = performance.now();
    // Give a drop that raced the result a moment to be seen.
    if (held && droppedAt === undefined) await Promise.race([held.dropped, new Promise((r) => setTimeout(r, 500))]);
    const sshDroppedAtMs = held ? (droppedAt === undefined ? null : Math.round(droppedAt - asked)) : undefined;
    held?.close();
    const disk = await readFile(input.disk);
    const diskHolds = imageOnDisk(disk, o.images);
    const diskChunks = chunksOf(disk, o.images, input.chunkSize);
    const diskTailSha = await o.tailSha();

    let afterMarkerAtMs: number | null | undefined;
    if (spec.afterMarker) {
      // Only a marker printed since the job began: a boot the job caused.
      afterMarkerAtMs = await vm
        .waitForConsole(markerLine(spec.afterMarker.marker), spec.afterMarker.timeoutMs, o.consoleFrom)
        .then(
          () => Math.round(performance.now() - resultAt),
          () => null,
        );
    }
    let sshAfter: string | undefined;
    if (spec.sshAfter) {
      const r = await sshRun(o.sshTarget, spec.sshAfter).catch((err: unknown) => ({
        code: -1,
        stdout: '',
        stderr: `ssh failed: ${(err as Error).message}`,
      }));
      sshAfter = `${r.stdout}${r.stderr}`.trim();
    }
    return {
      label: spec.label,
      result,
      jobLog,
      phases,
      jobMs,
      ...(cancelledAtMs === undefined ? {} : { cancelledAtMs }),
      ...(sshDroppedAtMs === undefined ? {} : { sshDroppedAtMs }),
      diskHolds,
      diskChunks,
      diskTailSha,
      ...(afterMarkerAtMs === undefined ? {} : { afterMarkerAtMs }),
      ...(sshAfter === undefined ? {} : { sshAfter }),
      console: (await vm.console()).slice(o.consoleFrom),
      agentLog,
    };
  } finally {
    held?.close();
    conn?.close();
    await agent?.stop();
    await writeFile(agentLog, records.map(formatRecord).join('\n') + '\n').catch(() => {});
  }
}
