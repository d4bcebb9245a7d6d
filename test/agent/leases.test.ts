import { describe, expect, it } from 'vitest';
import { LeaseManager } from '../../runner-agent/src/jobs/leases.js';
import { CodedError } from '../../src/protocol/errors.js';

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

describe('LeaseManager pools', () => {
  const pools: Record<string, string[]> = { pi4: ['a', 'b'], pi3: ['c'] };
  const out = new Set<string>();
  const make = () =>
    new LeaseManager({
      boardsWithLabel: (label) => pools[label] ?? [],
      availability: (board) => (out.has(board) ? new CodedError('BOARD_IN_MAINTENANCE', `${board} is out`) : undefined),
    });

  it('a pool waiter takes the first free available board, in the database order', async () => {
    out.clear();
    const leases = make();
    expect((await leases.acquire({ label: 'pi4' }, 'one')).target).toBe('a');
    expect((await leases.acquire({ label: 'pi4' }, 'two')).target).toBe('b');
    out.add('c');
    await expect(leases.acquire({ label: 'pi3' }, 'three')).rejects.toMatchObject({ code: 'BOARD_IN_MAINTENANCE' });
    await expect(leases.acquire({ label: 'none' }, 'four')).rejects.toMatchObject({ code: 'UNKNOWN_LABEL' });
    await expect(leases.acquire('c', 'five')).rejects.toMatchObject({ code: 'BOARD_IN_MAINTENANCE' });
    // The health check takes a board out of service: that is how it comes back.
    expect((await leases.acquire('c', 'health', { bypass: true })).target).toBe('c');
  });

  it('serves pool and named waiters in one arrival order: neither starves the other', async () => {
    out.clear();
    const leases = make();
    const a = await leases.acquire('a', 'holder-a');
    const b = await leases.acquire('b', 'holder-b');
    const got: string[] = [];
    const note = (who: string) => (l: { target: string; id: string }) => {
      got.push(`${who}:${l.target}`);
      return l;
    };
    // Named waiters for a, and pool waiters, interleaved: each board goes to the earliest that can take it.
    const n1 = leases.acquire('a', 'n1').then(note('n1'));
    const p1 = leases.acquire({ label: 'pi4' }, 'p1').then(note('p1'));
    const n2 = leases.acquire('a', 'n2').then(note('n2'));
    const p2 = leases.acquire({ label: 'pi4' }, 'p2').then(note('p2'));
    expect(leases.queueLength('a')).toBe(4);
    expect(leases.queueLength('b')).toBe(2);
    leases.release(a.id);
    const l1 = await n1;
    leases.release(b.id);
    const l2 = await p1;
    leases.release(l1.id);
    const l3 = await n2;
    leases.release(l2.id);
    await p2;
    expect(got).toEqual(['n1:a', 'p1:b', 'n2:a', 'p2:b']);
    leases.release(l3.id);
  });

  it('a pool waiter ahead of a named one gets the named board when it frees first', async () => {
    out.clear();
    const leases = make();
    const a = await leases.acquire('a', 'x');
    await leases.acquire('b', 'y');
    const positions: number[] = [];
    const pool = leases.acquire({ label: 'pi4' }, 'pool', { onPosition: (p) => positions.push(p) });
    const named = leases.acquire('a', 'named', { onPosition: (p) => positions.push(p * 10) });
    expect(positions).toEqual([1, 20]);
    leases.release(a.id);
    expect((await pool).target).toBe('a');
    // The named waiter moved up to first in line for a.
    expect(positions.at(-1)).toBe(10);
    leases.close();
    await expect(named).rejects.toMatchObject({ code: 'SHUTTING_DOWN' });
  });

  it('recheck refuses waiters whose boards all went out of service, and serves a board that came back', async () => {
    out.clear();
    const leases = make();
    const held = await leases.acquire('c', 'x');
    const named = leases.acquire('c', 'waiting');
    out.add('c');
    leases.recheck();
    await expect(named).rejects.toMatchObject({ code: 'BOARD_IN_MAINTENANCE' });
    leases.release(held.id);
    out.add('a');
    out.add('b');
    const pool = leases.acquire({ label: 'pi4' }, 'p').catch((e: unknown) => e);
    expect(await pool).toMatchObject({ code: 'BOARD_IN_MAINTENANCE' });
    // One board back: a new pool waiter is not refused and gets it.
    out.delete('b');
    leases.recheck();
    expect((await leases.acquire({ label: 'pi4' }, 'q')).target).toBe('b');
  });
});
