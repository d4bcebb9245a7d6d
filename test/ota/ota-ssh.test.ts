/**
 * The SSH side of the in-place update against a real dropbear on loopback (dropbear.ts), running
 * the machine's real commands: a host key that is not the pinned one refuses before login, a key
 * the server does not accept is SSH_FAILED, the probe runs for real and the layout refuses this
 * x86 machine as BOARD_UNFIT without touching anything, and the ssh reset runs its command (a
 * harmless one here) or falls back to the hard reset when nothing answers.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBoardProbe, PROBE_COMMAND, rootDevice } from '../../runner-agent/src/board/ota-probe.js';
import { createLogger } from '../../runner-agent/src/log.js';
import { createSshResetLine } from '../../runner-agent/src/reset/ssh.js';
import type { Target } from '../../runner-agent/src/targets/database.js';
import { parseHostKeyPin, type SshAccess } from '../../runner-agent/src/targets/ssh-access.js';
import { SshSession } from '../../runner-agent/src/targets/ssh-session.js';
import { startDropbear, TEST_USER, type DropbearServer } from './dropbear.js';

const OTHER_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';
let server: DropbearServer;
let access: SshAccess;

beforeAll(async () => {
  server = await startDropbear();
  access = {
    user: TEST_USER,
    port: server.port,
    keyFile: server.clientKey,
    hostKey: parseHostKeyPin(server.hostKeyLine),
  };
});
afterAll(async () => {
  await server?.close();
});

function target(a: SshAccess = access): Target {
  return {
    name: 'ota-a',
    mac: '02:00:00:00:00:0a',
    ip: '127.0.0.1',
    reset: { kind: 'ssh' },
    resetText: 'ssh',
    labels: [],
    ssh: a,
    source: { file: 't.csv', line: 2 },
  };
}

describe('ssh with a pinned host key, against dropbear', () => {
  it('logs in with the pinned key line and runs real commands', async () => {
    const s = await SshSession.connect('127.0.0.1', access, { timeoutMs: 10_000 });
    const r = await s.exec('cat > "$HOME/up" && wc -c < "$HOME/up"', {
      stdin: Buffer.alloc(300_000, 7),
      timeoutMs: 10_000,
    });
    s.close();
    expect(r).toMatchObject({ code: 0, dropped: false });
    expect(r.stdout.trim()).toBe('300000');
  });

  it('refuses another host key before authenticating: SSH_HOST_KEY_MISMATCH, nothing run', async () => {
    const err = await SshSession.connect(
      '127.0.0.1',
      { ...access, hostKey: parseHostKeyPin(OTHER_KEY) },
      { timeoutMs: 10_000 },
    ).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'SSH_HOST_KEY_MISMATCH', answered: true });
    expect((err as Error).message).toMatch(/presented the host key ssh-ed25519 SHA256:.*pins ssh-ed25519 SHA256:/);
  });

  it('a key the board does not accept is SSH_FAILED; a closed port is SSH_FAILED, unanswered', async () => {
    await expect(
      SshSession.connect('127.0.0.1', { ...access, keyFile: server.strangerKey }, { timeoutMs: 10_000 }),
    ).rejects.toMatchObject({
      code: 'SSH_FAILED',
      answered: true,
    });
    await expect(SshSession.connect('127.0.0.1', { ...access, port: 1 }, { timeoutMs: 10_000 })).rejects.toMatchObject({
      code: 'SSH_FAILED',
      answered: false,
    });
  });

  it("runs the probe for real: this machine's architecture and root are read from its own /proc", async () => {
    const s = await SshSession.connect('127.0.0.1', access, { timeoutMs: 10_000 });
    const r = await s.exec(PROBE_COMMAND, { timeoutMs: 20_000 });
    s.close();
    const p = parseBoardProbe(r.stdout);
    expect(p.complete).toBe(true);
    expect(p.machine).toBe(process.arch === 'x64' ? 'x86_64' : p.machine);
    expect(p.uid).toBe(0);
    expect(p.memAvailable).toBeGreaterThan(0);
    expect(p.sshClientAddress).toBe('127.0.0.1');
    expect(p.mounts.some((m) => m.mountPoint === '/')).toBe(true);
    expect(rootDevice(p)).toBeDefined();
  });
});

describe('reset ssh', () => {
  const log = createLogger({ level: 'error', sink: () => {} });
  it('runs its command over ssh (the test passes a harmless one for reboot)', async () => {
    const line = createSshResetLine(target(), { log, pulseMs: 1 }, undefined, { command: 'touch "$HOME/rebooted"' });
    await line.pulse();
    expect(existsSync(path.join(server.dir, 'home', 'rebooted'))).toBe(true);
  });
  it('falls back to the hard reset when ssh does not answer, and fails with the code without one', async () => {
    let pulses = 0;
    const hard = { describe: () => 'hard', pulse: async () => void pulses++, close: async () => {} };
    const silent = target({ ...access, port: 1 });
    await createSshResetLine(silent, { log, pulseMs: 1 }, hard, { command: 'true' }).pulse();
    expect(pulses).toBe(1);
    await expect(
      createSshResetLine(silent, { log, pulseMs: 1 }, undefined, { command: 'true' }).pulse(),
    ).rejects.toMatchObject({
      code: 'SSH_FAILED',
    });
  });
});

it('the test server holds its user in a temp home', async () => {
  expect(await readFile(path.join(server.dir, 'home', '.ssh', 'authorized_keys'), 'utf8')).toMatch(/^ssh-ed25519 /);
});
