/**
 * A board's report counts only when the board earned it (issue 9, item 3). The simulated board
 * stays silent (`sim:no-show`); a forger on loopback plays it: from another address it gets
 * nothing, and from the board's own address — the strongest local forger, who can read flash.scr
 * and so the job's secret — a success it did not earn (a part not downloaded in full, out of
 * order, or done before the parts) fails the job with REPORT_REJECTED instead of passing it.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentMessage, JobResult } from '../../src/protocol/messages.js';
import { FLASH_SCRIPT, macDir, partFile } from '../../src/protocol/tftp-names.js';
import { parseScriptImage } from '../../runner-agent/src/board/uimage.js';
import { tftpGet } from '../../runner-agent/src/tftp/client.js';
import { startLab, type Lab } from '../support/lab.js';

const MiB = 1024 * 1024;
const MAC = '02:00:00:00:0f:01';
let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

interface Forger {
  /** The board's address, as the targets database has it. */
  ip: string;
  get(file: string, from?: string): Promise<Buffer | null>;
}

/** Starts a job on a silent board; resolves once its flash.scr is staged, with the job's result to come. */
async function silentBoardJob(boardShow = 20): Promise<{ forger: Forger; jobId: string; result: Promise<JobResult> }> {
  lab = await startLab({
    boards: [{ name: 'pi-f', mac: MAC, reset: 'sim:no-show' }],
    config: { timeouts: { boardShow, stall: 20, boot: 5, leaseGrace: 2, shutdown: 5 } },
  });
  const l = lab;
  let staged: (job: string) => void;
  const jobStaged = new Promise<string>((resolve) => (staged = resolve));
  const conn = await l.connect((m: AgentMessage) => {
    if (m.type === 'phase' && m.phase === 'reset' && m.state === 'start') staged(m.job);
  });
  const img = await l.image('f.img', 2 * MiB, 7);
  await conn.lease('pi-f', { holder: 'forger-test' });
  await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
  const result = conn.flash({ sha256: img.sha256 });
  const jobId = await jobStaged;
  const ip = l.agent.targets().find((t) => t.name === 'pi-f')!.ip;
  const { address, port } = l.agent.tftp;
  const forger: Forger = {
    ip,
    get: (file, from = ip) => tftpGet({ host: address, port, path: file, localAddress: from, retries: 2 }),
  };
  return { forger, jobId, result };
}

/** What only the board's flash.scr tells: the prefix of every report name, secret included. */
async function reportPrefixFrom(forger: Forger): Promise<string> {
  const scr = await forger.get(`${macDir(MAC)}/${FLASH_SCRIPT}`);
  expect(scr).not.toBeNull();
  const prefix = /^setenv rpf_rep (\S+)$/m.exec(parseScriptImage(scr!).script)?.[1];
  expect(prefix).toMatch(new RegExp(`^${macDir(MAC)}/[a-z0-9]+/[0-9a-f]{16}/$`));
  return prefix!;
}

describe('reports a board did not earn', () => {
  it('another address gets neither the script nor the report names, and cannot end the job', async () => {
    const { forger, jobId, result } = await silentBoardJob(3);
    // The staged folder on disk is the agent's alone: its flash.scr holds the secret.
    const dir = path.join(lab!.agent.config.tftp.root, macDir(MAC));
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(dir, FLASH_SCRIPT))).mode & 0o777).toBe(0o600);
    await expect(forger.get(`${macDir(MAC)}/${FLASH_SCRIPT}`, '127.0.0.1')).rejects.toMatchObject({ code: 2 });
    // The old report names (no secret) are no reports, even from the board's own address.
    expect(await forger.get(`${macDir(MAC)}/${jobId}/report/done-ok`)).toBeNull();
    expect(await forger.get(`${macDir(MAC)}/${jobId}/0123456789abcdef/done-ok`)).toBeNull();
    // Nothing above ended the job early: it ends when the board's time to show up runs out, naming
    // the address that asked instead of the board (the agent cannot tell a misaddressed board from
    // another host).
    const r = await result;
    expect(r).toMatchObject({ ok: false, code: 'BOARD_IP_MISMATCH' });
    expect(r.message).toContain('127.0.0.1');
  });

  it('a part reported written that was never downloaded fails the job with REPORT_REJECTED', async () => {
    const { forger, result } = await silentBoardJob();
    const prefix = await reportPrefixFrom(forger);
    await forger.get(`${prefix}start`);
    await forger.get(`${prefix}part-1-ok-1234abcd`);
    const r = await result;
    expect(r).toMatchObject({ ok: false, code: 'REPORT_REJECTED', bytesWritten: 0 });
    expect(r.message).toMatch(/part 1 written, but acknowledged only 0 of its 1048576 bytes/);
    expect(await lab!.tftpFolders()).toEqual([]);
  });

  it('a part reported before the parts in front of it fails the job, even when it was downloaded', async () => {
    const { forger, jobId, result } = await silentBoardJob();
    const prefix = await reportPrefixFrom(forger);
    const part2 = await forger.get(partFile(MAC, jobId, 2));
    expect(part2?.length).toBe(MiB);
    await forger.get(`${prefix}part-2-ok-1234abcd`);
    const r = await result;
    expect(r).toMatchObject({ ok: false, code: 'REPORT_REJECTED' });
    expect(r.message).toMatch(/reported part 2 before part 1 \(out of order\)/);
  });

  it('done-ok before every part was reported written fails the job with REPORT_REJECTED', async () => {
    const { forger, result } = await silentBoardJob();
    const prefix = await reportPrefixFrom(forger);
    await forger.get(`${prefix}done-ok`);
    const r = await result;
    expect(r).toMatchObject({ ok: false, code: 'REPORT_REJECTED' });
    expect(r.message).toMatch(/done-ok before part 1\/2 was reported written/);
  });

  it('the secret never reaches the job log streamed to the client', async () => {
    const { forger, result } = await silentBoardJob();
    const prefix = await reportPrefixFrom(forger);
    const secret = prefix.split('/')[2]!;
    await forger.get(`${prefix}done-ok`);
    await result;
    const logged = lab!.logs.map((r) => JSON.stringify(r)).join('\n');
    expect(logged).not.toContain(secret);
  });
});
