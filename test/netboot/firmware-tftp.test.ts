/**
 * The board's own firmware booting from the network (DESIGN §8), as the TFTP server sees it: the
 * boot ROM's sequence scripted over real UDP against files served straight out of a FAT boot
 * partition that Debian's mkfs.vfat and mtools built, for each way the firmware names its folder.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { macDir } from '../../src/protocol/tftp-names.js';
import { CodedError } from '../../src/protocol/errors.js';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import {
  BootPartition,
  EEPROM_BLKSIZE,
  firmwareBlksize,
  firmwareFiles,
  ROM_BLKSIZE,
} from '../../runner-agent/src/netboot/boot-folder.js';
import {
  BoardFiles,
  firmwareWrapping,
  type FirmwareRequest,
  type StagedJob,
} from '../../runner-agent/src/staging/board-files.js';
import { ImageView } from '../../runner-agent/src/staging/image-view.js';
import { parseTargets, TargetsError, type Target } from '../../runner-agent/src/targets/database.js';
import { tftpGet, tftpGetWithInfo } from '../../runner-agent/src/tftp/client.js';
import { encodeAck, encodeError, encodeRequest, Opcode, TftpErrorCode } from '../../runner-agent/src/tftp/packets.js';
import { TftpServer, type TransferEnd } from '../../runner-agent/src/tftp/server.js';
import { buildTestImage, fsckBoot, mtoolsRead, type TestImage } from '../image/build-image.js';
import { RawPeer } from '../tftp/helpers.js';

const run = promisify(execFile);
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
const STRANGER = '127.0.0.2';
const CONFIG = Buffer.from('# from the image\narm_64bit=1\nenable_uart=1\n');
const VIRTUAL_CONFIG = Buffer.from('# served, not in the image\narm_64bit=1\nenable_uart=1\ninitramfs initrd.img\n');

let dir: string;
let image: TestImage;
let boot: BootPartition;
let view: ImageView;

/**
 * A file whose clusters are not contiguous: `gap.bin` is deleted and FSInfo's next-free hint
 * forgotten (0xFFFFFFFF, "unknown", as the FAT spec allows), so mtools fills the gap first and
 * goes on after the files that follow it.
 */
async function writeFragmented(img: TestImage, name: string, data: Buffer): Promise<void> {
  const at = `${img.path}@@${img.bootOffset}`;
  await run('mdel', ['-i', at, '::/gap.bin'], { env: MTOOLS_ENV });
  const fh = await open(img.path, 'r+');
  try {
    const bs = Buffer.alloc(512);
    await fh.read(bs, 0, 512, img.bootOffset);
    const fsInfo = bs.readUInt16LE(48);
    await fh.write(Buffer.from([0xff, 0xff, 0xff, 0xff]), 0, 4, img.bootOffset + fsInfo * 512 + 492);
  } finally {
    await fh.close();
  }
  const local = path.join(dir, name);
  await writeFile(local, data);
  await run('mcopy', ['-o', '-i', at, local, `::/${name}`], { env: MTOOLS_ENV });
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-firmware-tftp-'));
  // 512-byte clusters: every file spans many, and the fragmented one breaks between two of them.
  image = await buildTestImage(dir, 'netboot.img', {
    fat: 32,
    bootMiB: 48,
    rootMiB: 1,
    sectorsPerCluster: 1,
    files: {
      'bootcode.bin': randomBytes(52_123),
      'gap.bin': randomBytes(40_000),
      'start.elf': randomBytes(301_001),
      'fixup.dat': randomBytes(7_265),
      'config.txt': CONFIG,
      'cmdline.txt': 'console=serial0,115200 root=/dev/mmcblk0p2 rootwait\n',
      'overlays/vc4-kms-v3d.dtbo': randomBytes(3_073),
      'overlays/README': 'overlays live here\n',
    },
  });
  // 1.2 MB: over 65535 blocks of 16 bytes, so the wrap test below crosses block number 0 too.
  await writeFragmented(image, 'kernel8.img', randomBytes(1_200_017));
  expect((await fsckBoot(image)).clean).toBe(true);
  view = new ImageView(image.path, image.size);
  boot = await BootPartition.read(view);
}, 120_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function target(netboot: string, o: { ip?: string; serial?: string; model?: string } = {}): Target {
  const csv =
    'name,mac,ip,reset,model,serial,netboot\n' +
    `pi,dc:a6:32:01:36:c2,${o.ip ?? '127.0.0.1'},sim,${o.model ?? ''},${o.serial ?? ''},${netboot}\n`;
  return parseTargets(csv, 'lab.csv')[0]!;
}

/** A TFTP server over BoardFiles, as agent.ts wires them, with what it logged and reported. */
async function startServer(o: { retries?: number } = {}) {
  const logs: LogRecord[] = [];
  const log = createLogger({ level: 'debug', sink: (r) => logs.push(r) });
  const files = new BoardFiles({ root: path.join(dir, 'tftp'), log, checkClientIp: true });
  await files.removeLeftovers();
  const ends: TransferEnd[] = [];
  const server = new TftpServer({
    address: '127.0.0.1',
    port: 0,
    resolver: files,
    log,
    timeoutMs: 200,
    retries: o.retries ?? 2,
    onTransferEnd: (t) => {
      ends.push(t);
      files.transferEnded(t);
    },
    onProgress: (p) => files.transferProgress(p),
  });
  const { port } = await server.listen();
  return { files, server, port, logs, ends };
}

/** Waits for a condition the test cannot await directly; a hang guard, not a timing assertion. */
async function until(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** What the staged job's firmware hooks heard. */
function recorder() {
  const requests: FirmwareRequest[] = [];
  const ended: { name: string; ok: boolean; probe: boolean }[] = [];
  return {
    requests,
    ended,
    hooks: {
      onRequest: (r: FirmwareRequest) => requests.push(r),
      onTransferEnd: (name: string, t: TransferEnd, probe: boolean) => ended.push({ name, ok: t.ok, probe }),
    },
  };
}

function job(t: Target, firmware: StagedJob['firmware'], extra: Partial<StagedJob> = {}): StagedJob {
  return {
    jobId: 'job0001',
    targetIp: t.ip,
    files: new Map([['flash.scr', { kind: 'buffer', data: Buffer.from('the macdir file') }]]),
    onRead: () => {},
    onProgress: () => {},
    onBeacon: () => {},
    ...(firmware ? { firmware } : {}),
    ...extra,
  };
}

/**
 * The ROM's `<folder>/start.elf` probe: one block comes, then the ROM sends an ERROR or simply
 * goes away. Resolves to the block it got.
 */
async function probe(port: number, name: string, end: 'error' | 'silence'): Promise<Buffer> {
  const peer = await RawPeer.open('127.0.0.1');
  try {
    peer.send(encodeRequest(Opcode.RRQ, name, 'octet', {}), port);
    const first = await peer.next();
    if (first.packet.op !== Opcode.DATA) throw new Error(`expected DATA 1, got opcode ${first.packet.op}`);
    expect(first.packet.block).toBe(1);
    if (end === 'error') peer.send(encodeError(TftpErrorCode.NOT_DEFINED, 'probe done'), first.port);
    return first.packet.data;
  } finally {
    await peer.close();
  }
}

describe('the boot partition read out of the stored image', () => {
  it('lists every file, subfolders included, as the byte ranges mtools reads, one fragmented', async () => {
    expect(boot.partition).toMatchObject({ index: 1, offset: image.bootOffset, fat: 'FAT32' });
    expect([...boot.files.keys()].sort()).toEqual([
      'bootcode.bin',
      'cmdline.txt',
      'config.txt',
      'fixup.dat',
      'kernel8.img',
      'overlays/readme',
      'overlays/vc4-kms-v3d.dtbo',
      'start.elf',
    ]);
    // The gap left by gap.bin comes first, then the rest after start.elf and the others.
    const kernel = boot.get('KERNEL8.IMG')!;
    expect(kernel.extents.length).toBeGreaterThan(1);
    expect(boot.get('start.elf')!.extents).toHaveLength(1);
    for (const file of boot.files.values())
      expect(
        (await boot.readFile(file.path, 1 << 30))!.equals(await mtoolsRead(image.path, image.bootOffset, file.path)),
      ).toBe(true);
    expect(await boot.readText('Config.TXT')).toBe(CONFIG.toString());
    // Names that leave the partition, or are not there, name nothing.
    for (const name of ['../config.txt', 'overlays/../config.txt', './config.txt/..', 'nothing.bin', ''])
      expect(boot.get(name)).toBeUndefined();
  });

  it.each([12, 16] as const)('reads a FAT%i boot partition too', async (fat) => {
    const small = await buildTestImage(dir, `fat${fat}.img`, {
      fat,
      bootMiB: 8,
      rootMiB: 0,
      ...(fat === 16 ? { sectorsPerCluster: 1 } : {}),
      files: { 'bootcode.bin': randomBytes(20_000), 'overlays/a.dtbo': randomBytes(2_000) },
    });
    const part = await BootPartition.read(new ImageView(small.path, small.size));
    expect(part.partition.fat).toBe(`FAT${fat}`);
    for (const name of ['bootcode.bin', 'overlays/a.dtbo'])
      expect((await part.readFile(name, 1 << 20))!.equals(await mtoolsRead(small.path, small.bootOffset, name))).toBe(
        true,
      );
  });
});

describe.each([
  { mode: 'serial', netboot: 'serial', serial: '10000000B1C2D3E4', model: 'pi3', folder: 'b1c2d3e4' },
  { mode: 'mac', netboot: 'mac', serial: '', model: 'pi4', folder: 'dc-a6-32-01-36-c2' },
  { mode: 'string', netboot: 'prefix:lab/pi4-07/', serial: '', model: 'pi4', folder: 'lab/pi4-07' },
])('the boot ROM sequence, $mode prefix', ({ netboot, serial, model, folder }) => {
  it("bootcode.bin at the root, no bootsig.bin, a start.elf probe, then the folder's files, byte-exact", async () => {
    const t = target(netboot, { serial, model });
    expect(t.netboot?.folder).toBe(folder);
    const { files, server, port, logs } = await startServer();
    const seen = recorder();
    const firmware = firmwareFiles(t, boot, { overrides: { 'config.txt': VIRTUAL_CONFIG } });
    expect(firmware.blksize).toBe(model === 'pi4' ? EEPROM_BLKSIZE : ROM_BLKSIZE);
    await files.stage(macDir(t.mac), job(t, { ...firmware, ...seen.hooks }), { 'flash.scr': Buffer.from('x') });
    const get = (name: string, o: { blksize?: number; tsize?: boolean } = {}) =>
      tftpGet({ host: '127.0.0.1', port, path: name, localAddress: '127.0.0.1', ...o });
    const fat = (name: string) => mtoolsRead(image.path, image.bootOffset, name);
    // The EEPROM asks for its block size and the size; the ROM asks for nothing.
    const eeprom = model === 'pi4' ? { blksize: EEPROM_BLKSIZE, tsize: true } : {};
    try {
      expect((await get('bootcode.bin'))!.equals(await fat('bootcode.bin'))).toBe(true);
      expect(await get('bootsig.bin')).toBeNull();

      const block = await probe(port, `${folder}/start.elf`, 'error');
      expect(block.equals((await fat('start.elf')).subarray(0, 512))).toBe(true);
      await until('the probe to end', () => seen.ended.some((e) => e.name === 'start.elf'));
      expect(seen.ended).toEqual([
        { name: 'bootcode.bin', ok: true, probe: false },
        { name: 'start.elf', ok: false, probe: true },
      ]);
      expect(logs.some((l) => l.level === 'info' && /as the boot ROM probes a folder/.test(l.msg))).toBe(true);

      for (const name of ['start.elf', 'fixup.dat', 'kernel8.img', 'cmdline.txt'])
        expect((await get(`${folder}/${name}`, eeprom))!.equals(await fat(name))).toBe(true);
      // Any case, as FAT: the subfolder's files too.
      expect(
        (await get(`${folder}/Overlays/VC4-KMS-V3D.dtbo`, eeprom))!.equals(await fat('overlays/vc4-kms-v3d.dtbo')),
      ).toBe(true);
      // config.txt is the job's, laid over the partition's; the image keeps its own.
      expect((await get(`${folder}/config.txt`, eeprom))!.equals(VIRTUAL_CONFIG)).toBe(true);
      expect((await fat('config.txt')).equals(CONFIG)).toBe(true);
      // Names the firmware tries and the partition lacks: not found, normal.
      expect(await get(`${folder}/recovery.elf`)).toBeNull();
      expect(await get(`${folder}/bootsig.bin`)).toBeNull();
      // Root names are the listed ones only; a folder file is no root file.
      expect(await get('start.elf')).toBeNull();
      await expect(get(`${folder}/../bootcode.bin`)).rejects.toMatchObject({ code: TftpErrorCode.ACCESS_VIOLATION });

      // The job's own macdir file is still there beside the firmware's.
      expect((await get(`${macDir(t.mac)}/flash.scr`))!.toString()).toBe('the macdir file');

      expect(seen.requests.filter((r) => r.atRoot)).toEqual([
        { name: 'bootcode.bin', atRoot: true, found: true },
        { name: 'bootsig.bin', atRoot: true, found: false },
        { name: 'start.elf', atRoot: true, found: false },
      ]);
      expect(seen.requests.filter((r) => !r.found && !r.atRoot).map((r) => r.name)).toEqual([
        'recovery.elf',
        'bootsig.bin',
      ]);
    } finally {
      await files.unstage(macDir(t.mac));
      await server.close();
    }
  });

  it('serves nothing to another address: root names not found (logged), the folder refused', async () => {
    const t = target(netboot, { serial, model });
    const { files, server, port, logs } = await startServer();
    const seen = recorder();
    await files.stage(macDir(t.mac), job(t, { ...firmwareFiles(t, boot), ...seen.hooks }), {});
    const from = (address: string, name: string) =>
      tftpGet({ host: '127.0.0.1', port, path: name, localAddress: address });
    try {
      expect(await from(STRANGER, 'bootcode.bin')).toBeNull();
      expect(
        logs.some(
          (l) =>
            l.level === 'warn' &&
            /at the root from an address no network-boot job/.test(l.msg) &&
            l.fields.peer === STRANGER,
        ),
      ).toBe(true);
      await expect(from(STRANGER, `${folder}/start.elf`)).rejects.toMatchObject({
        code: TftpErrorCode.ACCESS_VIOLATION,
      });
      expect(seen.requests).toEqual([]);
      // The target itself still gets them.
      expect(await from('127.0.0.1', `${folder}/fixup.dat`)).not.toBeNull();
    } finally {
      await files.unstage(macDir(t.mac));
      await server.close();
    }
  });
});

describe('firmware transfers', () => {
  it('a probe that just stops ACKing is a probe too, not a failure', async () => {
    const t = target('serial', { serial: 'b1c2d3e4' });
    const { files, server, port, logs, ends } = await startServer();
    const seen = recorder();
    await files.stage(macDir(t.mac), job(t, { ...firmwareFiles(t, boot), ...seen.hooks }), {});
    try {
      await probe(port, 'b1c2d3e4/start.elf', 'silence');
      await until('the silent probe to end', () => seen.ended.length > 0);
      expect(seen.ended).toEqual([{ name: 'start.elf', ok: false, probe: true }]);
      expect(logs.filter((l) => l.level === 'error')).toEqual([]);
      // What the TFTP server's own log could ask to tell a probe from a failure.
      expect(
        await tftpGet({ host: '127.0.0.1', port, path: 'bootcode.bin', localAddress: '127.0.0.1' }),
      ).not.toBeNull();
      await until('both transfers to end', () => ends.length === 2);
      expect(ends.map((e) => [e.path, files.isFirmwareProbe(e)])).toEqual([
        ['b1c2d3e4/start.elf', true],
        ['bootcode.bin', false],
      ]);
    } finally {
      await files.unstage(macDir(t.mac));
      await server.close();
    }
  });

  it('a client that gives up after more than one block is no probe', async () => {
    const t = target('serial', { serial: 'b1c2d3e4' });
    const { files, server, port } = await startServer();
    const seen = recorder();
    await files.stage(macDir(t.mac), job(t, { ...firmwareFiles(t, boot), ...seen.hooks }), {});
    const peer = await RawPeer.open('127.0.0.1');
    try {
      peer.send(encodeRequest(Opcode.RRQ, 'b1c2d3e4/kernel8.img', 'octet', {}), port);
      for (let block = 1; block <= 3; block++) {
        const got = await peer.next();
        expect(got.packet).toMatchObject({ op: Opcode.DATA, block });
        peer.send(block < 3 ? encodeAck(block) : encodeError(TftpErrorCode.NOT_DEFINED, 'gave up'), got.port);
      }
      await until('the transfer to end', () => seen.ended.length > 0);
      expect(seen.ended).toEqual([{ name: 'kernel8.img', ok: false, probe: false }]);
    } finally {
      await peer.close();
      await files.unstage(macDir(t.mac));
      await server.close();
    }
  });

  it('wraps block numbers past 65535 through a fragmented file, for a client that follows', async () => {
    const t = target('mac');
    const { files, server, port, logs } = await startServer();
    // The firmware's block size as staged decides the warning: 16 bytes makes kernel8.img wrap.
    const firmware = { ...firmwareFiles(t, boot), blksize: 16 };
    await files.stage(macDir(t.mac), job(t, firmware), {});
    try {
      const got = await tftpGetWithInfo({
        host: '127.0.0.1',
        port,
        path: `${macDir(t.mac)}/kernel8.img`,
        localAddress: '127.0.0.1',
        blksize: 16,
        windowsize: 16,
      });
      expect(got!.blksize).toBe(16);
      expect(got!.data.length / 16).toBeGreaterThan(65536);
      expect(got!.data.equals(await mtoolsRead(image.path, image.bootOffset, 'kernel8.img'))).toBe(true);
      const warned = logs.filter((l) => l.level === 'warn' && /more than 65535 TFTP blocks/.test(l.msg));
      expect(warned.map((l) => l.fields.file)).toEqual(['dc-a6-32-01-36-c2/kernel8.img']);
      expect(warned[0]!.msg).toMatch(/EEPROMs before 2025-09-23/);
    } finally {
      await files.unstage(macDir(t.mac));
      await server.close();
    }
  });

  it('warns from 65536 blocks at the firmware block size on (512 for the ROM, 1468 for the EEPROM)', () => {
    const sparse = new ImageView(image.path, image.size);
    const at = (size: number, blksize: number) =>
      firmwareWrapping({
        folder: 'x',
        blksize,
        files: new Map([['initrd.img', { kind: 'range', view: sparse, offset: 0, size }]]),
      }).map((w) => w.blocks);
    // A transfer ends with a short block: an empty one when the size is a multiple of blksize.
    expect(at(65535 * 512 - 1, ROM_BLKSIZE)).toEqual([]);
    expect(at(65535 * 512, ROM_BLKSIZE)).toEqual([65536]);
    expect(at(65535 * 512, EEPROM_BLKSIZE)).toEqual([]);
    expect(at(65535 * 1468, EEPROM_BLKSIZE)).toEqual([65536]);
    expect(firmwareBlksize('pi4')).toBe(EEPROM_BLKSIZE);
    expect(firmwareBlksize('pi3')).toBe(ROM_BLKSIZE);
    expect(firmwareBlksize('a board the agent does not know')).toBe(ROM_BLKSIZE);
    expect(firmwareBlksize(undefined)).toBe(ROM_BLKSIZE);
  });

  it('keeps one target address to one firmware job, and folders apart', async () => {
    const a = target('mac');
    const files = new BoardFiles({
      root: path.join(dir, 'tftp-conflicts'),
      log: createLogger({ sink: () => {} }),
      checkClientIp: true,
    });
    await files.stage(macDir(a.mac), job(a, firmwareFiles(a, boot)), {});
    const b = parseTargets(
      'name,mac,ip,reset,netboot\nb,b8:27:eb:00:00:02,127.0.0.1,sim,prefix:other\n',
      'lab.csv',
    )[0]!;
    await expect(files.stage(macDir(b.mac), job(b, firmwareFiles(b, boot)), {})).rejects.toThrow(
      /already offers firmware files to 127\.0\.0\.1/,
    );
    const c = parseTargets(
      `name,mac,ip,reset,netboot\nc,b8:27:eb:00:00:03,127.0.0.9,sim,prefix:${macDir(a.mac)}\n`,
      'lab.csv',
    )[0]!;
    await expect(files.stage(macDir(c.mac), job(c, firmwareFiles(c, boot)), {})).rejects.toThrow(
      /overlaps the staged files of dc-a6-32-01-36-c2/,
    );
    await files.unstage(macDir(a.mac));
  });
});

describe('a network-boot target that does not say where its firmware looks', () => {
  it('is NETBOOT_TARGET_INCOMPLETE from the function that builds the folder', () => {
    const none = target('');
    expect(() => firmwareFiles(none, boot)).toThrow(CodedError);
    expect(() => firmwareFiles(none, boot)).toThrow(
      expect.objectContaining({
        code: 'NETBOOT_TARGET_INCOMPLETE',
        message: expect.stringMatching(/target pi has no netboot column \(lab\.csv:2\)/) as string,
      }) as Error,
    );
    // The Pi 3 ROM knows no TFTP_PREFIX: a MAC or string folder is an EEPROM setting.
    expect(() => firmwareFiles(target('mac', { model: 'pi3' }), boot)).toThrow(
      expect.objectContaining({
        code: 'NETBOOT_TARGET_INCOMPLETE',
        message: expect.stringMatching(/boot ROM names its folder by the serial only/) as string,
      }) as Error,
    );
  });

  it('is a database error naming the row when the serial prefix has no serial', () => {
    expect(() => target('serial')).toThrow(TargetsError);
    expect(() => target('serial')).toThrow(/lab\.csv:2: bad netboot: netboot "serial" needs the serial column/);
  });

  it('leaves the agent serving nothing at the root to anyone', async () => {
    const { files, server, port } = await startServer();
    const t = target('');
    // A job without firmware files (a card-flashing layout): its macdir only.
    await files.stage(macDir(t.mac), job(t, undefined), {});
    try {
      expect(await tftpGet({ host: '127.0.0.1', port, path: 'bootcode.bin', localAddress: '127.0.0.1' })).toBeNull();
      expect(
        (await tftpGet({
          host: '127.0.0.1',
          port,
          path: `${macDir(t.mac)}/flash.scr`,
          localAddress: '127.0.0.1',
        }))!.toString(),
      ).toBe('the macdir file');
    } finally {
      await files.unstage(macDir(t.mac));
      await server.close();
    }
  });
});
