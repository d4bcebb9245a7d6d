/**
 * A new layout is one file and one registry line: the `first-part` layout (first-part-layout.ts)
 * runs end to end on the simulated lab — the real agent, the real protocol, real TFTP, the
 * simulated board executing the stage-2 script the layout had generated.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { builtinLayouts } from '../../runner-agent/src/layouts/registry.js';
import { startLab, type Lab } from '../support/lab.js';
import { firstPart } from './first-part-layout.js';

const MiB = 1024 * 1024;
let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

describe('a layout added by one file and one registry line', () => {
  it('flashes only the first part on a simulated board, and the job passes on what it wrote', async () => {
    lab = await startLab({
      boards: [{ name: 'pi-a', mac: '02:00:00:00:01:0a', layout: 'first-part' }],
      start: { layouts: { ...builtinLayouts, 'first-part': firstPart } },
    });
    const conn = await lab.connect();
    const img = await lab.image('a.img', 3 * MiB, 21);
    await conn.lease('pi-a', { holder: 'test' });
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256 });

    expect(result).toMatchObject({ ok: true, code: 'OK', bytesWritten: MiB });
    expect(result.parts.map((p) => [p.part, p.status])).toEqual([[1, 'ok']]);
    // The card holds the image's first MiB and nothing of the rest: the layout decided what was written.
    const card = await readFile(path.join(lab.agent.config.stateDir, 'sim', 'pi-a.card'));
    const image = await readFile(img.path);
    expect(card.subarray(0, MiB).equals(image.subarray(0, MiB))).toBe(true);
    expect(card.subarray(MiB, 2 * MiB).equals(image.subarray(MiB, 2 * MiB))).toBe(false);
    const record = JSON.parse(
      await readFile(path.join(lab.agent.config.stateDir, 'jobs', `${result.job}.json`), 'utf8'),
    ) as { layout?: unknown };
    expect(record.layout).toBe('first-part');
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it('is refused in the targets database by an agent whose registry lacks it', async () => {
    await expect(
      startLab({ boards: [{ name: 'pi-a', mac: '02:00:00:00:01:0b', layout: 'first-part' }] }),
    ).rejects.toThrow(/unknown layout "first-part" \(expected inject, whole, seed, netflash, netboot, ota\)/);
  });
});
