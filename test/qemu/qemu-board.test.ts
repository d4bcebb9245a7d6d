/**
 * The QEMU board harness itself: environment, QMP reset (the RUN line's stand-in), the hard
 * timeout, and that no QEMU outlives its board.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  boardEnvironment,
  qmpCommand,
  startQemuBoard,
  withConsoleOnFailure,
  type QemuBoardOptions,
} from './qemu-board.js';
import { qemuTestGate, useQemuWorkspace } from './test-uboot.js';

const gate = await qemuTestGate('QEMU board harness');

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('boardEnvironment', () => {
  it('sets everything the pflash env must carry and puts the SD probe before the boot command', () => {
    const env = boardEnvironment({ tftpPort: 40123, bootcmd: 'echo hi', env: { tftpwindowsize: '8' } });
    expect(env).toMatchObject({
      bootdelay: '0',
      ipaddr: '10.0.2.15',
      netmask: '255.255.255.0',
      serverip: '10.0.2.2',
      tftpdstp: '40123',
      tftpwindowsize: '8',
      bootcmd: 'pci enum; mmc list; echo hi',
    });
    expect(env.loadaddr).toMatch(/^0x[0-9a-f]+$/);
  });

  it('refuses values that would split a line of the env text', () => {
    expect(() => boardEnvironment({ tftpPort: 1, env: { bad: 'a\nb' } })).toThrow(/bad contains a line break/);
    expect(() => boardEnvironment({ tftpPort: 1, env: { 'no=pe': 'x' } })).toThrow(/variable name/);
  });
});

describe.skipIf(!gate.run)(gate.title, () => {
  const qemu = useQemuWorkspace(gate, {
    prefix: 'rpi-flash-qemu-',
    prepare: (dir) => writeFile(join(dir, 'sd.img'), Buffer.alloc(1024 * 1024)),
  });

  const options = (over: Partial<QemuBoardOptions>): QemuBoardOptions => ({
    ubootBin: qemu.ubootBin,
    mac: '52:54:00:ab:cd:ef',
    tftpPort: 9,
    sdImage: join(qemu.workDir, 'sd.img'),
    timeoutMs: 30_000,
    workDir: qemu.workDir,
    ...over,
  });

  it('U-Boot sees the environment given to the board, and its MAC as ethaddr', async () => {
    const board = await startQemuBoard(
      options({
        env: { greeting: 'hello from the env' },
        bootcmd: 'echo "<${greeting}>"; echo "<${ethaddr}>"; poweroff',
      }),
    );
    await withConsoleOnFailure(board, async () => {
      expect(await board.waitForExit(30_000)).toBe(0);
      expect(board.console()).toContain('<hello from the env>');
      expect(board.console()).toContain('<52:54:00:ab:cd:ef>');
    });
  });

  it('QMP system_reset reboots U-Boot, which runs its bootcmd again', async () => {
    const board = await startQemuBoard(options({ bootcmd: 'echo BOOT-MARK' }));
    await withConsoleOnFailure(board, async () => {
      await board.waitForConsole(/BOOT-MARK[^]*=> /, 30_000);
      await qmpCommand(board.qmpSocket, 'system_reset');
      await board.waitForConsole(/BOOT-MARK[^]*BOOT-MARK/, 30_000);
      expect(board.console().match(/^U-Boot 2023\.01/gm)).toHaveLength(2);
    });
  });

  it('the hard timeout kills QEMU and waitForExit says so', async () => {
    const board = await startQemuBoard(options({ timeoutMs: 1500 }));
    await expect(board.waitForExit(20_000)).rejects.toThrow(/hard timeout \(1500 ms\)/);
    expect(board.console()).toContain('hard timeout of 1500 ms reached');
  });

  it('kill() leaves no QEMU process behind, and a second kill() is harmless', async () => {
    const board = await startQemuBoard(options({}));
    await board.waitForConsole(/=> /, 30_000);
    const pid = board.pid;
    expect(pid && processAlive(pid)).toBe(true);
    await board.kill();
    await board.kill();
    expect(processAlive(pid!)).toBe(false);
  });

  it('refuses an SD image whose size is not a power of two', async () => {
    await writeFile(join(qemu.workDir, 'odd.img'), Buffer.alloc(3 * 512));
    await expect(startQemuBoard(options({ sdImage: join(qemu.workDir, 'odd.img') }))).rejects.toThrow(
      /1536 bytes; QEMU's sd-card needs a power of two/,
    );
  });
});
