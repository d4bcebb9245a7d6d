/**
 * One flash of an emulated board, end to end through a real U-Boot: the shipped stage 1
 * (uboot/boot.cmd) fetches `<macdir>/flash.scr` from the project's TFTP server on 127.0.0.1,
 * and that test job downloads a payload, writes it to the SD card with `mmc write` and powers off.
 *
 * Used in-process by uboot-smoke.test.ts, and as a command (`node --import tsx
 * test/qemu/flash-scenario.ts '<json>'`) so the same run can happen inside `unshare -rn`.
 * The test job is test-only: it ends with `poweroff`, which the Pi's U-Boot does not have.
 */
import { link, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';
import { TftpServer, realFileResolver, type TransferEnd } from '../../runner-agent/src/tftp/server.js';
import { FLASH_SCRIPT, macDir } from '../../src/protocol/tftp-names.js';
import { startQemuBoard, withConsoleOnFailure, type QemuBoard } from './qemu-board.js';

export const STAGE1_SOURCE = fileURLToPath(new URL('../../uboot/boot.cmd', import.meta.url));
const SECTOR = 512;

/** A legacy script image (what `source` runs) from a U-Boot command file, built by the agent's own code. */
export async function writeScriptImage(source: string, image: string, name = 'rpi-flash test'): Promise<void> {
  await writeFile(image, buildScriptImage(await readFile(source, 'utf8'), { name }));
}

export interface FlashScenarioOptions {
  ubootBin: string;
  /** Holds the TFTP root, the SD image (`sd.img`), env and console log; created if missing. */
  workDir: string;
  mac: string;
  /** File name of the payload, already inside workDir; written at `startSector`. */
  payloadFile: string;
  payloadSize: number;
  startSector: number;
  /** TFTP window the test job asks for (`tftpwindowsize`); 1 = lock-step. */
  windowsize?: number;
  /** Serve a flash.scr for this board at all (false: stage 1 must find no job). */
  withJob?: boolean;
  timeoutMs: number;
}

export interface FlashScenarioResult {
  /** QEMU's exit code: 0 after `poweroff`; null when the run was stopped. */
  exitCode: number | null;
  /** What the run ended on. */
  outcome: 'powered-off' | 'job-failed' | 'no-job';
  /** From QEMU's start to its exit (or to the outcome line). */
  ms: number;
  /** From QEMU's start to the end of the flash.scr download (boot + stage 1). */
  msToJob?: number;
  transfers: TransferEnd[];
  consoleLog: string;
}

/** The test job: fetch, write, power off; any failure prints TEST-JOB-FAILED and stops. */
export function testJobScript(o: {
  mac: string;
  payloadSize: number;
  startSector: number;
  windowsize: number;
}): string {
  const sectors = Math.ceil(o.payloadSize / SECTOR);
  const hex = (n: number) => `0x${n.toString(16)}`;
  // No `exit` anywhere: U-Boot 2023.01's hush ignores it (the script goes on), so failure
  // paths are branches that end the script.
  return [
    `echo "test job: ${sectors} sectors at sector ${o.startSector}"`,
    `setenv tftpwindowsize ${o.windowsize}`,
    `if tftpboot \${loadaddr} ${macDir(o.mac)}/payload.bin && mmc dev 0 && ` +
      `mmc write \${loadaddr} ${hex(o.startSector)} ${hex(sectors)}; then`,
    `  echo TEST-JOB-DONE`,
    `  poweroff`,
    `fi`,
    `echo TEST-JOB-FAILED`,
    '',
  ].join('\n');
}

export async function runFlashScenario(o: FlashScenarioOptions): Promise<FlashScenarioResult> {
  const root = join(o.workDir, 'tftp');
  const dir = join(root, macDir(o.mac));
  await mkdir(dir, { recursive: true });
  const stage1 = join(o.workDir, 'stage1.scr');
  await writeScriptImage(STAGE1_SOURCE, stage1, 'rpi-flash stage 1');
  if (o.withJob !== false) {
    const job = testJobScript({ ...o, windowsize: o.windowsize ?? 1 });
    await writeFile(join(dir, FLASH_SCRIPT), buildScriptImage(job, { name: 'rpi-flash test job' }));
    // A hard link, not a symlink: the resolver refuses links that lead out of the TFTP root.
    await link(join(o.workDir, o.payloadFile), join(dir, 'payload.bin'));
  }

  const transfers: TransferEnd[] = [];
  const started = performance.now();
  let msToJob: number | undefined;
  const server = new TftpServer({
    address: '127.0.0.1',
    port: 0,
    resolver: realFileResolver(root),
    onTransferEnd: (t) => {
      transfers.push(t);
      if (t.ok && t.path.endsWith(`/${FLASH_SCRIPT}`)) msToJob ??= performance.now() - started;
    },
  });
  let board: QemuBoard | undefined;
  try {
    const { port } = await server.listen();
    board = await startQemuBoard({
      ubootBin: o.ubootBin,
      mac: o.mac,
      tftpPort: port,
      sdImage: join(o.workDir, 'sd.img'),
      stage1,
      timeoutMs: o.timeoutMs,
      workDir: o.workDir,
    });
    const b = board;
    return await withConsoleOnFailure(b, async () => {
      // The console watch never rejects: when QEMU exits, waitForExit settles the race (its
      // timeout included) and the watch, which also gives up at the exit, must not win it.
      const never = new Promise<never>(() => {});
      const ended = await Promise.race([
        b.waitForExit(o.timeoutMs).then((code) => ({ outcome: 'powered-off' as const, code })),
        b.waitForConsole(/TEST-JOB-FAILED|rpi-flash: no job for /, o.timeoutMs).then(
          (line) => ({
            outcome: line === 'TEST-JOB-FAILED' ? ('job-failed' as const) : ('no-job' as const),
            code: null,
          }),
          () => never,
        ),
      ]);
      const ms = performance.now() - started;
      return { exitCode: ended.code, outcome: ended.outcome, ms, msToJob, transfers, consoleLog: b.consoleLog };
    });
  } finally {
    await board?.kill();
    await server.close();
  }
}

// As a command: `node --import tsx test/qemu/flash-scenario.ts '<FlashScenarioOptions as JSON>'`
// prints the result as JSON on stdout.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const options = JSON.parse(process.argv[2] ?? '') as FlashScenarioOptions;
  runFlashScenario(options).then(
    (result) => {
      process.stdout.write(JSON.stringify(result) + '\n');
    },
    (err: unknown) => {
      process.stderr.write(`${(err as Error).message ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
