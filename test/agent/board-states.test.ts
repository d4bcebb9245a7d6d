/**
 * Board states, health checks and pools on the simulated lab: a real agent, real WebSocket clients
 * on loopback, simulated boards that pass or fail the way real ones do.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startLab, type Lab } from '../support/lab.js';
import { waitUntil } from '../support/wait.js';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';
import type { BoardState, BoardStatus } from '../../runner-agent/src/lab/board-states.js';
import type { AgentConnection } from '../../src/protocol/client.js';

const MiB = 1024 * 1024;
let lab: Lab | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-boards-'));
  dirs.push(d);
  return d;
}

/** One whole job on a fresh connection: lease, upload, flash; the result. */
async function job(l: Lab, target: string, img: { path: string; sha256: string; size: number }) {
  const conn = await l.connect();
  try {
    const leased = await conn.lease(target, { holder: 'test' });
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    return { leased, result: await conn.flash({ sha256: img.sha256 }) };
  } finally {
    conn.close();
  }
}

function stateOf(l: Lab, board: string): BoardStatus {
  return l.agent.service.boards.get(board)!;
}

describe('board states through a job', () => {
  it('go leased → flashing → booting → idle, are written to boards.json, and leased says which agent', async () => {
    lab = await startLab({ boards: [{ name: 'pi-a', mac: '02:00:00:00:01:0a' }], config: { name: 'lab-7' } });
    const seen: BoardState[] = [];
    lab.agent.service.boards.onChange((s) => {
      if (s.name === 'pi-a' && seen.at(-1) !== s.state) seen.push(s.state);
    });
    expect(stateOf(lab, 'pi-a').state).toBe('idle');
    const img = await lab.image('a.img', 2 * MiB, 3);
    const { leased, result } = await job(lab, 'pi-a', img);
    expect(result).toMatchObject({ ok: true, code: 'OK' });
    expect(leased.agent).toBe('lab-7');
    await waitUntil(() => stateOf(lab!, 'pi-a').state === 'idle', 'the board idle after the job');
    expect(seen).toEqual(['leased', 'flashing', 'booting', 'idle']);
    await lab.agent.service.boards.flush();
    const file = JSON.parse(await readFile(path.join(lab.agent.config.stateDir, 'boards.json'), 'utf8')) as {
      version: number;
      boards: BoardStatus[];
    };
    expect(file.version).toBe(1);
    expect(file.boards).toMatchObject([{ name: 'pi-a', state: 'idle', consecutiveFailures: 0 }]);
    // No temp file left beside it.
    expect((await readdir(lab.agent.config.stateDir)).filter((f) => f.startsWith('boards.json'))).toEqual([
      'boards.json',
    ]);
  });

  it('a board in maintenance is refused at once with BOARD_IN_MAINTENANCE, and resume brings it back', async () => {
    lab = await startLab({ boards: [{ name: 'pi-m', mac: '02:00:00:00:01:0b' }] });
    const admin = await lab.connect();
    const answer = await admin.board({ action: 'maintenance', target: 'pi-m', reason: 'new SD card' });
    expect(answer.boards).toMatchObject([{ name: 'pi-m', state: 'maintenance' }]);
    expect(answer.boards[0]!.reason).toContain('new SD card');
    const conn = await lab.connect();
    const started = Date.now();
    await expect(conn.lease('pi-m')).rejects.toMatchObject({
      code: 'BOARD_IN_MAINTENANCE',
      message: expect.stringMatching(/pi-m is in maintenance since .*new SD card/) as unknown as string,
    });
    // At once: no queue wait.
    expect(Date.now() - started).toBeLessThan(2000);
    expect((await admin.board({ action: 'resume', target: 'pi-m' })).boards[0]!.state).toBe('idle');
    const leased = await conn.lease('pi-m');
    expect(leased.target.name).toBe('pi-m');
    expect(stateOf(lab, 'pi-m').state).toBe('leased');
    await conn.cancel();
    await waitUntil(() => stateOf(lab!, 'pi-m').state === 'idle', 'idle after the lease ends');
  });

  it('maintenance asked during a job lets the job finish, refuses waiters at once, and holds after it', async () => {
    lab = await startLab({ boards: [{ name: 'pi-j', mac: '02:00:00:00:01:0c' }] });
    const img = await lab.image('j.img', 3 * MiB, 4);
    const conn = await lab.connect();
    await conn.lease('pi-j');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const waiter = await lab.connect();
    const queued = waiter.lease('pi-j');
    const flash = conn.flash({ sha256: img.sha256 });
    await waitUntil(() => stateOf(lab!, 'pi-j').state === 'flashing', 'the job flashing');
    const admin = await lab.connect();
    const answer = await admin.board({ action: 'maintenance', target: 'pi-j' });
    expect(answer.boards[0]!.reason).toMatch(/its running job finishes first/);
    // The waiter is told at once: the board will not come back to it.
    await expect(queued).rejects.toMatchObject({ code: 'BOARD_IN_MAINTENANCE' });
    expect(await flash).toMatchObject({ ok: true });
    await lab.agent.service.boards.flush();
    expect(stateOf(lab, 'pi-j').state).toBe('maintenance');
  });

  it('resume while a lease is held shows the lease again, not idle', async () => {
    lab = await startLab({ boards: [{ name: 'pi-r', mac: '02:00:00:00:01:0d' }] });
    const conn = await lab.connect();
    await conn.lease('pi-r');
    const admin = await lab.connect();
    expect((await admin.board({ action: 'maintenance', target: 'pi-r' })).boards[0]!.state).toBe('maintenance');
    expect((await admin.board({ action: 'resume', target: 'pi-r' })).boards[0]!.state).toBe('leased');
    await conn.cancel();
    await waitUntil(() => stateOf(lab!, 'pi-r').state === 'idle', 'idle after the lease ends');
  });

  it('status lists every board; an unknown board is UNKNOWN_TARGET', async () => {
    lab = await startLab({
      boards: [
        { name: 'pi-1', mac: '02:00:00:00:01:01' },
        { name: 'pi-2', mac: '02:00:00:00:01:02' },
      ],
    });
    const admin = await lab.connect();
    const all = await admin.board({ action: 'status' });
    expect(all.boards.map((b) => [b.name, b.state])).toEqual([
      ['pi-1', 'idle'],
      ['pi-2', 'idle'],
    ]);
    await expect(admin.board({ action: 'resume', target: 'nope' })).rejects.toMatchObject({ code: 'UNKNOWN_TARGET' });
  });
});

describe('health checks', () => {
  it('a board failing for its own reasons goes unhealthy after N jobs; a passing check brings it back', async () => {
    const dir = await tempDir();
    const good = path.join(dir, 'known-good.img');
    await writeSampleImage(good, 2 * MiB, 9);
    lab = await startLab({
      dir,
      boards: [{ name: 'flaky', mac: '02:00:00:00:02:0a', reset: 'sim:no-show' }],
      config: {
        timeouts: { boardShow: 1, stall: 30, boot: 30, leaseGrace: 2, shutdown: 5 },
        health: { image: good, afterFailures: 2 },
      },
    });
    const img = await lab.image('user.img', 1 * MiB, 5);
    const first = await job(lab, 'flaky', img);
    expect(first.result.code).toBe('BOARD_NO_SHOW');
    expect(stateOf(lab, 'flaky')).toMatchObject({ state: 'idle', consecutiveFailures: 1 });
    const second = await job(lab, 'flaky', img);
    expect(second.result.code).toBe('BOARD_NO_SHOW');
    // Two board-fault failures in a row: unhealthy, and the agent checks it at once (which fails too).
    expect(stateOf(lab, 'flaky').state).toBe('unhealthy');
    await waitUntil(() => stateOf(lab!, 'flaky').lastHealth !== undefined, 'the automatic health check', {
      ms: 20_000,
    });
    expect(stateOf(lab, 'flaky')).toMatchObject({
      state: 'unhealthy',
      lastHealth: { ok: false, code: 'BOARD_NO_SHOW' },
    });
    expect(stateOf(lab, 'flaky').reason).toMatch(/health check failed: BOARD_NO_SHOW/);
    const conn = await lab.connect();
    await expect(conn.lease('flaky')).rejects.toMatchObject({ code: 'BOARD_UNHEALTHY' });

    // The board is repaired (its sim faults cleared, same name, MAC and IP) and checked on demand.
    const csv = path.join(dir, 'targets.csv');
    await writeFile(csv, (await readFile(csv, 'utf8')).replace('sim:no-show', 'sim'));
    await lab.agent.reloadTargets();
    const admin = await lab.connect();
    const checked = await admin.board({ action: 'health', target: 'flaky' });
    expect(checked.health).toMatchObject({ ok: true, code: 'OK' });
    expect(checked.boards[0]).toMatchObject({
      name: 'flaky',
      state: 'idle',
      consecutiveFailures: 0,
      lastHealth: { ok: true },
    });
    // The known-good image went through the store like any upload.
    expect(lab.agent.store.list().length).toBeGreaterThanOrEqual(2);
    const third = await job(lab, 'flaky', img);
    expect(third.result).toMatchObject({ ok: true });
  }, 60_000);

  it('failures that are the user’s (a cancel, an image the agent lacks) never make a board unhealthy', async () => {
    lab = await startLab({
      boards: [{ name: 'pi-u', mac: '02:00:00:00:02:0b' }],
      config: { health: { afterFailures: 1 } },
    });
    const conn = await lab.connect();
    await conn.lease('pi-u');
    await expect(conn.flash({ sha256: 'f'.repeat(64) })).rejects.toMatchObject({ code: 'IMAGE_NOT_FOUND' });
    await conn.cancel();
    await waitUntil(() => stateOf(lab!, 'pi-u').state === 'idle', 'idle after the cancel');
    expect(stateOf(lab, 'pi-u').consecutiveFailures).toBe(0);
  });

  it('health without health.image is refused with LAB_MISCONFIGURED', async () => {
    lab = await startLab({ boards: [{ name: 'pi-n', mac: '02:00:00:00:02:0c' }] });
    const admin = await lab.connect();
    await expect(admin.board({ action: 'health', target: 'pi-n' })).rejects.toMatchObject({
      code: 'LAB_MISCONFIGURED',
    });
  });

  it('a scheduled check runs by itself and records its pass', async () => {
    const dir = await tempDir();
    const good = path.join(dir, 'known-good.img');
    await writeSampleImage(good, 1 * MiB, 2);
    lab = await startLab({
      dir,
      boards: [{ name: 'pi-s', mac: '02:00:00:00:02:0d' }],
      config: { health: { image: good, schedule: 1 } },
    });
    await waitUntil(() => stateOf(lab!, 'pi-s').lastHealth?.ok === true, 'a scheduled health check', { ms: 20_000 });
    expect(lab.logs.some((r) => r.msg === 'health check starting' && r.fields.why === 'scheduled')).toBe(true);
  }, 30_000);
});

describe('pools (label: targets)', () => {
  const boards = [
    { name: 'p4-a', mac: '02:00:00:00:03:0a', labels: 'pi4 lab-a' },
    { name: 'p4-b', mac: '02:00:00:00:03:0b', labels: 'pi4;lab-b' },
    { name: 'p3-a', mac: '02:00:00:00:03:0c', labels: 'pi3' },
  ];

  it('lease the first free healthy board with the label, and say which', async () => {
    lab = await startLab({ boards });
    const admin = await lab.connect();
    await admin.board({ action: 'maintenance', target: 'p4-a' });
    const img = await lab.image('p.img', 1 * MiB, 6);
    const { leased, result } = await job(lab, 'label:pi4', img);
    // p4-a comes first in the database but is out of service: the pool skips it.
    expect(leased.target.name).toBe('p4-b');
    expect(result).toMatchObject({ ok: true, target: { name: 'p4-b' } });
    const c = await lab.connect();
    await expect(c.lease('label:nope')).rejects.toMatchObject({ code: 'UNKNOWN_LABEL' });
    await admin.board({ action: 'maintenance', target: 'p4-b' });
    await expect(c.lease('label:pi4')).rejects.toMatchObject({ code: 'BOARD_IN_MAINTENANCE' });
    // Labels are matched without case.
    expect((await c.lease('LABEL:PI3')).target.name).toBe('p3-a');
  });

  it('queue fairly: one arrival order across pool and named waiters', async () => {
    lab = await startLab({ boards });
    const order: string[] = [];
    const take = async (who: string, target: string): Promise<AgentConnection> => {
      const c = await lab!.connect();
      const leased = await c.lease(target, { holder: who });
      order.push(`${who}:${leased.target.name}`);
      return c;
    };
    const a = await take('first', 'p4-a');
    const b = await take('second', 'label:pi4');
    expect(order).toEqual(['first:p4-a', 'second:p4-b']);
    // Both pi4 boards busy: a pool waiter, then a named waiter for p4-a, then another pool waiter.
    const poolFirst = take('pool-1', 'label:pi4');
    await waitUntil(() => lab!.agent.service.leases.queueLength('p4-a') === 1, 'pool-1 queued');
    const named = take('named', 'p4-a');
    await waitUntil(() => lab!.agent.service.leases.queueLength('p4-a') === 2, 'named queued');
    const poolSecond = take('pool-2', 'label:pi4');
    await waitUntil(() => lab!.agent.service.leases.queueLength('p4-a') === 3, 'pool-2 queued');
    // p4-a comes free: the earliest waiter that can take it is pool-1, not the named one behind it.
    await a.cancel();
    const p1 = await poolFirst;
    expect(order.at(-1)).toBe('pool-1:p4-a');
    // p4-b comes free: the named waiter wants p4-a only, so pool-2 gets p4-b; the named one keeps its turn.
    await b.cancel();
    const p2 = await poolSecond;
    expect(order.at(-1)).toBe('pool-2:p4-b');
    await p1.cancel();
    await named;
    expect(order.at(-1)).toBe('named:p4-a');
    await p2.cancel();
  });
});

describe('board states across restarts', () => {
  it('maintenance and unhealthy survive a restart; a board left mid-job comes back idle, saying why', async () => {
    const dir = await tempDir();
    const boards = [
      { name: 'r-m', mac: '02:00:00:00:04:0a' },
      { name: 'r-u', mac: '02:00:00:00:04:0b' },
      { name: 'r-f', mac: '02:00:00:00:04:0c' },
    ];
    lab = await startLab({ dir, boards });
    const admin = await lab.connect();
    await admin.board({ action: 'maintenance', target: 'r-m', reason: 'rewiring' });
    lab.agent.service.boards.set('r-u', 'unhealthy', 'health check failed: BOOT_TIMEOUT');
    await lab.stop();
    lab = undefined;
    // As if the agent died mid-job on r-f: the file says flashing.
    const file = path.join(dir, 'state', 'boards.json');
    const saved = JSON.parse(await readFile(file, 'utf8')) as { version: number; boards: BoardStatus[] };
    saved.boards.find((b) => b.name === 'r-f')!.state = 'flashing';
    await writeFile(file, JSON.stringify(saved));

    lab = await startLab({ dir, boards });
    expect(stateOf(lab, 'r-m')).toMatchObject({ state: 'maintenance' });
    expect(stateOf(lab, 'r-m').reason).toContain('rewiring');
    expect(stateOf(lab, 'r-u')).toMatchObject({ state: 'unhealthy', reason: 'health check failed: BOOT_TIMEOUT' });
    expect(stateOf(lab, 'r-f').state).toBe('idle');
    expect(stateOf(lab, 'r-f').reason).toMatch(/agent stopped while the board was flashing/);
    expect(lab.logs.some((r) => r.msg.startsWith('boards were mid-job') && r.fields.boards === 'r-f')).toBe(true);
    const c = await lab.connect();
    await expect(c.lease('r-m')).rejects.toMatchObject({ code: 'BOARD_IN_MAINTENANCE' });
    await expect(c.lease('r-u')).rejects.toMatchObject({ code: 'BOARD_UNHEALTHY' });
  });

  it('a corrupt state file is set aside and every board starts in maintenance (no crash loop)', async () => {
    const dir = await tempDir();
    await mkdir(path.join(dir, 'state'), { recursive: true });
    await writeFile(path.join(dir, 'state', 'boards.json'), '{"version": 1, "boards": [{"name": "x", "sta');
    lab = await startLab({ dir, boards: [{ name: 'c-1', mac: '02:00:00:00:05:0a' }] });
    expect(stateOf(lab, 'c-1').state).toBe('maintenance');
    expect(stateOf(lab, 'c-1').reason).toMatch(/board-state file was unreadable \(.*is not JSON; kept as .*corrupt-/);
    const files = await readdir(path.join(dir, 'state'));
    expect(files.some((f) => f.startsWith('boards.json.corrupt-'))).toBe(true);
    expect(lab.logs.some((r) => r.level === 'error' && r.msg.startsWith('the board-state file was unreadable'))).toBe(
      true,
    );
    // The operator resumes it; the new file is whole again.
    const admin = await lab.connect();
    expect((await admin.board({ action: 'resume', target: 'c-1' })).boards[0]!.state).toBe('idle');
    await lab.agent.service.boards.flush();
    const again = JSON.parse(await readFile(path.join(dir, 'state', 'boards.json'), 'utf8')) as {
      boards: BoardStatus[];
    };
    expect(again.boards).toMatchObject([{ name: 'c-1', state: 'idle' }]);
  });
});
