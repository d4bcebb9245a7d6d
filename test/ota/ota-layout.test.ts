/**
 * Layout `ota` through the real agent on loopback, in its dry run: the agent (startAgent, TFTP on
 * 127.0.0.1 port 0), the image uploaded and flashed over the real protocol, and the generated
 * switch script run for real by this machine's busybox — its TFTP downloads of the parts, its
 * CRC checks, retries, `dd` writes, read-backs and beacons — writing a plain file instead of a
 * disk, without the kill, the pivot and the reboot (those run under QEMU: test/qemu/ota-agent.test.ts).
 * The board's shell is this machine's `sh`; only the probe's answer is a recorded aarch64 board's.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../../runner-agent/src/agent.js';
import { PROBE_COMMAND } from '../../runner-agent/src/board/ota-probe.js';
import { validateConfig } from '../../runner-agent/src/config.js';
import { otaLayout, type BoardShell } from '../../runner-agent/src/layouts/ota.js';
import { builtinLayouts } from '../../runner-agent/src/layouts/registry.js';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { writeSampleImage } from '../../runner-agent/src/sample-image.js';
import type { ExecResult } from '../../runner-agent/src/targets/ssh-session.js';
import { connectAgent } from '../../src/protocol/client.js';
import type { AgentMessage, JobResult } from '../../src/protocol/messages.js';
import { tftpFaults, type TftpFaultPlan } from '../qemu/agent-scenario.js';
import { sha256File } from '../support/lab.js';

const TOKEN = 'ota-layout-test-token-0123456789';
const MiB = 1024 * 1024;
const IMAGE_SIZE = 4 * MiB;
const DISK_SIZE = 6 * MiB;
/** The board's key columns: the dry run never logs in, but an ota row must have them. */
const HOST_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';

/** An aarch64 board's probe (trimmed): root on mmcblk0p2, /run a tmpfs, plenty of RAM, root login. */
const PROBE = `@@rpf-arch
aarch64
@@rpf-uid
0
@@rpf-sudo
no
@@rpf-meminfo
MemTotal:        3885396 kB
MemAvailable:    3601232 kB
@@rpf-mountinfo
22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw
26 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=777080k,mode=755
@@rpf-cmdline
console=serial0,115200 root=PARTUUID=4e639091-02 rootfstype=ext4 rootwait
@@rpf-ssh
127.0.0.1 51234 127.0.0.1 22
@@rpf-init
systemd
@@rpf-block
mmcblk0 179:0 disk block
mmcblk0p1 179:1 part mmcblk0
mmcblk0p2 179:2 part mmcblk0
@@rpf-end
`;

/** This machine's sh as the board's shell; the probe answered from PROBE. */
function localShell(): BoardShell {
  return {
    exec(command, o) {
      if (command === PROBE_COMMAND) return Promise.resolve({ code: 0, stdout: PROBE, stderr: '', dropped: false });
      return new Promise<ExecResult>((resolve, reject) => {
        const child = spawn('sh', ['-c', command], { stdio: ['pipe', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs);
        child.on('error', reject);
        child.on('close', (code) => {
          clearTimeout(timer);
          resolve({ code, stdout, stderr, dropped: false });
        });
        // A command that does not read its stdin may be gone before it is written: EPIPE, not a failure.
        child.stdin.on('error', () => {});
        child.stdin.end(o.stdin ?? '');
      });
    },
    close() {},
  };
}

interface DryJob {
  result: JobResult;
  log: string[];
  disk: Buffer;
  script: string;
  tftpPort: number;
}

let workDir = '';
let image: Buffer;
let imagePath = '';

beforeAll(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-ota-layout-'));
  imagePath = path.join(workDir, 'image.img');
  await writeSampleImage(imagePath, IMAGE_SIZE, 7);
  image = await readFile(imagePath);
});
afterAll(async () => {
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

/** One job on a fresh agent and a fresh "disk" (a file of 0x5a bytes). */
async function dryJob(name: string, o: { faults?: TftpFaultPlan } = {}): Promise<DryJob> {
  const dir = path.join(workDir, name);
  const root = path.join(dir, 'ram');
  const diskFile = path.join(dir, 'disk.img');
  await mkdir(dir);
  await writeFile(diskFile, Buffer.alloc(DISK_SIZE, 0x5a));
  await writeFile(
    path.join(dir, 'targets.csv'),
    'name,mac,ip,reset,layout,ssh,sshkey,hostkey\n' +
      `dry,02:00:00:00:00:0d,127.0.0.1,none,ota,root,${path.join(dir, 'no-key')},${HOST_KEY}\n`,
  );
  const config = await validateConfig(
    {
      listen: { host: '127.0.0.1', port: 0 },
      token: TOKEN,
      targets: 'targets.csv',
      // Port 0: the board must be told the port the server was given.
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      flash: { retries: 1 },
      timeouts: { boardShow: 30, stall: 30, boot: 5, leaseGrace: 5, shutdown: 5 },
      bootCheck: 'none',
      logLevel: 'debug',
      ota: { busybox: { arm64: '/usr/bin/busybox' }, partSize: '1MiB', serverAddress: '127.0.0.1' },
    },
    dir,
  );
  const records: LogRecord[] = [];
  const agent: RunningAgent = await startAgent(config, {
    log: createLogger({ level: 'debug', sink: (r) => records.push(r) }),
    layouts: {
      ...builtinLayouts,
      ota: otaLayout({ openShell: () => Promise.resolve(localShell()), dryRun: { disk: diskFile, root } }),
    },
    ...(o.faults ? { tftpFaults: tftpFaults(o.faults) } : {}),
  });
  const log: string[] = [];
  try {
    const onEvent = (m: AgentMessage) => {
      if (m.type === 'log') log.push(`${m.level} ${m.source} ${m.message}`);
    };
    const conn = await connectAgent({ url: agent.url, token: TOKEN, client: 'ota-layout-test', onEvent });
    try {
      await conn.lease('dry', { holder: 'ota-layout-test' });
      const sha256 = await sha256File(imagePath);
      await conn.upload({ path: imagePath, sha256, size: IMAGE_SIZE, compression: 'none' });
      const result = await conn.flash({ sha256, bootCheck: 'none', writeZeros: true });
      return {
        result,
        log,
        disk: await readFile(diskFile),
        script: await readFile(path.join(root, 'switch.sh'), 'utf8'),
        tftpPort: agent.tftp.port,
      };
    } finally {
      conn.close();
    }
  } finally {
    await agent.stop();
  }
}

function story(j: DryJob): string {
  return `\n--- result ---\n${JSON.stringify(j.result, null, 1)}\n--- job log ---\n${j.log.join('\n')}`;
}

describe('layout ota, dry run on loopback (the real agent, the switch script run by busybox)', () => {
  it('tells the board the TFTP port the server was given for port 0, and the file ends up the image', async () => {
    const j = await dryJob('port-0');
    try {
      expect(j.tftpPort).toBeGreaterThan(0);
      expect(j.script).toContain(`\nPORT=${j.tftpPort}\n`);
      expect(j.result).toMatchObject({ ok: true, code: 'OK', card: 'written', bytesWritten: IMAGE_SIZE });
      expect(j.result.parts.map((p) => p.status)).toEqual(['ok', 'ok', 'ok', 'ok']);
      expect(j.disk.subarray(0, IMAGE_SIZE).equals(image)).toBe(true);
      // Beyond the image nothing was written.
      expect(j.disk.subarray(IMAGE_SIZE).equals(Buffer.alloc(DISK_SIZE - IMAGE_SIZE, 0x5a))).toBe(true);
    } catch (err) {
      (err as Error).message += story(j);
      throw err;
    }
  }, 60_000);

  it('fetches a part that arrived corrupt once again; one corrupt every time is CARD_PARTLY_WRITTEN', async () => {
    const once = await dryJob('corrupt-once', { faults: { corrupt: { part: 2, block: 3, times: 'once' } } });
    const always = await dryJob('corrupt-always', { faults: { corrupt: { part: 3, block: 1, times: 'always' } } });
    try {
      expect(once.result).toMatchObject({ ok: true, code: 'OK', card: 'written' });
      expect(once.result.parts.map((p) => p.retries)).toEqual([0, 1, 0, 0]);
      expect(
        once.log.some((l) => /^warn board part 2: CRC mismatch \(board computed [0-9a-f]+\), retry 1$/.test(l)),
      ).toBe(true);
      expect(once.disk.subarray(0, IMAGE_SIZE).equals(image)).toBe(true);

      expect(always.result).toMatchObject({ ok: false, code: 'CARD_PARTLY_WRITTEN', card: 'partial' });
      expect(always.result.parts.map((p) => p.status)).toEqual(['ok', 'ok', 'failed', 'missing']);
      // Parts 1 and 2 are the image's, 3 and 4 as the disk was.
      expect(always.disk.subarray(0, 2 * MiB).equals(image.subarray(0, 2 * MiB))).toBe(true);
      expect(always.disk.subarray(2 * MiB, IMAGE_SIZE).equals(Buffer.alloc(2 * MiB, 0x5a))).toBe(true);
    } catch (err) {
      (err as Error).message += story(once) + story(always);
      throw err;
    }
  }, 120_000);
});
