/**
 * What a lease leaves behind on the agent, over the real protocol on the simulated lab: a lease
 * lost to the grace period is forgotten (a resume after it answers LEASE_LOST and nothing else,
 * and no record stays), a client back within the grace period still gets its job's result, and a
 * cancel that came while a job was being set up ends with that setup, not with a later flash.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentMessage, ResultMessage } from '../../src/protocol/messages.js';
import { startLab, type Lab } from '../support/lab.js';
import { waitUntil } from '../support/wait.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

const MiB = 1024 * 1024;

/** `p`, or after `ms` a rejection that names what was awaited (a lease queued behind a lease never ended). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`waited ${ms} ms for ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** Lease records the service still holds (in memory only: what piled up before). */
const sessionsHeld = (l: Lab) => (l.agent.service as unknown as { sessions: Map<string, unknown> }).sessions.size;

/** A lab whose board never fetches its script: its job runs until the test (or boardShow) ends it. */
async function noShowLab(timeouts: Record<string, number>): Promise<Lab> {
  lab = await startLab({
    boards: [{ name: 'mute', mac: '02:00:00:00:10:01', reset: 'sim:no-show' }],
    config: { timeouts: { boardShow: 60, stall: 60, boot: 60, shutdown: 5, ...timeouts } },
  });
  return lab;
}

describe('a lease that outlives its connection', () => {
  it('lost to the grace period, is forgotten: a resume later gets LEASE_LOST, and no record stays', async () => {
    const l = await noShowLab({ leaseGrace: 1 });
    const img = await l.image('a.img', MiB, 1);
    const conn = await l.connect();
    const { lease } = await conn.lease('mute');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    void conn.flash({ sha256: img.sha256 }).catch(() => {});
    await waitUntil(() => l.logs.some((r) => r.msg === 'job started'), 'the job to start');
    conn.close();
    // The grace period passes: the job is cancelled with LEASE_LOST and ends.
    await waitUntil(
      () => l.logs.some((r) => r.msg === 'job ended' && r.fields.code === 'LEASE_LOST'),
      'the job to end, cancelled for the lost lease',
    );
    await waitUntil(() => sessionsHeld(l) === 0, 'the lease record to go', { detail: () => `${sessionsHeld(l)}` });

    const seen: AgentMessage[] = [];
    const again = await l.connect((m) => seen.push(m));
    await expect(again.lease('mute', { lease })).rejects.toMatchObject({ code: 'LEASE_LOST' });
    // LEASE_LOST and nothing else: no `leased`, no kept result.
    expect(seen.filter((m) => m.type !== 'welcome').map((m) => m.type)).toEqual(['error']);
    // The board is free: a new lease is granted at once.
    await expect(again.lease('mute')).resolves.toMatchObject({ target: { name: 'mute' } });
  });

  it('a resume after the grace period passed but before the job wound down gets LEASE_LOST too', async () => {
    const l = await noShowLab({ leaseGrace: 1 });
    const img = await l.image('b.img', MiB, 2);
    const conn = await l.connect();
    const { lease } = await conn.lease('mute');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    void conn.flash({ sha256: img.sha256 }).catch(() => {});
    await waitUntil(() => l.logs.some((r) => r.msg === 'job started'), 'the job to start');
    conn.close();
    await waitUntil(() => l.logs.some((r) => r.msg === 'lease lost'), 'the grace period to pass');
    const again = await l.connect();
    await expect(again.lease('mute', { lease })).rejects.toMatchObject({ code: 'LEASE_LOST' });
  });

  it('a client back within the grace period gets the result of the job that ended while it was away', async () => {
    const l = await noShowLab({ leaseGrace: 30, boardShow: 1 });
    const img = await l.image('c.img', MiB, 3);
    const conn = await l.connect();
    const { lease } = await conn.lease('mute');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    void conn.flash({ sha256: img.sha256 }).catch(() => {});
    await waitUntil(() => l.logs.some((r) => r.msg === 'job started'), 'the job to start');
    conn.close();
    await waitUntil(() => l.logs.some((r) => r.msg === 'job ended'), 'the job to end (BOARD_NO_SHOW after 1 s)');

    const seen: AgentMessage[] = [];
    const again = await l.connect((m) => seen.push(m));
    await expect(again.lease('mute', { lease })).resolves.toMatchObject({ lease });
    await waitUntil(() => seen.some((m) => m.type === 'result'), 'the kept result');
    expect((seen.find((m) => m.type === 'result') as ResultMessage).code).toBe('BOARD_NO_SHOW');
    await waitUntil(() => sessionsHeld(l) === 0, 'the lease to end with the delivered result');
  });
});

describe('a cancel while the job is being set up', () => {
  it('ends the lease when the setup then fails: no later flash is cancelled by it', async () => {
    const l = await noShowLab({ leaseGrace: 30 });
    const img = await l.image('d.img', MiB, 4);
    const conn = await l.connect();
    await conn.lease('mute');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    // The setup's image lookup waits for the test, then finds nothing (as if evicted meanwhile).
    const store = l.agent.store;
    const get = store.get.bind(store);
    let letGo!: () => void;
    const held = new Promise<void>((resolve) => (letGo = resolve));
    store.get = async () => {
      store.get = get;
      await held;
      return null;
    };
    const first = conn.flash({ sha256: img.sha256 });
    void first.catch(() => {});
    await waitUntil(() => store.get === get, 'the setup to look the image up');
    await conn.cancel({ reason: 'changed my mind' });
    letGo();
    await expect(first).rejects.toMatchObject({ code: 'IMAGE_NOT_FOUND' });

    // The cancel ended the lease with the setup: the board is free for the next client at once…
    const other = await l.connect();
    await expect(within(other.lease('mute'), 10_000, 'the board to be free')).resolves.toMatchObject({
      target: { name: 'mute' },
    });
    // …and this connection holds nothing a later flash could inherit the cancel through.
    await expect(conn.flash({ sha256: img.sha256 })).rejects.toMatchObject({ code: 'NOT_LEASED' });
  });
});
