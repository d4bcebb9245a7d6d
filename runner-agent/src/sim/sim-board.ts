/**
 * A simulated Raspberry Pi for loopback tests and the `sim` reset spec: U-Boot's stage 1 and the
 * generated stage 2 run in the U-Boot shell model (uboot-shell.ts), TFTP goes through the
 * injected `fetch` (the agent wires the real TFTP client), the SD card is a file, and "booting the
 * installed OS" opens a TCP listener that a boot check can reach.
 *
 * Stage 1 (DESIGN §3.5): `setexpr macdir gsub : - ${ethaddr}`, fetch `<macdir>/flash.scr`; if it
 * exists, `source` it (a `reset` inside restarts stage 1); otherwise boot the card if it has an
 * MBR signature (0x55 0xAA at 510), else stay in U-Boot.
 *
 * Faults (`faults` option; the agent's targets file can pass them after `sim:`):
 *   no-show              never fetches anything (stays in U-Boot)
 *   no-boot              the flashed system never comes up (no listener)
 *   fail-write[:<n>]     every `mmc write` (or only the n-th since power-on) writes nothing
 *   fail-read            every `mmc read` reads nothing
 *   corrupt-once:<part>  the first download of part <part> arrives with one byte flipped
 *   corrupt-always:<part> every download of part <part> arrives corrupted
 *   bitrot-write:<n>     the n-th `mmc write` stores one byte flipped (read-back verify fails)
 *   crc-be32             `crc32` stores big-endian, like U-Boot builds with the multi-hash code
 *                        (FIT or SHA enabled; no Debian Pi build, nor the test build); the default
 *                        is the Pi builds' native ulong
 *   slow-card:<KiB/s>    `mmc write` takes as long as a card writing at that rate (the board is
 *                        silent meanwhile, as a real one is)
 *   no-unzip             U-Boot has no `unzip` command (as Debian's 32-bit Pi builds)
 * A corrupt-* fault applies to a part's compressed download (`part-<n>.gz`) as to its raw one.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { open, type FileHandle } from 'node:fs/promises';
import net from 'node:net';
import type { Logger } from '../log.js';
import { FLASH_SCRIPT, normalizeMac } from '../../../src/protocol/tftp-names.js';
import { SparseMemory } from './memory.js';
import { BoardResetRequest, ShellAborted, UBootShell, type MmcDevice } from './uboot-shell.js';

export interface SimBoardOptions {
  name: string;
  mac: string;
  ip: string /* where the "booted OS" listens */;
  bootPort: number;
  cardPath: string /* card image file, created (sparse) if missing */;
  cardSize: number;
  fetch(
    path: string,
    opts: { blksize?: number; windowsize?: number },
  ): Promise<Buffer | null> /* TFTP download; null = not found */;
  log: Logger;
  faults?: string[];
  /** RAM of the board (default 1 GiB, a Pi 3). */
  ramSize?: number;
}

export type SimBoardState = 'off' | 'uboot' | 'flashing' | 'booted';

interface Faults {
  noShow: boolean;
  noBoot: boolean;
  failWrite: boolean | number;
  failRead: boolean;
  corruptOnce: Set<number>;
  corruptAlways: Set<number>;
  bitrotWrite: Set<number>;
  crcBe32: boolean;
  noUnzip: boolean;
  /** Bytes per second `mmc write` stores; 0 = at once. */
  cardWriteRate: number;
}

/** Parse a `sim:` reset spec's fault flags; the targets database uses it to refuse unknown ones. */
export function parseFaults(list: readonly string[], board: string): Faults {
  const f: Faults = {
    noShow: false,
    noBoot: false,
    failWrite: false,
    failRead: false,
    corruptOnce: new Set(),
    corruptAlways: new Set(),
    bitrotWrite: new Set(),
    crcBe32: false,
    noUnzip: false,
    cardWriteRate: 0,
  };
  for (const raw of list) {
    const [name, arg] = raw.split(':', 2) as [string, string | undefined];
    const number = () => {
      if (arg === undefined || !/^[1-9]\d*$/.test(arg))
        throw new Error(`sim board ${board}: fault "${raw}" needs a positive number after ':'`);
      return Number(arg);
    };
    switch (name) {
      case 'no-show':
        f.noShow = true;
        break;
      case 'no-boot':
        f.noBoot = true;
        break;
      case 'fail-write':
        f.failWrite = arg === undefined ? true : number();
        break;
      case 'fail-read':
        f.failRead = true;
        break;
      case 'corrupt-once':
        f.corruptOnce.add(number());
        break;
      case 'corrupt-always':
        f.corruptAlways.add(number());
        break;
      case 'bitrot-write':
        f.bitrotWrite.add(number());
        break;
      case 'crc-be32':
        f.crcBe32 = true;
        break;
      case 'no-unzip':
        f.noUnzip = true;
        break;
      case 'slow-card':
        f.cardWriteRate = number() * 1024;
        break;
      default:
        throw new Error(
          `sim board ${board}: unknown fault "${raw}" (known: no-show, no-boot, fail-write[:n], fail-read, ` +
            'corrupt-once:<part>, corrupt-always:<part>, bitrot-write:<n>, crc-be32, slow-card:<KiB/s>, no-unzip)',
        );
    }
  }
  return f;
}

const PI_ENV = {
  scriptaddr: '0x02400000',
  kernel_addr_r: '0x00080000',
  fdt_addr_r: '0x02600000',
  ramdisk_addr_r: '0x02700000',
  netmask: '255.255.255.0',
  serverip: '127.0.0.1',
};
const STAGE1_FETCH = `setexpr macdir gsub : - \${ethaddr}; tftpboot \${scriptaddr} \${macdir}/${FLASH_SCRIPT}`;

export class SimBoard {
  private currentState: SimBoardState = 'off';
  private readonly faults: Faults;
  private run: { abort: AbortController; done: Promise<void> } | undefined;
  private card: FileHandle | undefined;
  private cardOpening: Promise<FileHandle> | undefined;
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private readonly corrupted = new Set<number>();
  private writesSincePowerOn = 0;
  private closed = false;
  private readonly waiters: Array<{ state: SimBoardState; resolve: () => void }> = [];
  /** Power-ups since creation (each reset, and each `reset` a script runs). */
  boots = 0;

  constructor(private readonly o: SimBoardOptions) {
    if (!Number.isSafeInteger(o.cardSize) || o.cardSize <= 0 || o.cardSize % 512 !== 0)
      throw new Error(`sim board ${o.name}: cardSize must be a positive multiple of 512, got ${o.cardSize}`);
    normalizeMac(o.mac);
    this.faults = parseFaults(o.faults ?? [], o.name);
  }

  get name(): string {
    return this.o.name;
  }

  get state(): SimBoardState {
    return this.currentState;
  }

  /** Where the booted system listens (the real port when bootPort is 0), while booted. */
  get bootAddress(): net.AddressInfo | undefined {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address : undefined;
  }

  /** Resolves when the current power-on has nothing left to do: idle in U-Boot, booted, or off. */
  async idle(): Promise<void> {
    await this.run?.done;
  }

  /** Resolves when the board reaches `state` (at once if it is there). */
  whenState(state: SimBoardState): Promise<void> {
    if (this.currentState === state) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ state, resolve }));
  }

  private setState(state: SimBoardState): void {
    if (state === this.currentState) return;
    this.o.log.debug('sim board state', { board: this.o.name, from: this.currentState, to: state });
    this.currentState = state;
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      if (this.waiters[i]!.state === state) this.waiters.splice(i, 1)[0]!.resolve();
    }
  }

  /**
   * Power-cycle: abort whatever runs, start stage 1 again (returns once restarted, the run
   * continues in the background).
   */
  async reset(): Promise<void> {
    if (this.closed) throw new Error(`sim board ${this.o.name} is closed`);
    await this.stop();
    this.o.log.info('sim board power-cycled', { board: this.o.name });
    const abort = new AbortController();
    this.writesSincePowerOn = 0;
    this.run = { abort, done: this.powerOn(abort.signal) };
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.stop();
    this.setState('off');
    const card = this.card ?? (await this.cardOpening?.catch(() => undefined));
    this.card = undefined;
    this.cardOpening = undefined;
    await card?.close();
  }

  private async stop(): Promise<void> {
    const run = this.run;
    this.run = undefined;
    if (run) {
      run.abort.abort();
      await run.done;
    }
    await this.shutdownOs();
  }

  private async powerOn(signal: AbortSignal): Promise<void> {
    for (;;) {
      this.boots++;
      try {
        await this.bootUBoot(signal);
        return;
      } catch (err) {
        if (signal.aborted || err instanceof ShellAborted) return;
        if (err instanceof BoardResetRequest) {
          this.o.log.info('sim board resets itself', { board: this.o.name });
          continue;
        }
        this.o.log.error('sim board crashed', { board: this.o.name, error: (err as Error).message });
        this.setState('uboot');
        return;
      }
    }
  }

  private async bootUBoot(signal: AbortSignal): Promise<void> {
    this.setState('uboot');
    const shell = new UBootShell({
      memory: new SparseMemory(this.o.ramSize ?? 2 ** 30),
      env: { ...PI_ENV, ethaddr: normalizeMac(this.o.mac), ipaddr: this.o.ip },
      tftp: (path, opts) => this.download(path, opts, signal),
      mmc: new Map([[0, this.mmcDevice(signal)]]),
      crcStore: this.faults.crcBe32 ? 'be32' : 'native64',
      unzip: !this.faults.noUnzip,
      print: (line) => {
        if (line) this.o.log.debug(`console: ${line}`, { board: this.o.name });
      },
      signal,
    });
    if (this.faults.noShow) {
      this.o.log.info('sim board stays in U-Boot (fault no-show)', { board: this.o.name });
      return;
    }
    if ((await shell.runCommand(STAGE1_FETCH)) === 0) {
      this.setState('flashing');
      const rc = await shell.runCommand('source ${scriptaddr}');
      this.o.log.warn('flash script ended without reset; board stays in U-Boot', { board: this.o.name, status: rc });
      this.setState('uboot');
      return;
    }
    await this.bootInstalledOs(signal);
  }

  private async bootInstalledOs(signal: AbortSignal): Promise<void> {
    const mbr = Buffer.alloc(512);
    await (await this.cardFile()).read(mbr, 0, 512, 0);
    if (signal.aborted) return;
    if (mbr[510] !== 0x55 || mbr[511] !== 0xaa) {
      this.o.log.info('no bootable system on the card; board stays in U-Boot', { board: this.o.name });
      return;
    }
    if (this.faults.noBoot) {
      this.o.log.info('installed system does not come up (fault no-boot)', { board: this.o.name });
      return;
    }
    const server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => socket.destroy());
      socket.end('SSH-2.0-rpi-flash-sim\r\n');
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: this.o.ip, port: this.o.bootPort }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      this.o.log.error('booted system cannot listen', {
        board: this.o.name,
        address: `${this.o.ip}:${this.o.bootPort}`,
        error: (err as Error).message,
      });
      return;
    }
    if (signal.aborted) {
      server.close();
      return;
    }
    this.server = server;
    this.setState('booted');
    this.o.log.info('sim board booted the installed system', {
      board: this.o.name,
      address: `${this.o.ip}:${this.o.bootPort}`,
    });
  }

  private async shutdownOs(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** TFTP through the injected fetch, with the download faults applied. */
  private async download(
    path: string,
    opts: { blksize: number; windowsize: number },
    signal: AbortSignal,
  ): Promise<Buffer | null> {
    const data = await raceAbort(this.o.fetch(path, opts), signal);
    const part = /\/part-(\d+)(\.gz)?$/.exec(path);
    if (!data || !part || data.length === 0) return data;
    const n = Number(part[1]);
    const once = this.faults.corruptOnce.has(n) && !this.corrupted.has(n);
    if (!once && !this.faults.corruptAlways.has(n)) return data;
    this.corrupted.add(n);
    const copy = Buffer.from(data);
    copy[copy.length >> 1]! ^= 0xff;
    this.o.log.info('sim board corrupts a download (fault)', { board: this.o.name, path });
    return copy;
  }

  private mmcDevice(signal: AbortSignal): MmcDevice {
    return {
      blockCount: this.o.cardSize / 512,
      read: async (block, count) => {
        if (this.faults.failRead) return Buffer.alloc(0);
        const out = Buffer.alloc(count * 512);
        await (await this.cardFile()).read(out, 0, out.length, block * 512);
        return out;
      },
      write: async (block, data) => {
        if (signal.aborted) throw new ShellAborted();
        const nth = ++this.writesSincePowerOn;
        if (this.faults.failWrite === true || this.faults.failWrite === nth) return 0;
        let stored = data;
        if (this.faults.bitrotWrite.has(nth)) {
          stored = Buffer.from(data);
          stored[0]! ^= 0x01;
        }
        await (await this.cardFile()).write(stored, 0, stored.length, block * 512);
        if (this.faults.cardWriteRate)
          await sleep((data.length / this.faults.cardWriteRate) * 1000, undefined, { signal }).catch(() => {
            throw new ShellAborted();
          });
        return data.length / 512;
      },
    };
  }

  private cardFile(): Promise<FileHandle> {
    if (this.card) return Promise.resolve(this.card);
    this.cardOpening ??= (async () => {
      let fh: FileHandle;
      try {
        fh = await open(this.o.cardPath, 'r+');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        fh = await open(this.o.cardPath, 'w+');
      }
      const { size } = await fh.stat();
      if (size < this.o.cardSize) await fh.truncate(this.o.cardSize); // sparse: no blocks allocated
      this.card = fh;
      return fh;
    })();
    return this.cardOpening;
  }
}

function raceAbort<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new ShellAborted());
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new ShellAborted());
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
