/**
 * Partial uploads on the simulated lab, over the real protocol: one no client resumes is removed
 * after store.partialTtl, and while it exists it counts against store.maxBytes, so storing another
 * image can evict it (the least recently used goes first).
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { validateConfig } from '../../runner-agent/src/config.js';
import type { AgentConnection } from '../../src/protocol/client.js';
import { startLab, type Lab } from '../support/lab.js';
import { waitUntil } from '../support/wait.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

const MiB = 1024 * 1024;

type Image = { path: string; size: number; sha256: string };

/** Sends `img` until the agent acknowledged `cutAt` bytes, then drops the connection; resolves once it is dropped. */
async function uploadAndDrop(conn: AgentConnection, img: Image, cutAt: number): Promise<void> {
  let cut = false;
  await expect(
    conn.upload({
      path: img.path,
      sha256: img.sha256,
      size: img.size,
      compression: 'none',
      windowBytes: MiB,
      onProgress: (received) => {
        if (received >= cutAt && !cut) {
          cut = true;
          conn.close();
        }
      },
    }),
  ).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
}

/** Uploads `img` in full; returns the offset the agent resumed from. */
async function upload(conn: AgentConnection, img: Image): Promise<number> {
  let offset = -1;
  await conn.upload({
    path: img.path,
    sha256: img.sha256,
    size: img.size,
    compression: 'none',
    onProgress: (received) => (offset = offset < 0 ? received : offset),
  });
  return offset;
}

const partialFiles = (l: Lab) => readdir(path.join(l.agent.config.stateDir, 'store', 'partial'));

describe('partial uploads on the agent', () => {
  it('takes store.partialTtl in seconds, 6 h unless set, and refuses a bad one', async () => {
    const base = { token: 'a-token-of-16-characters', targets: 'targets.csv' };
    expect((await validateConfig(base, '/tmp')).store.partialTtl).toBe(6 * 3600);
    expect((await validateConfig({ ...base, store: { partialTtl: 90 } }, '/tmp')).store.partialTtl).toBe(90);
    for (const bad of [0, -5, '6h', 31 * 86_400])
      await expect(validateConfig({ ...base, store: { partialTtl: bad } }, '/tmp')).rejects.toThrow(
        /"store\.partialTtl" must be a number of seconds/,
      );
  });

  it('removes a partial upload no client resumed within store.partialTtl: a later upload starts at 0', async () => {
    const l = (lab = await startLab({
      boards: [{ name: 'pi-a', mac: '02:00:00:00:0f:01' }],
      config: { store: { partialTtl: 1 }, timeouts: { leaseGrace: 30 } },
    }));
    const img = await l.image('x.img', 6 * MiB, 1);
    const conn = await l.connect();
    const { lease } = await conn.lease('pi-a');
    await uploadAndDrop(conn, img, 2 * MiB);
    await waitUntil(() => l.logs.some((r) => r.msg === 'upload suspended'), 'the agent to keep the partial upload');
    expect(await partialFiles(l)).toEqual([`${img.sha256}.upload`]);

    await waitUntil(
      () => l.logs.some((r) => r.msg === 'partial upload expired: no client resumed it'),
      'the partial upload to expire after its 1 s time to live',
    );
    expect(await partialFiles(l)).toEqual([]);
    const again = await l.connect();
    await again.lease('pi-a', { lease });
    expect(await upload(again, img)).toBe(0);
  });

  it('counts a partial upload against store.maxBytes: storing another image evicts it, the oldest', async () => {
    const l = (lab = await startLab({
      boards: [{ name: 'pi-a', mac: '02:00:00:00:0f:02' }],
      config: { store: { maxBytes: '6MiB' }, timeouts: { leaseGrace: 30 } },
    }));
    const left = await l.image('left.img', 5 * MiB, 2);
    const other = await l.image('other.img', 4 * MiB, 3);
    const conn = await l.connect();
    const { lease } = await conn.lease('pi-a');
    await uploadAndDrop(conn, left, 3 * MiB);
    await waitUntil(() => l.logs.some((r) => r.msg === 'upload suspended'), 'the agent to keep the partial upload');
    expect(l.agent.store.partialBytes()).toBeGreaterThanOrEqual(3 * MiB);

    // At least 3 MiB held for `left` and 4 MiB of `other`: past the 6 MiB, so the older of the two goes.
    const again = await l.connect();
    await again.lease('pi-a', { lease });
    expect(await upload(again, other)).toBe(0);
    await waitUntil(async () => (await partialFiles(l)).length === 0, 'the partial upload to be evicted');
    expect(l.logs.some((r) => r.msg === 'evicting least recently used partial upload')).toBe(true);
    expect(l.agent.store.list().map((i) => i.sha256)).toEqual([other.sha256]);
    expect(l.agent.store.partialBytes()).toBe(0);
    // The evicted upload starts over.
    expect(await upload(again, left)).toBe(0);
  });
});
