/**
 * The whole job on the simulated lab: real agent, real WebSocket protocol, real TFTP, the
 * simulated board executing the generated stage-2 script into its card file.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { startLab, type Lab } from '../support/lab.js';
import { waitUntil } from '../support/wait.js';
import type { AgentMessage } from '../../src/protocol/messages.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

const MiB = 1024 * 1024;

async function card(l: Lab, name: string): Promise<Buffer> {
  return readFile(path.join(l.agent.config.stateDir, 'sim', `${name}.card`));
}

describe('a flash job on the simulated lab', () => {
  it('uploads, flashes every part, verifies, boots, reports OK and leaves no staged files', async () => {
    lab = await startLab({
      boards: [
        { name: 'pi-a', mac: '02:00:00:00:00:0a' },
        { name: 'pi-b', mac: '02:00:00:00:00:0b' },
      ],
      config: { flash: { partSize: '1MiB', retries: 2, tftpBlockSize: 1468, tftpWindowSize: 4 } },
    });
    const events: AgentMessage[] = [];
    const conn = await lab.connect((m) => events.push(m));
    const img = await lab.image('a.img', 3 * MiB + 1000, 11);
    const leased = await conn.lease('02-00-00-00-00-0a', { holder: 'test' });
    expect(leased.target.name).toBe('pi-a');
    const done = await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    expect(done).toMatchObject({ skipped: false, imageSize: img.size });
    const result = await conn.flash({ sha256: img.sha256 });
    expect(result).toMatchObject({ ok: true, code: 'OK', bytesWritten: img.size });
    expect(result.parts.map((p) => p.status)).toEqual(['ok', 'ok', 'ok', 'ok']);
    for (const phase of ['stage', 'reset', 'transfer', 'verify', 'boot'] as const)
      expect(result.timings[phase]).toBeGreaterThanOrEqual(0);
    // The card holds the image byte for byte; the other board's card was never touched.
    const written = await card(lab, 'pi-a');
    expect(written.subarray(0, img.size).equals(await readFile(img.path))).toBe(true);
    await expect(card(lab, 'pi-b')).rejects.toThrow();
    expect(await lab.tftpFolders()).toEqual([]);
    // The story: phases in order, board reports, transfer progress.
    const phases = events
      .filter((e) => e.type === 'phase' && e.state === 'start')
      .map((e) => (e as { phase: string }).phase);
    expect(phases).toEqual(['stage', 'reset', 'transfer', 'verify', 'boot']);
    expect(
      events.some(
        (e) => e.type === 'log' && e.source === 'board' && /part 4\/4: written and read back/.test(e.message),
      ),
    ).toBe(true);
    expect(events.some((e) => e.type === 'progress' && e.phase === 'transfer')).toBe(true);
    // The options the board negotiated are in the job's log and in the result.
    expect(
      events.some(
        (e) =>
          e.type === 'log' && /part 1\/4: served \d+ bytes .*negotiated .*blksize=1468.*windowsize=4/.test(e.message),
      ),
    ).toBe(true);
    expect(result.tftpOptions).toMatchObject({ blksize: '1468', windowsize: '4' });
    // Every log line of the job names its target and job.
    const jobLines = lab.logs.filter((r) => r.fields.job === result.job);
    expect(jobLines.length).toBeGreaterThan(5);
    expect(jobLines.every((r) => r.fields.target === 'pi-a')).toBe(true);
  });

  it('skips the upload when the agent already holds the image, and a gzip upload travels compressed', async () => {
    lab = await startLab({ boards: [{ name: 'pi-a', mac: '02:00:00:00:00:1a' }] });
    const { gzipSync } = await import('node:zlib');
    const img = await lab.image('b.img', 2 * MiB, 5);
    const gz = `${img.path}.gz`;
    const { writeFile } = await import('node:fs/promises');
    const { sha256File } = await import('../support/lab.js');
    await writeFile(gz, gzipSync(await readFile(img.path)));
    const gzSha = await sha256File(gz);
    const gzSize = (await readFile(gz)).length;
    const conn = await lab.connect();
    await conn.lease('pi-a');
    const first = await conn.upload({ path: gz, sha256: gzSha, size: gzSize, compression: 'gz' });
    expect(first).toMatchObject({ skipped: false, size: gzSize, imageSize: img.size });
    const again = await conn.upload({ path: gz, sha256: gzSha, size: gzSize, compression: 'gz' });
    expect(again.skipped).toBe(true);
    const result = await conn.flash({ sha256: gzSha, bootCheck: 'none' });
    expect(result.code).toBe('OK');
    expect((await card(lab, 'pi-a')).subarray(0, img.size).equals(await readFile(img.path))).toBe(true);
  });

  it('names an unknown target and keeps serving', async () => {
    lab = await startLab({ boards: [{ name: 'pi-a', mac: '02:00:00:00:00:2a' }] });
    const conn = await lab.connect();
    await expect(conn.lease('pi-zz')).rejects.toMatchObject({
      code: 'UNKNOWN_TARGET',
      message: expect.stringContaining('pi-zz') as string,
    });
    await expect(conn.lease('pi-a')).resolves.toMatchObject({ target: { name: 'pi-a' } });
  });

  it('reports BOARD_NO_SHOW when the board never fetches its script, and cleans up', async () => {
    lab = await startLab({
      boards: [{ name: 'dead', mac: '02:00:00:00:00:3a', reset: 'sim:no-show' }],
      config: { timeouts: { boardShow: 1, stall: 5, boot: 5, leaseGrace: 2 } },
    });
    const conn = await lab.connect();
    const img = await lab.image('c.img', MiB, 2);
    await conn.lease('dead');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256 });
    expect(result).toMatchObject({ ok: false, code: 'BOARD_NO_SHOW' });
    expect(result.message).toContain('did not fetch');
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it('reports BOARD_REPORTED_FAILURE when the card write fails', async () => {
    lab = await startLab({ boards: [{ name: 'bad', mac: '02:00:00:00:00:4a', reset: 'sim:fail-write' }] });
    const conn = await lab.connect();
    const img = await lab.image('d.img', 2 * MiB, 3);
    await conn.lease('bad');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256 });
    expect(result).toMatchObject({ ok: false, code: 'BOARD_REPORTED_FAILURE' });
    expect(result.message).toMatch(/part 1 failed at write/);
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it('retries a part that arrived corrupted once and passes', async () => {
    lab = await startLab({ boards: [{ name: 'flaky', mac: '02:00:00:00:00:5a', reset: 'sim:corrupt-once:2' }] });
    const conn = await lab.connect();
    const img = await lab.image('e.img', 3 * MiB, 4);
    await conn.lease('flaky');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256, bootCheck: 'none' });
    expect(result.code).toBe('OK');
    expect(result.parts.find((p) => p.part === 2)?.retries).toBe(1);
    expect((await card(lab, 'flaky')).subarray(0, img.size).equals(await readFile(img.path))).toBe(true);
  });

  it('fails with BOOT_TIMEOUT when the new system never answers the boot check', async () => {
    lab = await startLab({
      boards: [{ name: 'mute', mac: '02:00:00:00:00:6a', reset: 'sim:no-boot' }],
      config: { timeouts: { boardShow: 30, stall: 30, boot: 1, leaseGrace: 2 } },
    });
    const conn = await lab.connect();
    const img = await lab.image('f.img', MiB, 6);
    await conn.lease('mute');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256 });
    expect(result).toMatchObject({ ok: false, code: 'BOOT_TIMEOUT' });
    expect(result.parts.every((p) => p.status === 'ok')).toBe(true);
  });

  it('queues a second client for a busy target and tells it its position', async () => {
    lab = await startLab({ boards: [{ name: 'pi-a', mac: '02:00:00:00:00:7a' }] });
    const first = await lab.connect();
    const queued: AgentMessage[] = [];
    const second = await lab.connect((m) => m.type === 'queued' && queued.push(m));
    await first.lease('pi-a', { holder: 'first' });
    const waiting = second.lease('pi-a', { holder: 'second' });
    await waitUntil(() => queued.length > 0, 'the second client to be told it is queued');
    expect(queued).toMatchObject([{ type: 'queued', position: 1, holder: 'first' }]);
    await first.cancel();
    await expect(waiting).resolves.toMatchObject({ target: { name: 'pi-a' } });
  });

  it('cancels a running job within 5 s, releases the lease and deletes the staged folder', async () => {
    lab = await startLab({
      boards: [{ name: 'slow', mac: '02:00:00:00:00:8a', reset: 'sim:no-show' }],
      config: { timeouts: { boardShow: 60, stall: 60, boot: 60, leaseGrace: 2 } },
    });
    const conn = await lab.connect();
    const img = await lab.image('g.img', MiB, 7);
    await conn.lease('slow');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const job = conn.flash({ sha256: img.sha256 });
    await waitUntil(async () => (await lab!.tftpFolders()).length > 0, 'the job to stage its folder');
    expect(await lab.tftpFolders()).toEqual(['02-00-00-00-00-8a']);
    const asked = Date.now();
    await conn.cancel({ reason: 'workflow cancelled' });
    const result = await job;
    expect(result.code).toBe('CANCELLED');
    expect(Date.now() - asked).toBeLessThan(5000);
    expect(await lab.tftpFolders()).toEqual([]);
    const other = await lab.connect();
    await expect(other.lease('slow')).resolves.toBeTruthy();
  });

  it('a client that drops mid-upload resumes from what the agent holds', async () => {
    lab = await startLab({
      boards: [{ name: 'pi-a', mac: '02:00:00:00:00:9a' }],
      config: { timeouts: { boardShow: 30, stall: 30, boot: 30, leaseGrace: 10 } },
    });
    const img = await lab.image('h.img', 24 * MiB, 8);
    const conn = await lab.connect();
    const leased = await conn.lease('pi-a');
    let cut = false;
    await expect(
      conn.upload({
        path: img.path,
        sha256: img.sha256,
        size: img.size,
        compression: 'none',
        windowBytes: 4 * MiB,
        onProgress: (received) => {
          if (received >= 8 * MiB && !cut) {
            cut = true;
            conn.close();
          }
        },
      }),
    ).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
    // Reconnect at once: the agent may not even have seen the old connection close yet.
    const again = await lab.connect();
    await again.lease('pi-a', { lease: leased.lease });
    let resumedAt = -1;
    const done = await again.upload({
      path: img.path,
      sha256: img.sha256,
      size: img.size,
      compression: 'none',
      onProgress: (r) => (resumedAt = resumedAt < 0 ? r : resumedAt),
    });
    expect(done.skipped).toBe(false);
    expect(resumedAt).toBeGreaterThanOrEqual(8 * MiB);
    const result = await again.flash({ sha256: img.sha256, bootCheck: 'none' });
    expect(result.code).toBe('OK');
  });

  it('a client silent past the grace period loses its lease and its job is cancelled', async () => {
    lab = await startLab({
      boards: [{ name: 'pi-a', mac: '02:00:00:00:00:aa', reset: 'sim:no-show' }],
      config: { timeouts: { boardShow: 60, stall: 60, boot: 60, leaseGrace: 1 } },
    });
    const conn = await lab.connect();
    const img = await lab.image('i.img', MiB, 9);
    await conn.lease('pi-a');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    void conn.flash({ sha256: img.sha256 }).catch(() => {});
    await waitUntil(() => lab!.logs.some((r) => r.msg === 'job started'), 'the job to start');
    conn.close();
    const other = await lab.connect();
    const start = Date.now();
    await other.lease('pi-a');
    // Freed by the 1 s grace, not by the job's end at its 60 s board-show timeout: well under that.
    expect(Date.now() - start).toBeLessThan(30_000);
    expect(await lab.tftpFolders()).toEqual([]);
    expect(lab.logs.some((r) => r.msg === 'lease lost')).toBe(true);
  });
});
