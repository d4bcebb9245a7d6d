/**
 * NBD read speed on loopback: the agent's per-job export (`startNbdExport`: nbdkit's file plugin
 * under the cow and partition filters as a network-boot job runs it, behind the agent's front door
 * that admits only the board's address) against Debian's nbd-server serving the same image file
 * read-only, both read start to end by the same client (`nbdcopy … null:`), with one connection
 * (what the kernel's nbd-client opens) and with nbdcopy's default four. A third row, nbdkit with the
 * same filters listening on TCP itself, shows what the front door's relay costs.
 *
 * Prints the median MB/s (10^6 bytes per second) of a few rounds, the ratio agent/nbd-server (goal
 * ≥ 0.8×) and each server's CPU time per MB (from /proc/<pid>/stat: nbdkit's threads; for the agent
 * also this process's own CPU, where the relay runs; nbd-server's per-connection children as the
 * daemon reaps them) — a figure that other load on the machine disturbs less than wall-clock speed.
 *
 *   npx tsx bench/nbd.ts [sizeMiB] [rounds]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { silentLogger } from '../runner-agent/src/log.js';
import { startNbdExport, type NbdExport } from '../runner-agent/src/netboot/nbd-export.js';

const MiB = 1024 * 1024;
/** Where the partition starts, as on a Raspberry Pi OS image's first partition. */
const PART_OFFSET = 4 * MiB;
const CLOCK_TICKS = 100;

/** An MBR image with one partition of `sizeMiB` MiB of random bytes, each MiB stamped with its index. */
async function writeImage(path: string, sizeMiB: number): Promise<void> {
  const mbr = Buffer.alloc(512);
  mbr[446 + 4] = 0x83;
  mbr.writeUInt32LE(PART_OFFSET / 512, 446 + 8);
  mbr.writeUInt32LE((sizeMiB * MiB) / 512, 446 + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const handle = await open(path, 'w');
  try {
    await handle.write(mbr, 0, 512, 0);
    const block = randomBytes(MiB);
    for (let i = 0; i < sizeMiB; i++) {
      block.writeUInt32BE(i, 0);
      await handle.write(block, 0, MiB, PART_OFFSET + i * MiB);
    }
  } finally {
    await handle.close();
  }
}

/** CPU time (user + system, ms) of a process so far, with its children that it has reaped. */
async function processCpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime, stime, cutime, cstime: fields 14-17 counted from 1; the slice starts at field 3.
  return ((Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 1000) / CLOCK_TICKS;
}

function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

async function childrenOf(pid: number): Promise<number> {
  let n = 0;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) n++;
  }
  return n;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Reads the whole export with nbdcopy; resolves with the milliseconds it took. */
function nbdcopy(uri: string, connections: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn('nbdcopy', [`--connections=${connections}`, uri, 'null:'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve(performance.now() - started) : reject(new Error(`nbdcopy ${uri} exited ${code}: ${stderr}`)),
    );
  });
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

async function waitForListener(port: number, what: string, child: ChildProcess | undefined): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (child && child.exitCode !== null) throw new Error(`${what} exited ${child.exitCode}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${what} did not listen on port ${port}`);
}

/** Debian's nbd-server, read-only, as a non-root daemon on a port of its own (its pid from -p). */
async function startNbdServer(dir: string, image: string): Promise<{ pid: number; uri: string; stop(): void }> {
  const port = await freePort();
  const config = join(dir, 'nbd-server.conf');
  const pidFile = join(dir, 'nbd-server.pid');
  const lines = ['[generic]', `port = ${port}`, 'listenaddr = 127.0.0.1', '[bench]', `exportname = ${image}`];
  await writeFile(config, [...lines, 'readonly = true', ''].join('\n'));
  const launcher = spawn('nbd-server', ['-C', config, '-p', pidFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  launcher.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    launcher.on('error', reject);
    launcher.on('close', resolve);
  });
  if (code !== 0) throw new Error(`nbd-server exited ${code}: ${stderr}`);
  await waitForListener(port, 'nbd-server', undefined);
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  return { pid, uri: `nbd://127.0.0.1:${port}/bench`, stop: () => process.kill(pid, 'SIGTERM') };
}

/** nbdkit with the job's filters on TCP itself, without the agent's front door: the relay's cost. */
async function startBareNbdkit(image: string): Promise<{ child: ChildProcess; uri: string }> {
  const port = await freePort();
  const bare = spawn(
    'nbdkit',
    [
      '-f',
      '--exit-with-parent',
      '-i',
      '127.0.0.1',
      '-p',
      String(port),
      '--filter=cow',
      '--filter=partition',
      'file',
      `file=${image}`,
      'partition=1',
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  await waitForListener(port, 'nbdkit', bare);
  return { child: bare, uri: `nbd://127.0.0.1:${port}/` };
}

interface Row {
  label: string;
  connections: number;
  ms: Record<'agent' | 'nbdServer' | 'bare', number[]>;
  cpu: Record<'agent' | 'nbdServer' | 'bare', number[]>;
}

export async function runNbdBench(opts: { sizeMiB?: number; rounds?: number } = {}): Promise<void> {
  const sizeMiB = opts.sizeMiB ?? 512;
  const rounds = opts.rounds ?? 3;
  const dir = await mkdtemp(join(tmpdir(), 'nbd-bench-'));
  const image = join(dir, 'image.img');
  let agent: NbdExport | undefined;
  let nbdServer: Awaited<ReturnType<typeof startNbdServer>> | undefined;
  let bare: Awaited<ReturnType<typeof startBareNbdkit>> | undefined;
  try {
    await writeImage(image, sizeMiB);
    agent = await startNbdExport({
      image,
      partition: 1,
      bindAddress: '127.0.0.1',
      allowFrom: '127.0.0.1',
      overlayDir: join(dir, 'state', 'nbd', 'bench-job'),
      log: silentLogger,
    });
    nbdServer = await startNbdServer(dir, image);
    bare = await startBareNbdkit(image);
    const partBytes = sizeMiB * MiB;
    const imageBytes = PART_OFFSET + partBytes;
    console.log(
      `NBD bench: ${sizeMiB} MiB partition (nbd-server serves the ${(imageBytes / MiB).toFixed(0)} MiB image file), ` +
        `nbdcopy to null:, ${rounds} rounds (median), loopback`,
    );

    const rows: Row[] = [];
    for (const connections of [1, 4]) {
      const row: Row = {
        label: connections === 1 ? '1 connection' : `${connections} connections`,
        connections,
        ms: { agent: [], nbdServer: [], bare: [] },
        cpu: { agent: [], nbdServer: [], bare: [] },
      };
      for (let r = 0; r < rounds; r++) {
        // Alternate servers so drift on a shared machine hits them alike.
        let nbdkitCpu = await processCpuMs(agent.pid);
        let own = ownCpuMs();
        row.ms.agent.push(await nbdcopy(agent.uri, connections));
        row.cpu.agent.push((await processCpuMs(agent.pid)) - nbdkitCpu + (ownCpuMs() - own));

        const serverCpu = await processCpuMs(nbdServer.pid);
        row.ms.nbdServer.push(await nbdcopy(nbdServer.uri, connections));
        // Its per-connection children count once the daemon has reaped them.
        for (let i = 0; i < 200 && (await childrenOf(nbdServer.pid)) > 0; i++)
          await new Promise((t) => setTimeout(t, 10));
        row.cpu.nbdServer.push((await processCpuMs(nbdServer.pid)) - serverCpu);

        nbdkitCpu = await processCpuMs(bare.child.pid!);
        own = ownCpuMs();
        row.ms.bare.push(await nbdcopy(bare.uri, connections));
        row.cpu.bare.push((await processCpuMs(bare.child.pid!)) - nbdkitCpu);
      }
      rows.push(row);
    }

    const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);
    const perMB = (bytes: number, ms: number) => ms / (bytes / 1e6);
    console.log(
      'clients          agent MB/s   nbd-server MB/s   agent/nbd-server   bare nbdkit MB/s   ' +
        'agent CPU ms/MB   nbd-server CPU ms/MB   bare nbdkit CPU ms/MB',
    );
    for (const row of rows) {
      const agentMbps = mbps(partBytes, median(row.ms.agent));
      const serverMbps = mbps(imageBytes, median(row.ms.nbdServer));
      console.log(
        [
          row.label.padEnd(13),
          agentMbps.toFixed(0).padStart(10),
          serverMbps.toFixed(0).padStart(15),
          `${(agentMbps / serverMbps).toFixed(2)}x`.padStart(16),
          mbps(partBytes, median(row.ms.bare)).toFixed(0).padStart(16),
          perMB(partBytes, median(row.cpu.agent)).toFixed(2).padStart(15),
          perMB(imageBytes, median(row.cpu.nbdServer)).toFixed(2).padStart(20),
          perMB(partBytes, median(row.cpu.bare)).toFixed(2).padStart(21),
        ].join('   '),
      );
    }
    console.log('(goal: agent/nbd-server >= 0.8x; agent CPU = nbdkit + the front door relay in the agent)');
  } finally {
    await agent?.stop();
    nbdServer?.stop();
    bare?.child.kill();
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [sizeMiB, rounds] = process.argv.slice(2).map(Number);
  runNbdBench({ sizeMiB: sizeMiB || undefined, rounds: rounds || undefined }).catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
