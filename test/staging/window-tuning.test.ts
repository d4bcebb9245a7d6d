/**
 * How a board's TFTP window is picked under `flash.tftpWindowSize: auto` (staging/window-tuning.ts):
 * the order windows are measured in, the fastest afterwards, how figures are averaged, which
 * downloads count, and the record on disk (a broken one is measured again). The agent using it on
 * the simulated lab is in test/agent/compressed-flash.test.ts.
 */
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  addMeasurement,
  chooseWindow,
  jobRate,
  MIN_MEASURED_BYTES,
  WINDOW_CANDIDATES,
  WindowRatesStore,
  type WindowRates,
} from '../../runner-agent/src/staging/window-tuning.js';

const rate = (mbps: number) => ({ mbps, jobs: 1, job: 'j', seen: 's' });
let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('TFTP window tuning', () => {
  it('measures each candidate once, lock-step first, then takes the fastest', () => {
    let rates: WindowRates = {};
    const tried: number[] = [];
    const figures: Record<number, number> = { 1: 4.3, 4: 12.9, 8: 20.8, 16: 19.5 };
    for (let i = 0; i < WINDOW_CANDIDATES.length; i++) {
      const c = chooseWindow(rates);
      expect(c.reason).toMatch(new RegExp(`^measuring window ${c.window} on this board`));
      tried.push(c.window);
      rates = addMeasurement(rates, { window: c.window, mbps: figures[c.window]!, job: `j${i}`, seen: 's' });
    }
    expect(tried).toEqual([1, 4, 8, 16]);
    const best = chooseWindow(rates);
    expect(best.window).toBe(8);
    expect(best.reason).toBe(
      'the fastest measured on this board (1: 4.3 MB/s, 4: 12.9 MB/s, 8: 20.8 MB/s, 16: 19.5 MB/s)',
    );
  });

  it('a window that slows down is averaged down and loses its place', () => {
    let rates: WindowRates = { 1: rate(4), 4: rate(12), 8: rate(20), 16: rate(19) };
    rates = addMeasurement(rates, { window: 8, mbps: 2, job: 'lossy', seen: 'now' });
    expect(rates[8]).toEqual({ mbps: 11, jobs: 2, job: 'lossy', seen: 'now' });
    expect(chooseWindow(rates).window).toBe(16);
  });

  it("counts completed bytes over all downloads' time, and nothing under 1 MiB", () => {
    expect(jobRate({ completedBytes: 10e6, ms: 2000 })).toBe(5);
    expect(jobRate({ completedBytes: MIN_MEASURED_BYTES - 1, ms: 10 })).toBeUndefined();
    expect(jobRate({ completedBytes: 10e6, ms: 0 })).toBeUndefined();
  });

  it('keeps the record per board on disk; one that does not parse reads as unmeasured', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'rpf-window-'));
    const store = new WindowRatesStore(path.join(dir, 'boards'));
    expect(await store.read('pi-1')).toEqual({});
    await store.record('pi-1', { 1: rate(4), 8: rate(20) });
    expect(await store.read('pi-1')).toEqual({ 1: rate(4), 8: rate(20) });
    expect(await readdir(path.join(dir, 'boards'))).toEqual(['pi-1.tftp.json']);
    for (const broken of ['{ not json', '"8"', '{"8": {"mbps": "fast"}, "3": {"mbps": 9}}']) {
      await writeFile(path.join(dir, 'boards', 'pi-1.tftp.json'), broken);
      expect(await store.read('pi-1')).toEqual({});
    }
  });
});
