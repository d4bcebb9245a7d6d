/**
 * Issue 10 item 5: a board whose DHCP address is not its targets row's IP. With tftp.checkClientIp
 * on, the agent refuses the board's request for flash.scr and logs it with the address it came
 * from; the job, which would have ended as BOARD_NO_SHOW, fails with BOARD_IP_MISMATCH naming that
 * address. Run on the real U-Boot under QEMU: its requests reach the agent from 127.0.0.1 (slirp),
 * and the row says 10.0.2.15 (the address the guest itself holds).
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runAgentScenario } from './agent-scenario.js';
import { qemuTestGate, useQemuWorkspace } from './test-uboot.js';

const gate = await qemuTestGate('a board asking from an address its row does not have');

const SD_SIZE = 4 * 1024 * 1024;
const SD_FILL = 0x5a;
const BOARD_SHOW_S = 8;

describe.skipIf(!gate.run)(gate.title, () => {
  const qemu = useQemuWorkspace(gate, { prefix: 'rpi-flash-qemu-ip-' });

  it('is refused, logged with its address, and the job fails with BOARD_IP_MISMATCH', async () => {
    const imageFile = join(qemu.workDir, 'image.raw');
    await writeFile(imageFile, randomBytes(256 * 1024));
    const r = await runAgentScenario({
      ubootBin: qemu.ubootBin,
      workDir: qemu.workDir,
      mac: '52:54:00:ab:cd:10',
      imageFile,
      sdSize: SD_SIZE,
      sdFill: SD_FILL,
      targetIp: '10.0.2.15',
      timeouts: { boardShow: BOARD_SHOW_S },
      timeoutMs: 60_000,
    });
    expect(r.result.code).toBe('BOARD_IP_MISMATCH');
    expect(r.result.message).toContain('requests for it came from 127.0.0.1');
    expect(r.result.message).toContain('10.0.2.15');
    expect(r.jobLog.some((l) => /flash\.scr came from 127\.0\.0\.1, not qemu-pi's 10\.0\.2\.15: refused/.test(l))).toBe(
      true,
    );
    const agentLog = await readFile(r.agentLog, 'utf8');
    expect(agentLog).toMatch(/tftp request for another target's folder refused.*127\.0\.0\.1/);
    // U-Boot was told so, found no job, and wrote nothing.
    expect(await readFile(r.consoleLog, 'latin1')).toMatch(
      /TFTP error: '52-54-00-ab-cd-10 is not served to 127\.0\.0\.1' \(2\)/,
    );
    expect((await readFile(r.sdImage)).every((b) => b === SD_FILL)).toBe(true);
    expect(r.tftpLeftovers).toEqual([]);
  });
});
