/**
 * Issue 13 item 1 through the bundled action on the simulated lab: a `.bmap` beside the image is
 * found and sent (`bmap` input `auto`), the board writes only what it maps, and the job summary
 * says how much of the image that was and what travelled to the board; `bmap: none` falls back to
 * the agent's own zero detection.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { runAction, TEST_TIMEOUT_MS } from './run-action.js';
import { LAB_TOKEN, startLab, type Lab } from '../support/lab.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;
let lab: Lab | undefined;
let workspace: string | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
  if (workspace) rmSync(workspace, { recursive: true, force: true });
  workspace = undefined;
});

/** sdcard.img: 2 MiB of the sample, holes, and 1 MiB of zeros written out at 4 MiB; sdcard.img.bmap beside it. */
async function makeWorkspace(l: Lab): Promise<string> {
  workspace = mkdtempSync(path.join(tmpdir(), 'action-bmap-'));
  const image = path.join(workspace, 'sdcard.img');
  const sample = readFileSync((await l.image('sample.img', 2 * MiB)).path);
  const handle = await open(image, 'w');
  try {
    await handle.write(sample, 0, sample.length, 0);
    await handle.write(Buffer.alloc(MiB), 0, MiB, 4 * MiB);
    await handle.truncate(8 * MiB);
  } finally {
    await handle.close();
  }
  await execFileAsync('bmaptool', ['create', '-o', `${image}.bmap`, image]);
  return workspace;
}

const act = (l: Lab, dir: string, extra: Record<string, string> = {}) =>
  runAction({
    workspace: dir,
    inputs: { 'agent-url': l.agent.url, token: LAB_TOKEN, image: 'sdcard.img', target: 'pi-b', ...extra },
  });

describe('the action with a block map', () => {
  it(
    'finds sdcard.img.bmap, the board writes what it maps, the summary says so',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      lab = await startLab({ boards: [{ name: 'pi-b', mac: '02:00:00:00:0e:01' }] });
      const dir = await makeWorkspace(lab);
      const r = await act(lab, dir);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain(`Block map ${path.join(dir, 'sdcard.img.bmap')}`);
      // The map counts the 1 MiB of zeros that were written out: 3 MiB mapped.
      expect(r.outputs['bytes-written']).toBe(String(3 * MiB));
      expect(r.summary).toMatch(/Mapped \/ image.*3\.0 MiB of 8\.0 MiB \(37\.5 %\)/);
      expect(r.summary).toMatch(/Sent to the board/);
    },
  );

  it("bmap: none leaves it to the agent's zero detection", { timeout: TEST_TIMEOUT_MS }, async () => {
    lab = await startLab({ boards: [{ name: 'pi-b', mac: '02:00:00:00:0e:02' }] });
    const dir = await makeWorkspace(lab);
    const r = await act(lab, dir, { bmap: 'none' });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.outputs['bytes-written']).toBe(String(2 * MiB));
  });

  it('a bmap path that does not exist fails the step before connecting', { timeout: TEST_TIMEOUT_MS }, async () => {
    lab = await startLab({ boards: [{ name: 'pi-b', mac: '02:00:00:00:0e:03' }] });
    const dir = await makeWorkspace(lab);
    const r = await act(lab, dir, { bmap: 'missing.bmap' });
    expect(r.code).toBe(1);
    expect(r.outputs['result-code']).toBe('INPUT_INVALID');
    expect(r.stdout).toMatch(/bmap: no file at missing\.bmap/);
  });
});
