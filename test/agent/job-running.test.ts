/**
 * A flash sent again on a resumed lease while its job runs (protocol 2): the real agent answers
 * `job-running` naming the first request and the job, starts no second job, and the repeated
 * request ends with the running job's result.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentMessage, PhaseEvent } from '../../src/protocol/messages.js';
import { startLab, type Lab } from '../support/lab.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

describe('a repeated flash on a lease whose job runs', () => {
  it('is answered job-running, and ends with the result of the job the first one started', async () => {
    // The board never shows up: the job runs for boardShow seconds, long enough to come back to it.
    lab = await startLab({
      boards: [{ name: 'ghost', mac: '02:00:00:00:02:01', reset: 'sim:no-show' }],
      config: { timeouts: { boardShow: 3, stall: 10, boot: 5, leaseGrace: 30, shutdown: 5 } },
    });
    const img = await lab.image('a.img', 1024 * 1024, 3);
    let onPhase!: (m: PhaseEvent) => void;
    const phase = new Promise<PhaseEvent>((resolve) => (onPhase = resolve));
    const conn = await lab.connect((m) => {
      if (m.type === 'phase') onPhase(m);
    });
    const { lease } = await conn.lease('ghost');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const flashing = conn.flash({ sha256: img.sha256 });
    flashing.catch(() => {});
    const started = await within(phase, 20_000, 'the job to start its first phase');

    // The connection goes; a new one takes the lease back and asks for the job again.
    conn.close();
    await expect(flashing).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
    const again: AgentMessage[] = [];
    const next = await lab.connect((m) => again.push(m));
    await next.lease('ghost', { lease });
    const result = await next.flash({ sha256: img.sha256 });

    expect(again.find((m) => m.type === 'job-running')).toEqual({
      type: 'job-running',
      re: expect.any(String) as string,
      flash: started.re,
      job: started.job,
    });
    expect(result).toMatchObject({ ok: false, code: 'BOARD_NO_SHOW', job: started.job });
    expect(lab.logs.filter((r) => r.msg === 'job started')).toHaveLength(1);
    expect(again.some((m) => m.type === 'error')).toBe(false);
  });
});

/** `promise`, or a failure naming what the test waited for. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`gave up after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
