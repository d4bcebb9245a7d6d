/**
 * A real U-Boot's console through the capture: QEMU puts the board's serial port on a unix socket
 * (`-serial unix:<path>,server=on,wait=off`, what a `unix:<path>` console spec reads), the capture
 * connects, QMP `system_reset` reboots the board (the RUN line's stand-in), and U-Boot's banner,
 * a line its boot command prints and its prompt all arrive as lines.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConsoleError, openConsole, type ConsoleCapture } from '../../runner-agent/src/console/capture.js';
import { parseConsoleSpec } from '../../runner-agent/src/console/spec.js';
import { silentLogger } from '../../runner-agent/src/log.js';
import { killAllQemuBoards, qmpCommand, startQemuBoard, withConsoleOnFailure } from '../qemu/qemu-board.js';
import { BUILD_TIMEOUT_MS, qemuTestGate } from '../qemu/test-uboot.js';

const gate = await qemuTestGate('board console of a real U-Boot under QEMU');

/** QEMU creates the socket a moment after it starts: try until it accepts (or 10 s pass). */
async function openWhenReady(spec: string, lines: string[]): Promise<ConsoleCapture> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await openConsole(parseConsoleSpec(spec), {
        log: silentLogger,
        idleFlushMs: 100,
        onLine: (line) => lines.push(line),
      });
    } catch (err) {
      if (!(err instanceof ConsoleError) || Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

describe.skipIf(!gate.run)(gate.title, () => {
  let ubootBin = '';
  let workDir = '';
  let capture: ConsoleCapture | undefined;

  beforeAll(async () => {
    ubootBin = await gate.ubootBin();
  }, BUILD_TIMEOUT_MS);

  beforeEach(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-console-'));
    await writeFile(join(workDir, 'sd.img'), Buffer.alloc(1024 * 1024));
  });

  afterEach(async () => {
    await capture?.close();
    capture = undefined;
    await killAllQemuBoards();
    await rm(workDir, { recursive: true, force: true });
  });

  it(
    "U-Boot's banner, its boot command's output and its prompt arrive through unix:<socket> " + 'after a reset',
    async () => {
      const serialSocket = join(workDir, 'serial.sock');
      const board = await startQemuBoard({
        ubootBin,
        mac: '52:54:00:12:34:56',
        tftpPort: 9,
        sdImage: join(workDir, 'sd.img'),
        timeoutMs: 60_000,
        workDir,
        serialSocket,
        bootcmd: 'echo "<console check ${ethaddr}>"',
      });
      await withConsoleOnFailure(board, async () => {
        const lines: string[] = [];
        capture = await openWhenReady(`unix:${serialSocket}`, lines);
        // Output from before the connection is lost (wait=off): reset, as the agent does, and read
        // only what the board prints after it.
        const mark = capture.mark();
        await qmpCommand(board.qmpSocket, 'system_reset');
        const banner = await capture.waitFor(/^U-Boot 2023\.01/, { timeoutMs: 30_000, since: mark });
        expect(banner?.line).toMatch(/^U-Boot 2023\.01/);
        const echoed = await capture.waitFor(/^<console check 52:54:00:12:34:56>$/, { timeoutMs: 30_000, since: mark });
        expect(echoed).not.toBeNull();
        expect(echoed!.index).toBeGreaterThan(banner!.index);
        // The prompt has no line end: it becomes a line once the console is quiet.
        const prompt = await capture.waitFor(/^=> $/, { timeoutMs: 30_000, since: echoed!.index });
        expect(prompt).not.toBeNull();

        expect(lines.slice(mark)).toEqual(capture.lines(mark));
        expect(capture.text()).toContain('<console check 52:54:00:12:34:56>\r\n');
        // The serial port went to the socket, not to QEMU's stdio.
        expect(board.console()).not.toContain('U-Boot 2023.01');
      });
    },
  );
});
