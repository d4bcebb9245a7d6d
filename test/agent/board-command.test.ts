/**
 * `rpi-flash-agent board` as an operator runs it: the CLI forked as its own process, reading a config
 * file, talking to a real agent (the simulated lab) over loopback with the config's token.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LAB_TOKEN, startLab, type Lab } from '../support/lab.js';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';

const CLI = path.resolve('runner-agent/src/cli.ts');
let lab: Lab | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

/**
 * The CLI with `args`; it answers process.getuid() with 1000, so what runs is what a non-root
 * operator gets (CI and these sessions run as root).
 */
async function board(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const proc = spawn(
    process.execPath,
    ['--import', 'tsx', '--import', 'data:text/javascript,process.getuid=()=>1000', CLI, 'board', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const [code] = (await once(proc, 'exit')) as [number | null];
  return { code, out, err };
}

/** A config file for the CLI: the agent's listen address and token, as the packaged config holds them. */
async function configFor(l: Lab, token = LAB_TOKEN): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'board-cli-'));
  dirs.push(dir);
  const port = Number(new URL(l.agent.url).port);
  const file = path.join(dir, 'config.json');
  await writeFile(
    file,
    JSON.stringify({ token, targets: 'targets.csv', listen: { host: '0.0.0.0', port }, stateDir: dir }),
  );
  return file;
}

describe('rpi-flash-agent board', () => {
  it('--help says the usage and the exit codes; bad arguments exit 2', async () => {
    const help = await board(['--help']);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/rpi-flash-agent board \[options\] TARGET maintenance/);
    expect(help.out).toMatch(/Exit codes: 0 done \(health: passed\), 1 health failed, 2 bad arguments or config/);
    const bad = await board(['pi-a', 'reboot']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/expected TARGET maintenance\|resume\|health\|status or list, got "pi-a reboot"/);
    const noConfig = await board(['--config', '/nonexistent/config.json', 'list']);
    expect(noConfig.code).toBe(2);
    expect(noConfig.err).toMatch(/config file \/nonexistent\/config.json does not exist/);
  }, 60_000);

  it('takes a board out and back, lists the boards, and refuses a wrong token (exit 3)', async () => {
    lab = await startLab({
      boards: [
        { name: 'pi-a', mac: '02:00:00:00:07:0a' },
        { name: 'pi-b', mac: '02:00:00:00:07:0b' },
      ],
    });
    const config = await configFor(lab);
    const out = await board(['--config', config, 'pi-a', 'maintenance', '--reason', 'reseating the card']);
    expect(out.code, out.err).toBe(0);
    expect(out.out).toMatch(/^pi-a +maintenance +since \S+ .*— maintenance reseating the card/m);
    expect(lab.agent.service.boards.get('pi-a')!.state).toBe('maintenance');
    // The agent logged who asked.
    expect(
      lab.logs.some((r) => r.msg === 'board request' && String(r.fields.client).startsWith('rpi-flash-agent board')),
    ).toBe(true);

    const list = await board(['--config', config, 'list']);
    expect(list.code, list.err).toBe(0);
    expect(
      list.out
        .trim()
        .split('\n')
        .map((l) => l.split(/\s+/).slice(0, 2).join(' ')),
    ).toEqual(['pi-a maintenance', 'pi-b idle']);
    const json = await board(['--config', config, '--json', 'pi-a', 'resume']);
    expect(json.code, json.err).toBe(0);
    expect(JSON.parse(json.out)).toMatchObject({ boards: [{ name: 'pi-a', state: 'idle' }] });

    const unknown = await board(['--config', config, 'pi-zz', 'status']);
    expect(unknown.code).toBe(3);
    expect(unknown.err).toMatch(/UNKNOWN_TARGET: no target "pi-zz"/);
    const wrong = await board(['--config', await configFor(lab, 'not-the-token-0123456789'), 'list']);
    expect(wrong.code).toBe(3);
    expect(wrong.err).toMatch(/AUTH_FAILED/);
  }, 60_000);

  it('health waits for the check: exit 0 when it passes, 1 when it fails', async () => {
    const imageDir = await mkdtemp(path.join(os.tmpdir(), 'board-cli-img-'));
    try {
      const good = path.join(imageDir, 'known-good.img');
      await writeSampleImage(good, 1024 * 1024, 8);
      lab = await startLab({
        boards: [
          { name: 'fine', mac: '02:00:00:00:07:1a' },
          { name: 'dead', mac: '02:00:00:00:07:1b', reset: 'sim:no-show' },
        ],
        config: {
          health: { image: good },
          timeouts: { boardShow: 1, stall: 30, boot: 30, leaseGrace: 2, shutdown: 5 },
        },
      });
      const config = await configFor(lab);
      const passed = await board(['--config', config, 'fine', 'health']);
      expect(passed.code, passed.err).toBe(0);
      expect(passed.out).toMatch(/^health check passed\nfine +idle .*last health check passed/m);
      const failed = await board(['--config', config, 'dead', 'health']);
      expect(failed.code, failed.err).toBe(1);
      expect(failed.out).toMatch(/^health check failed: BOARD_NO_SHOW: /m);
      expect(failed.out).toMatch(/^dead +unhealthy .*last health check failed \(BOARD_NO_SHOW\)/m);
    } finally {
      await rm(imageDir, { recursive: true, force: true });
    }
  }, 90_000);
});
