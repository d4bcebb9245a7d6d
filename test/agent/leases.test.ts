import { describe, expect, it } from 'vitest';
import { LeaseManager } from '../../runner-agent/src/jobs/leases.js';

describe('LeaseManager', () => {
  it('grants a free target at once and queues the next holders in order with positions', async () => {
    const leases = new LeaseManager();
    const first = await leases.acquire('pi4-03', 'run-1');
    const positions: Array<[string, number]> = [];
    const second = leases.acquire('pi4-03', 'run-2', { onPosition: (p) => positions.push(['run-2', p]) });
    const third = leases.acquire('pi4-03', 'run-3', { onPosition: (p) => positions.push(['run-3', p]) });
    expect(positions).toEqual([
      ['run-2', 1],
      ['run-3', 2],
    ]);
    expect(leases.holderOf('pi4-03')?.holder).toBe('run-1');

    leases.release(first.id);
    const granted = await second;
    expect(granted.holder).toBe('run-2');
    // run-3 moved up to position 1 when run-2 got the target.
    expect(positions.at(-1)).toEqual(['run-3', 1]);
    leases.release(granted.id);
    expect((await third).holder).toBe('run-3');
  });

  it('keeps targets independent', async () => {
    const leases = new LeaseManager();
    const a = await leases.acquire('a', 'x');
    const b = await leases.acquire('b', 'y');
    expect(a.target).toBe('a');
    expect(b.target).toBe('b');
    expect(leases.active()).toHaveLength(2);
  });

  it('a waiter that aborts leaves the queue and the others move up', async () => {
    const leases = new LeaseManager();
    const held = await leases.acquire('t', 'one');
    const abort = new AbortController();
    const leaving = leases.acquire('t', 'two', { signal: abort.signal });
    const positions: number[] = [];
    const staying = leases.acquire('t', 'three', { onPosition: (p) => positions.push(p) });
    abort.abort(new Error('gone'));
    await expect(leaving).rejects.toThrow('gone');
    expect(positions).toEqual([2, 1]);
    leases.release(held.id);
    expect((await staying).holder).toBe('three');
  });

  it('refuses new leases after close and fails the waiters with SHUTTING_DOWN', async () => {
    const leases = new LeaseManager();
    await leases.acquire('t', 'one');
    const waiting = leases.acquire('t', 'two');
    leases.close();
    await expect(waiting).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
    await expect(leases.acquire('u', 'three')).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
  });

  it('releasing twice or an unknown id is harmless', async () => {
    const leases = new LeaseManager();
    const l = await leases.acquire('t', 'one');
    leases.release(l.id);
    leases.release(l.id);
    leases.release('nope');
    expect(leases.holderOf('t')).toBeUndefined();
  });
});
