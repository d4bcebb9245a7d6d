/**
 * TFTP download speed: our server against Debian's atftpd, both on loopback, measured with
 * Debian's atftp client at blksize 1468 and windowsize 1, 8 and 16 (what U-Boot would use).
 * Prints the median MB/s (10^6 bytes per second) of a few rounds and the ratio ours/atftpd, and
 * each server's CPU time per MB — a figure that other load on the machine disturbs much less than
 * wall-clock speed does.
 *
 *   npx tsx bench/tftp.ts [sizeMiB] [rounds]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { tftpGet } from '../runner-agent/src/tftp/client.js';
import { realFileResolver, TftpServer } from '../runner-agent/src/tftp/server.js';

const BLKSIZE = 1468;
const WINDOWS = [1, 8, 16];

async function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', () => resolve()));
  const { port } = s.address();
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** A file of `sizeMiB` MiB: random bytes, each MiB stamped with its index so no two are alike. */
async function writeTestFile(path: string, sizeMiB: number): Promise<number> {
  const block = randomBytes(1024 * 1024);
  const handle = await open(path, 'w');
  try {
    for (let i = 0; i < sizeMiB; i++) {
      block.writeUInt32BE(i, 0);
      await handle.write(block);
    }
  } finally {
    await handle.close();
  }
  return sizeMiB * 1024 * 1024;
}

function runAtftp(port: number, path: string, windowsize: number): Promise<number> {
  const args = [
    '--option',
    `blksize ${BLKSIZE}`,
    ...(windowsize > 1 ? ['--option', `windowsize ${windowsize}`] : []),
    '-g',
    '-r',
    path,
    '-l',
    '/dev/null',
    '127.0.0.1',
    String(port),
  ];
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn('atftp', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = performance.now() - started;
      if (code === 0) resolve(ms);
      else reject(new Error(`atftp ${args.join(' ')} exited ${code}: ${stderr.trim()}`));
    });
  });
}

async function startAtftpd(root: string, port: number): Promise<ChildProcess> {
  const child = spawn(
    'atftpd',
    [
      '--daemon',
      '--no-fork',
      '--port',
      String(port),
      '--bind-address',
      '127.0.0.1',
      '--user',
      userInfo().username,
      '--logfile',
      '/dev/null',
      root,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  // Ready when it serves a file.
  for (let i = 0; i < 50; i++) {
    if (child.exitCode !== null) throw new Error(`atftpd exited ${child.exitCode}: ${stderr.trim()}`);
    try {
      if (await tftpGet({ host: '127.0.0.1', port, path: 'ready', timeoutMs: 200, retries: 0 })) return child;
    } catch {
      // not up yet
    }
  }
  child.kill();
  throw new Error(`atftpd did not start on port ${port}: ${stderr.trim()}`);
}

/** CPU time (user + system, ms) a process has used so far, threads included. */
async function processCpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 (utime, stime) counted from 1; the slice starts at field 3.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}
const CLOCK_TICKS = 100;

function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export async function runTftpBench(opts: { sizeMiB?: number; rounds?: number } = {}): Promise<void> {
  const sizeMiB = opts.sizeMiB ?? 256;
  const rounds = opts.rounds ?? 3;
  const tmp = await mkdtemp(join(tmpdir(), 'tftp-bench-'));
  let atftpd: ChildProcess | undefined;
  const server = new TftpServer({ address: '127.0.0.1', port: 0, resolver: realFileResolver(join(tmp, 'root')) });
  try {
    await mkdir(join(tmp, 'root'));
    const size = await writeTestFile(join(tmp, 'root', 'big.bin'), sizeMiB);
    await writeFile(join(tmp, 'root', 'ready'), 'ready');
    const ours = (await server.listen()).port;
    atftpd = await startAtftpd(join(tmp, 'root'), await freeUdpPort());
    const theirs = Number(atftpd.spawnargs[atftpd.spawnargs.indexOf('--port') + 1]);
    console.log(
      `TFTP bench: ${sizeMiB} MiB file, blksize ${BLKSIZE}, atftp client, ${rounds} rounds (median), loopback`,
    );
    const rows: Array<{ windowsize: number; ours: number; atftpd: number; oursCpu: number; atftpdCpu: number }> = [];
    const atftpdPid = atftpd.pid!;
    for (const windowsize of WINDOWS) {
      const times = {
        ours: [] as number[],
        atftpd: [] as number[],
        oursCpu: [] as number[],
        atftpdCpu: [] as number[],
      };
      for (let r = 0; r < rounds; r++) {
        // Alternate servers so drift on a shared machine hits both alike.
        let cpu = ownCpuMs();
        times.ours.push(await runAtftp(ours, 'big.bin', windowsize));
        times.oursCpu.push(ownCpuMs() - cpu);
        cpu = await processCpuMs(atftpdPid);
        times.atftpd.push(await runAtftp(theirs, 'big.bin', windowsize));
        times.atftpdCpu.push((await processCpuMs(atftpdPid)) - cpu);
      }
      const mbps = (ms: number) => size / 1e6 / (ms / 1000);
      const perMB = (ms: number) => ms / (size / 1e6);
      rows.push({
        windowsize,
        ours: mbps(median(times.ours)),
        atftpd: mbps(median(times.atftpd)),
        oursCpu: perMB(median(times.oursCpu)),
        atftpdCpu: perMB(median(times.atftpdCpu)),
      });
    }
    console.log('windowsize   ours MB/s   atftpd MB/s   ours/atftpd   ours CPU ms/MB   atftpd CPU ms/MB');
    for (const row of rows) {
      console.log(
        [
          String(row.windowsize).padStart(10),
          row.ours.toFixed(1).padStart(9),
          row.atftpd.toFixed(1).padStart(11),
          (row.ours / row.atftpd).toFixed(2).padStart(11),
          row.oursCpu.toFixed(2).padStart(14),
          row.atftpdCpu.toFixed(2).padStart(16),
        ].join('   '),
      );
    }
  } finally {
    atftpd?.kill();
    await server.close();
    await rm(tmp, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [sizeMiB, rounds] = process.argv.slice(2).map(Number);
  runTftpBench({ sizeMiB: sizeMiB || undefined, rounds: rounds || undefined }).catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
