/**
 * The DHCP responder in the agent's composition root (agent.ts): started when `dhcp.mode` is not
 * off, the targets database as its lookup (reloads included), closed in the stop order, a port it
 * cannot bind a start-up error, and full mode's subnet held to every row. The answering itself is
 * proven in a private network namespace (dhcp-scenario.ts `agent`): on the host nothing here
 * sends a DHCP datagram.
 */
import dgram from 'node:dgram';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startLab, targetsCsv, type Lab, type LabBoard } from '../support/lab.js';
import { needCommands, needNetns, runInNetns } from '../support/netns.js';
import { PI3_ROM_MAC, PI3_ROM_XID, PI4_EEPROM_MAC } from './dhcp-captures.js';
import type { ScenarioResult } from './dhcp-scenario.js';

const pi3: LabBoard = { name: 'pi3', mac: PI3_ROM_MAC, reset: 'cmd:true' };
const pi4: LabBoard = { name: 'pi4', mac: PI4_EEPROM_MAC, reset: 'cmd:true' };
const onLoopback = { address: '127.0.0.1', port: 0, serverIp: '127.0.0.1' };

describe('the agent and its DHCP responder', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });
  const lab = async (o: Parameters<typeof startLab>[0]): Promise<Lab> => {
    const l = await startLab(o);
    cleanup.push(() => l.stop());
    return l;
  };
  const tempDir = async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'dhcp-agent-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    return dir;
  };

  it('is not started when dhcp.mode is off (the default)', async () => {
    const l = await lab({ boards: [pi3] });
    expect(l.agent.dhcp).toBeUndefined();
    expect(l.logs.map((r) => r.msg)).not.toContain('DHCP responder listening');
  });

  it('in proxy mode it is started, exposed for jobs, and closed just before the TFTP server', async () => {
    const l = await startLab({ boards: [pi3], config: { dhcp: { mode: 'proxy', ...onLoopback } } });
    expect(l.agent.dhcp?.mode).toBe('proxy');
    expect(typeof l.agent.dhcp!.onAnswered(() => {})).toBe('function');
    await l.stop();
    const stops = l.logs.map((r) => r.msg).filter((m) => m.startsWith('stopping:'));
    expect(stops).toEqual([
      'stopping: refusing new work',
      'stopping: ending jobs and leases',
      'stopping: closing client connections',
      'stopping: closing the DHCP responder',
      'stopping: closing the TFTP server',
      'stopping: deleting staged target folders',
      'stopping: writing the board states',
      'stopping: closing the image store',
    ]);
  });

  it('a DHCP port it cannot bind stops the start with a clear error', async () => {
    const holder = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => holder.bind(0, '127.0.0.1', resolve));
    cleanup.push(() => new Promise<void>((resolve) => holder.close(() => resolve())));
    const port = holder.address().port;
    const dir = await tempDir();
    await expect(
      startLab({ dir, boards: [pi3], config: { dhcp: { mode: 'proxy', ...onLoopback, port } } }),
    ).rejects.toThrow(new RegExp(`DHCP responder cannot bind 127.0.0.1:${port}: bind EADDRINUSE`));
  });

  it('full mode refuses a targets database with a row outside dhcp.subnet, at the start and at a reload', async () => {
    const dir = await tempDir();
    // The lab's rows get 127/8 addresses.
    await expect(
      startLab({
        dir,
        boards: [pi3],
        config: { dhcp: { mode: 'full', ...onLoopback, serverIp: '10.77.0.1', subnet: '10.77.0.0/24' } },
      }),
    ).rejects.toThrow(
      /dhcp.subnet 10.77.0.0\/24 must hold every target's IP .*: pi3 \(127\.[0-9.]+, .*targets.csv:2\)/,
    );

    const l = await lab({ boards: [pi3], config: { dhcp: { mode: 'full', ...onLoopback, subnet: '127.0.0.0/8' } } });
    await writeFile(
      path.join(l.dir, 'targets.csv'),
      targetsCsv([pi3]) + `${pi4.name},${pi4.mac},10.1.2.3,cmd:true,,,\n`,
    );
    await expect(l.agent.reloadTargets()).rejects.toThrow(/must hold every target's IP .*: pi4 \(10\.1\.2\.3/);
    expect(l.agent.targets().map((t) => t.name)).toEqual(['pi3']);
  });

  it('in a network namespace it answers the boards of its targets CSV on port 67, reloads included', async (ctx) => {
    await needNetns(ctx);
    await needCommands(ctx, ['ip']);
    const { result } = await runInNetns<ScenarioResult>('test/netboot/dhcp-scenario.ts', { scenario: 'agent' });
    const log = result.log.join('\n');
    // The Pi 4 asked first, before its row existed: not answered.
    expect(result.replies![0]?.xid, log).toBe(PI3_ROM_XID);
    expect(result.answers.map((a) => `${a.board} ${a.kind} ${a.message}`)).toEqual([
      'pi3 pi3-rom OFFER',
      'pi4 pi-eeprom OFFER',
    ]);
    expect(log).toMatch(/"stopping: closing the DHCP responder"/);
    expect(result.log.some((l) => l.includes('DHCP responder listening') && l.includes('port=67'))).toBe(true);
  }, 90_000);
});
