/**
 * The board-state file on its own: what open() makes of each kind of file, what a write leaves on
 * disk, and the change subscription the dashboard relies on.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BoardStateFileError, BoardStates, type BoardStatus } from '../../runner-agent/src/lab/board-states.js';
import { BOARD_FAULT_CODES, isBoardFault } from '../../runner-agent/src/lab/board-faults.js';
import { AgentCodes } from '../../src/protocol/errors.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function file(content?: string): Promise<string> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'board-states-'));
  const f = path.join(dir, 'boards.json');
  if (content !== undefined) await writeFile(f, content);
  return f;
}

const saved = (f: string) =>
  readFile(f, 'utf8').then((t) => JSON.parse(t) as { version: number; boards: BoardStatus[] });

describe('BoardStates', () => {
  it('starts every board idle without a file, and writes one at once', async () => {
    const f = await file();
    const { states, interrupted } = await BoardStates.open({ file: f, names: ['a', 'b'], now: () => 1000 });
    expect(interrupted).toEqual([]);
    expect(states.list()).toEqual([
      { name: 'a', state: 'idle', since: 1000, consecutiveFailures: 0 },
      { name: 'b', state: 'idle', since: 1000, consecutiveFailures: 0 },
    ]);
    expect((await saved(f)).boards.map((b) => b.name)).toEqual(['a', 'b']);
  });

  it('tells subscribers each change once, with the state left; a throwing listener breaks nothing', async () => {
    const f = await file();
    const { states } = await BoardStates.open({ file: f, names: ['a'] });
    const seen: string[] = [];
    states.onChange(() => {
      throw new Error('a broken dashboard');
    });
    const off = states.onChange((s, previous) => seen.push(`${previous}→${s.state}`));
    states.set('a', 'leased');
    states.set('a', 'leased');
    states.set('a', 'flashing');
    off();
    states.set('a', 'idle');
    expect(seen).toEqual(['idle→leased', 'leased→flashing']);
    expect(states.get('a')!.state).toBe('idle');
    // Copies: a caller cannot change the states behind the module's back.
    states.get('a')!.state = 'maintenance';
    expect(states.get('a')!.state).toBe('idle');
    await states.flush();
    expect((await saved(f)).boards[0]!.state).toBe('idle');
    expect((await readdir(dir!)).sort()).toEqual(['boards.json']);
  });

  it('counts board-fault failures in a row; anything else, or a passing health check, resets the count', async () => {
    const { states } = await BoardStates.open({ file: await file(), names: ['a'] });
    states.recordJobEnd('a', true);
    states.recordJobEnd('a', true);
    expect(states.get('a')!.consecutiveFailures).toBe(2);
    states.recordJobEnd('a', false);
    expect(states.get('a')!.consecutiveFailures).toBe(0);
    states.recordJobEnd('a', true);
    states.recordHealth('a', { at: 5, ok: true });
    expect(states.get('a')).toMatchObject({ consecutiveFailures: 0, lastHealth: { at: 5, ok: true } });
  });

  it('keeps a reload in the database order: new boards idle, gone ones forgotten', async () => {
    const f = await file();
    const { states } = await BoardStates.open({ file: f, names: ['a', 'b'] });
    states.set('b', 'maintenance', 'x');
    expect(states.sync(['c', 'b'])).toBe(true);
    expect(states.list().map((s) => [s.name, s.state])).toEqual([
      ['c', 'idle'],
      ['b', 'maintenance'],
    ]);
    expect(states.sync(['c', 'b'])).toBe(false);
    await states.flush();
    expect((await saved(f)).boards.map((b) => b.name)).toEqual(['c', 'b']);
  });

  it('refuses a file not its own clearly, or sets it aside with every board in maintenance', async () => {
    for (const [content, why] of [
      ['{"version":1,"boards":[{"name":"a","sta', /is not JSON/],
      ['{"version":7,"boards":[]}', /is not a version 1 board-state file/],
      [
        '{"version":1,"boards":[{"name":"a","state":"dancing","since":1,"consecutiveFailures":0}]}',
        /unknown state "dancing"/,
      ],
      ['{"version":1,"boards":[{"name":"a","state":"idle","since":1,"consecutiveFailures":-1}]}', /not a count/],
    ] as const) {
      const f = await file(content);
      const failed = BoardStates.open({ file: f, names: ['a'] });
      await expect(failed).rejects.toBeInstanceOf(BoardStateFileError);
      await expect(BoardStates.open({ file: f, names: ['a'] })).rejects.toThrow(why);
      const { states, setAside } = await BoardStates.open({ file: f, names: ['a'], onCorrupt: 'maintenance' });
      expect(states.get('a')!.state).toBe('maintenance');
      expect(await readFile(setAside!, 'utf8')).toBe(content);
      expect((await saved(f)).boards[0]!.state).toBe('maintenance');
      await rm(dir!, { recursive: true, force: true });
    }
  });
});

describe('board-fault codes', () => {
  it('are agent codes, and none of them is the user’s', () => {
    for (const code of BOARD_FAULT_CODES) expect(Object.keys(AgentCodes)).toContain(code);
    for (const code of [
      'OK',
      'CANCELLED',
      'LEASE_LOST',
      'SHUTTING_DOWN',
      'BAD_REQUEST',
      'IMAGE_NOT_DISK',
      'UPLOAD_TRUNCATED',
      'SHA256_MISMATCH',
      'INTERNAL',
    ] as const)
      expect(isBoardFault(code), code).toBe(false);
    expect(isBoardFault('BOARD_NO_SHOW')).toBe(true);
  });
});
