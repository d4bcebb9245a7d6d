/**
 * A real U-Boot on an emulated board (DESIGN §4): QEMU's `virt` machine with U-Boot as its BIOS,
 * an environment in pflash, a virtio NIC behind slirp, and an SD card on sdhci-pci.
 *
 * The board talks to one TFTP server: slirp forwards the guest's 10.0.2.2:<tftpPort> to the
 * host's 127.0.0.1:<tftpPort> (slirp's own TFTP server owns port 69), so the server under test
 * listens on loopback and sees every board as 127.0.0.1 — the MAC folder is the identity.
 *
 * No QEMU may outlive its test: every process is started through `setpriv --pdeathsig KILL`
 * (the kernel kills QEMU if the test worker dies, even by SIGKILL), tracked in a module-wide set,
 * killed on its hard timeout, by `kill()`, by `killAllQemuBoards()` (for afterEach) and at exit.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { stat, truncate, writeFile, copyFile, access, constants } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { qmpExecute } from '../../runner-agent/src/reset/qmp.js';

const execFileAsync = promisify(execFile);

export const QEMU_BINARY = 'qemu-system-aarch64';

/** Guest memory map (1 GiB of RAM from 0x40000000; QEMU puts the DTB at its start). */
export const GUEST_ADDR = {
  fdt: 0x4000_0000,
  /** Where QEMU's loader places a stage-1 script image before U-Boot starts (see `stage1`). */
  stage1: 0x4010_0000,
  script: 0x4020_0000,
  kernel: 0x4040_0000,
  ramdisk: 0x4400_0000,
  /** Room for downloads: U-Boot relocates itself to the top of RAM, far above. */
  load: 0x4800_0000,
} as const;

const ENV_SIZE = 0x40000; // CONFIG_ENV_SIZE of qemu_arm64_defconfig
const PFLASH_SIZE = 64 * 1024 * 1024; // QEMU's virt flash bank size; the env sits at its start
const CONSOLE_TAIL = 4000;
const UNIX_PATH_MAX = 107;

export interface QemuBoardOptions {
  ubootBin: string;
  /** The NIC's MAC; U-Boot sets `ethaddr` from it. */
  mac: string;
  /** The TFTP server under test, listening on 127.0.0.1:<tftpPort>. */
  tftpPort: number;
  /** Raw SD card image, written in place; its size must be a power of two. */
  sdImage: string;
  /** Extra or overriding environment variables. */
  env?: Record<string, string>;
  /**
   * What runs after `pci enum; mmc list;` (which probe the SD controller). Defaults to
   * `source ${stage1addr}` when `stage1` is given, else to nothing (the board stops at its prompt).
   */
  bootcmd?: string;
  /** A script image (mkimage -T script) placed in RAM at `${stage1addr}` before U-Boot starts. */
  stage1?: string;
  /** Hard limit for the whole QEMU run: the process is killed when it passes. */
  timeoutMs: number;
  /** Holds env.img, the QMP socket and console.log; the caller creates and removes it. */
  workDir: string;
  /**
   * Put the board's serial console on a unix socket (`-serial unix:<path>,server=on,wait=off`,
   * what a `unix:<path>` console spec reads) instead of stdio. QEMU's monitor is then switched off,
   * so `console()`/`waitForConsole()` see only QEMU's own messages and `type()` reaches nothing.
   * Output printed while no client is connected is lost (wait=off).
   */
  serialSocket?: string;
}

export interface QemuBoard {
  readonly qmpSocket: string;
  /** QEMU's process id (setpriv execs into QEMU, so it is QEMU's own). */
  readonly pid: number | undefined;
  /** Path of the console log file (everything QEMU printed). */
  readonly consoleLog: string;
  /** The console output captured so far. */
  console(): string;
  /** Resolves with the first match of `re` in the whole console so far (not only new output). */
  waitForConsole(re: RegExp, timeoutMs: number): Promise<string>;
  /** Sends keystrokes to the U-Boot console (e.g. `'\x03'` or `'version\n'`). */
  type(text: string): void;
  /** Resolves with QEMU's exit code (null when a signal ended it); rejects on timeout. */
  waitForExit(timeoutMs: number): Promise<number | null>;
  /** Ends QEMU (SIGTERM, then SIGKILL) and waits until it is gone. Safe to call twice. */
  kill(): Promise<void>;
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: SIGKILL needs no waiting. pdeathsig covers harder deaths.
  process.on('exit', () => {
    for (const child of running) child.kill('SIGKILL');
  });
}

/** For afterEach: kills every QEMU this process started and waits for them to be gone. */
export async function killAllQemuBoards(): Promise<void> {
  await Promise.all([...running].map((child) => killChild(child)));
}

async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
  await gone;
  clearTimeout(timer);
}

/** Whether the QEMU binary and mkenvimage are there (the tests skip or fail on their absence). */
export async function qemuAvailable(): Promise<{ ok: true } | { ok: false; reason: string }> {
  for (const tool of [QEMU_BINARY, 'mkenvimage', 'mkimage', 'setpriv']) {
    try {
      await execFileAsync('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return { ok: false, reason: `${tool} is not installed (Debian: qemu-system-arm, u-boot-tools, util-linux)` };
    }
  }
  return { ok: true };
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0 && Number.isSafeInteger(n);
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** The whole environment: the pflash env replaces U-Boot's default env, so nothing is implied. */
export function boardEnvironment(
  o: Pick<QemuBoardOptions, 'tftpPort' | 'env' | 'bootcmd' | 'stage1'>,
): Record<string, string> {
  const after = o.bootcmd ?? (o.stage1 ? 'source ${stage1addr}' : '');
  const env: Record<string, string> = {
    bootdelay: '0',
    ipaddr: '10.0.2.15',
    netmask: '255.255.255.0',
    serverip: '10.0.2.2',
    tftpdstp: String(o.tftpPort),
    loadaddr: hex(GUEST_ADDR.load),
    scriptaddr: hex(GUEST_ADDR.script),
    kernel_addr_r: hex(GUEST_ADDR.kernel),
    ramdisk_addr_r: hex(GUEST_ADDR.ramdisk),
    fdt_addr: hex(GUEST_ADDR.fdt),
    stage1addr: hex(GUEST_ADDR.stage1),
    stdin: 'serial',
    stdout: 'serial',
    stderr: 'serial',
    bootcmd: `pci enum; mmc list; ${after}`.trim(),
    ...o.env,
  };
  for (const [name, value] of Object.entries(env)) {
    // mkenvimage reads one `name=value` a line: a newline would split the variable silently.
    if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(name)) throw new Error(`bad U-Boot environment variable name: "${name}"`);
    if (/[\r\n\0]/.test(value))
      throw new Error(`environment variable ${name} contains a line break or NUL; use ';' between commands`);
  }
  return env;
}

/** Writes `env.img`: a 0x40000-byte U-Boot env (CRC + NUL-separated pairs) padded to the flash bank. */
async function writeEnvImage(workDir: string, env: Record<string, string>): Promise<string> {
  const text = join(workDir, 'env.txt');
  const image = join(workDir, 'env.img');
  await writeFile(
    text,
    Object.entries(env)
      .map(([k, v]) => `${k}=${v}\n`)
      .join(''),
  );
  await execFileAsync('mkenvimage', ['-s', hex(ENV_SIZE), '-o', image, text]);
  await truncate(image, PFLASH_SIZE);
  return image;
}

export async function startQemuBoard(o: QemuBoardOptions): Promise<QemuBoard> {
  const sdSize = (await stat(o.sdImage)).size;
  if (!isPowerOfTwo(sdSize))
    throw new Error(`SD image ${o.sdImage} is ${sdSize} bytes; QEMU's sd-card needs a power of two`);
  await access(o.ubootBin, constants.R_OK).catch(() => {
    throw new Error(`no U-Boot at ${o.ubootBin}; build it with: bash scripts/build-test-uboot.sh`);
  });
  const qmpSocket = join(o.workDir, 'qmp.sock');
  if (qmpSocket.length > UNIX_PATH_MAX)
    throw new Error(
      `QMP socket path is too long for a unix socket (${qmpSocket.length} > ${UNIX_PATH_MAX}): ${qmpSocket}`,
    );
  const envImage = await writeEnvImage(o.workDir, boardEnvironment(o));

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
    'user,id=n0',
    '-device',
    `virtio-net-device,netdev=n0,mac=${o.mac}`,
    '-drive',
    `if=pflash,format=raw,unit=1,file=${envImage}`,
    '-device',
    'sdhci-pci',
    '-drive',
    `if=none,id=sdcard,format=raw,file=${o.sdImage}`,
    '-device',
    'sd-card,drive=sdcard',
    '-qmp',
    `unix:${qmpSocket},server=on,wait=off`,
  ];
  if (o.serialSocket) {
    if (o.serialSocket.length > UNIX_PATH_MAX)
      throw new Error(`serial socket path is too long for a unix socket: ${o.serialSocket}`);
    // -nographic would multiplex serial and monitor on stdio; with the serial elsewhere, no monitor.
    args.push('-serial', `unix:${o.serialSocket},server=on,wait=off`, '-monitor', 'none');
  }
  if (o.stage1) {
    // A private copy: the loader reads the file again at every system_reset.
    const stage1Copy = join(o.workDir, 'stage1.scr');
    await copyFile(o.stage1, stage1Copy);
    args.push('-device', `loader,file=${stage1Copy},addr=${hex(GUEST_ADDR.stage1)},force-raw=on`);
  }

  return startQemuProcess(QEMU_BINARY, args, { workDir: o.workDir, timeoutMs: o.timeoutMs, qmpSocket });
}

/**
 * Starts one QEMU (`binary` with `args`, which must include `-qmp unix:<qmpSocket>,…`) under the
 * rules of this module: killed with its test worker, at its hard timeout and by
 * `killAllQemuBoards()`; its stdout and stderr captured into `console.log` in workDir.
 */
export function startQemuProcess(
  binary: string,
  args: string[],
  o: { workDir: string; timeoutMs: number; qmpSocket: string },
): QemuBoard {
  const { qmpSocket } = o;
  const consoleLog = join(o.workDir, 'console.log');
  installExitHook();
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', binary, ...args], {
    cwd: o.workDir,
    detached: false,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  const log: WriteStream = createWriteStream(consoleLog);
  const listeners = new Set<() => void>();
  const notify = () => {
    for (const l of [...listeners]) l();
  };
  const capture = (chunk: Buffer) => {
    output += chunk.toString('latin1');
    if (!log.writableEnded) log.write(chunk);
    notify();
  };
  child.stdout.on('data', capture);
  child.stderr.on('data', capture); // QEMU's own complaints belong in the same story
  child.stdin.on('error', () => {}); // writing after QEMU died is not the test's failure

  let spawnError: Error | undefined;
  let timedOut = false;
  let done = false;
  const hardTimer = setTimeout(() => {
    timedOut = true;
    capture(Buffer.from(`\n[qemu-board] hard timeout of ${o.timeoutMs} ms reached: killing QEMU\n`));
    child.kill('SIGKILL');
  }, o.timeoutMs);
  const exited = new Promise<number | null>((resolve) => {
    child.once('error', (err) => {
      spawnError = err;
      running.delete(child);
      resolve(null);
    });
    // 'close', not 'exit': the console streams have delivered their last bytes by then.
    child.once('close', (code) => resolve(code));
  }).then(async (code) => {
    running.delete(child);
    clearTimeout(hardTimer);
    await new Promise<void>((resolve) => log.end(() => resolve()));
    done = true;
    notify();
    return code;
  });

  const why = () =>
    spawnError
      ? `could not start ${binary}: ${spawnError.message}`
      : timedOut
        ? `QEMU was killed at its hard timeout (${o.timeoutMs} ms)`
        : 'QEMU exited';

  const board: QemuBoard = {
    qmpSocket,
    pid: child.pid,
    consoleLog,
    console: () => output,
    type(text) {
      if (!done) child.stdin.write(text);
    },
    waitForConsole(re, timeoutMs) {
      return new Promise<string>((resolve, reject) => {
        const check = () => {
          const m = re.exec(output);
          if (m) return finish(() => resolve(m[0]));
          if (done) finish(() => reject(new Error(`${why()} before the console showed ${re}`)));
        };
        const timer = setTimeout(
          () => finish(() => reject(new Error(`console did not show ${re} within ${timeoutMs} ms`))),
          timeoutMs,
        );
        const finish = (settle: () => void) => {
          clearTimeout(timer);
          listeners.delete(check);
          settle();
        };
        listeners.add(check);
        check();
      });
    },
    async waitForExit(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`QEMU did not exit within ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        const code = await Promise.race([exited, timeout]);
        if (spawnError) throw new Error(why());
        if (timedOut) throw new Error(why());
        return code;
      } finally {
        clearTimeout(timer);
      }
    },
    async kill() {
      await killChild(child);
      await exited;
    },
  };
  return board;
}

/** Runs one QMP command (e.g. `system_reset`, `quit`) on the board's monitor. */
export async function qmpCommand(socket: string, command: string, timeoutMs = 5000): Promise<unknown> {
  const [result] = await qmpExecute(socket, [command], timeoutMs);
  return result;
}

/** The last part of a console log, for error messages (the whole log stays on disk). */
export function consoleTail(text: string, chars = CONSOLE_TAIL): string {
  return text.length > chars ? `…${text.slice(-chars)}` : text;
}

/**
 * Runs `fn`; if it throws, rethrows with the tail of the board's console appended, so a failing
 * test shows what U-Boot printed (the whole log stays in `board.consoleLog`).
 */
export async function withConsoleOnFailure<T>(board: QemuBoard | undefined, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (!board) throw err;
    const tail = consoleTail(board.console());
    const e = err instanceof Error ? err : new Error(String(err));
    e.message += `\n--- board console (${board.consoleLog}) ---\n${tail}\n--- end of console ---`;
    throw e;
  }
}
