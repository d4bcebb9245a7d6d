/**
 * A slow card is not a stall (issue 9, item 6): the simulated board is silent while its card
 * writes a part (`sim:slow-card:<KiB/s>`), as a real board is during `mmc write`. The silence the
 * agent allows is the part at `flash.cardWriteRate`; past that it gives up and says the card holds
 * a partial image. A job with no boot check does not claim the system booted.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentMessage } from '../../src/protocol/messages.js';
import { startLab, type Lab } from '../support/lab.js';

const MiB = 1024 * 1024;
let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

async function flashSlowCard(o: { cardKiBps: number; cardWriteRate: string }) {
  lab = await startLab({
    boards: [{ name: 'pi-s', mac: '02:00:00:00:0e:01', reset: `sim:slow-card:${o.cardKiBps}` }],
    config: {
      flash: { partSize: '1MiB', retries: 2, cardWriteRate: o.cardWriteRate },
      // One second of TFTP silence is a stall; only the card's own time may stretch it.
      timeouts: { boardShow: 10, stall: 1, boot: 5, leaseGrace: 2, shutdown: 5 },
    },
  });
  const events: AgentMessage[] = [];
  const conn = await lab.connect((m) => events.push(m));
  const img = await lab.image('s.img', 2 * MiB, 3);
  await conn.lease('pi-s', { holder: 'test' });
  await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
  const result = await conn.flash({ sha256: img.sha256, bootCheck: 'none' });
  const log = events.flatMap((e) => (e.type === 'log' ? [e.message] : []));
  return { result, log };
}

describe('a board whose card writes slowly', () => {
  it('passes a card no slower than flash.cardWriteRate, and the log says how long it may be silent', async () => {
    // 2 s of silent writing per part, against a 1 s stall: allowed, 2 × 1 MiB at 256 KiB/s = 8 s.
    const { result, log } = await flashSlowCard({ cardKiBps: 512, cardWriteRate: '256KiB' });
    expect(result).toMatchObject({ ok: true, code: 'OK', bytesWritten: 2 * MiB });
    expect(log).toContain(
      'part 1/2: the board writes and reads back 1.0 MiB (at 256.0 KiB/s, the slowest card): allowing 8 s of silence',
    );
    expect(result.message).toBe('flashed and verified; no boot check ran (boot check none)');
  }, 60_000);

  it('gives up on a card slower than that with BOARD_TIMEOUT, saying the card holds a partial image', async () => {
    // 4 s of silent writing per part; allowed: 2 × 1 MiB at 2 MiB/s = 1 s, then the 1 s stall.
    const { result } = await flashSlowCard({ cardKiBps: 256, cardWriteRate: '2MiB' });
    expect(result).toMatchObject({ ok: false, code: 'BOARD_TIMEOUT' });
    expect(result.message).toMatch(/went quiet for 1 s during part 1\/2/);
    expect(result.message).toMatch(/the card holds a partly written image and may not boot/);
  }, 60_000);
});
