/**
 * Issue 13 item 4 on the simulated lab: with flash.readCompare the board reads each part from its
 * card first and skips the ones it already holds; the agent counts them verified, not written.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startLab, type Lab } from '../support/lab.js';
import type { AgentMessage } from '../../src/protocol/messages.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

const MiB = 1024 * 1024;

describe('read-compare on the simulated lab', () => {
  it('re-flashing what the card holds writes nothing; a changed part is the only one written', async () => {
    lab = await startLab({
      boards: [{ name: 'pi-s', mac: '02:00:00:00:02:0a' }],
      config: { flash: { partSize: '1MiB', readCompare: true } },
    });
    const events: AgentMessage[] = [];
    const conn = await lab.connect((m) => events.push(m));
    const img = await lab.image('s.img', 3 * MiB, 31);
    const bytes = await readFile(img.path);
    await conn.lease('pi-s');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const first = await conn.flash({ sha256: img.sha256, bootCheck: 'none' });
    expect(first).toMatchObject({ code: 'OK', bytesWritten: img.size });

    // The card keeps the image but for one byte of part 2.
    const cardFile = path.join(lab.agent.config.stateDir, 'sim', 'pi-s.card');
    const card = await readFile(cardFile);
    card[MiB + 100]! ^= 0xff;
    await writeFile(cardFile, card);
    const from = events.length;
    await conn.lease('pi-s');
    const second = await conn.flash({ sha256: img.sha256, bootCheck: 'none' });
    expect(second).toMatchObject({ ok: true, code: 'OK', card: 'written', bytesWritten: MiB });
    expect(second.parts.map((p) => p.status)).toEqual(['ok', 'ok', 'ok']);
    const lines = events.slice(from).flatMap((e) => (e.type === 'log' ? [(e as { message: string }).message] : []));
    expect(lines.filter((l) => /^part \d\/3: already on the card/.test(l)).map((l) => l.slice(0, 8))).toEqual([
      'part 1/3',
      'part 3/3',
    ]);
    expect(lines).toContainEqual(expect.stringContaining('(2 of them already on the card: read and checked there'));
    expect(lines.filter((l) => /download started/.test(l))).toHaveLength(1);
    expect((await readFile(cardFile)).subarray(0, img.size).equals(bytes)).toBe(true);
  });
});
