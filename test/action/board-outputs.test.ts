/**
 * The bundled action's `board` and `agent` outputs, and its answer for a board out of service, against
 * the real agent on the simulated lab: a `label:` target needs no board name in the workflow, and
 * the outputs say which board and which agent ran the job.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runAction, TEST_TIMEOUT_MS } from './run-action.js';
import { LAB_TOKEN, startLab, type Lab } from '../support/lab.js';

let lab: Lab | undefined;
let workspace: string | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
  if (workspace) rmSync(workspace, { recursive: true, force: true });
  workspace = undefined;
});

async function makeWorkspace(l: Lab): Promise<string> {
  workspace = mkdtempSync(path.join(tmpdir(), 'action-boards-'));
  const sample = await l.image('sample.img', 1024 * 1024);
  writeFileSync(path.join(workspace, 'sdcard.img'), readFileSync(sample.path));
  return workspace;
}

const act = (l: Lab, dir: string, target: string) =>
  runAction({ workspace: dir, inputs: { 'agent-url': l.agent.url, token: LAB_TOKEN, image: 'sdcard.img', target } });

describe('the action on a lab of pools', () => {
  it(
    'a label: target runs on a board of the pool; outputs board and agent say which',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      lab = await startLab({
        boards: [
          { name: 'pi3-a', mac: '02:00:00:00:06:0a', labels: 'pi3' },
          { name: 'pi4-a', mac: '02:00:00:00:06:0b', labels: 'pi4 lab-a' },
        ],
        config: { name: 'lab-server-2' },
      });
      const dir = await makeWorkspace(lab);
      const r = await act(lab, dir, 'label:pi4');
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.outputs).toMatchObject({
        result: 'success',
        board: 'pi4-a',
        'target-name': 'pi4-a',
        agent: 'lab-server-2',
      });
      expect(r.summary).toContain('lab-server-2');
    },
  );

  it(
    'a board in maintenance fails the step at once with BOARD_IN_MAINTENANCE, naming the agent',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      lab = await startLab({ boards: [{ name: 'pi-m', mac: '02:00:00:00:06:0c' }], config: { name: 'lab-server-3' } });
      lab.agent.service.boards.set('pi-m', 'maintenance', 'new power supply');
      const dir = await makeWorkspace(lab);
      const started = Date.now();
      const r = await act(lab, dir, 'pi-m');
      expect(r.code, r.stdout + r.stderr).toBe(1);
      expect(r.outputs).toMatchObject({ 'result-code': 'BOARD_IN_MAINTENANCE', board: '', agent: 'lab-server-3' });
      expect(r.stdout).toMatch(
        /::error title=rpi-flash failed during queue%3A BOARD_IN_MAINTENANCE::.*new power supply/,
      );
      // At once, not after queue-timeout (its default is 30 minutes).
      expect(Date.now() - started).toBeLessThan(TEST_TIMEOUT_MS / 2);
    },
  );
});
