/**
 * A network-boot job's root file system as an NBD export: Debian's `nbdkit` serves the stored
 * image's own bytes (the file plugin, opened read-only beneath the cow filter), one partition of
 * it (the partition filter) or a byte range (the offset filter), with the cow filter on top so the
 * board may write: its writes go to a temporary file in the job's overlay directory and never to
 * the image, so every job starts from the same bytes. All connections of one export share that
 * overlay (nbdkit-cow-filter(1)), so a client that reconnects mid-boot sees what it wrote.
 *
 * Who may connect is decided here, not by nbdkit's ip filter: in Debian 12's nbdkit 1.32.5 that
 * filter cannot parse any address (`allow=192.168.1.20` fails with "don't know how to parse rule";
 * `parse_ip_address` is compiled under `#ifdef INET_PTON`, a macro nothing defines, so it always
 * returns 0 — checked in the shipped .so, which imports no inet_pton). So nbdkit listens only on a
 * Unix socket in the overlay directory (mode 0700, its ip filter admitting the agent's own uid, the
 * one rule kind that build parses), and the agent listens on the lab address, on a port the kernel
 * picks (port 0: no race), admits the board's address only and relays its bytes to that socket.
 * Measured on loopback (bench/nbd.ts) the relay costs less than a per-connection `nbdkit -s nbd`
 * relay would, and it keeps the board's traffic on one listening port the agent owns.
 *
 * nbdkit runs in the foreground as the agent's child with --exit-with-parent (it dies with the
 * agent) and never as root (the agent is not root). Its cow filter keeps the overlay in an
 * unlinked temporary file under $TMPDIR, which is set to the overlay directory, so the overlay's
 * space is the job's and vanishes with the process; `stop()` also removes the directory.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, chmod, mkdir, open, readdir, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import { delimiter, isAbsolute, join } from 'node:path';
import type { Readable } from 'node:stream';
import { CodedError } from '../../../src/protocol/errors.js';
import { parseMbr, SECTOR } from '../image/mbr.js';
import type { Logger } from '../log.js';

export interface NbdExportOptions {
  /** The stored image; opened read-only, never written. */
  image: string;
  /** An MBR primary partition (1–4) to export instead of the whole image (nbdkit's partition filter). */
  partition?: number;
  /** A byte range to export instead (nbdkit's offset filter); `size` defaults to the rest of the image. */
  offset?: number;
  size?: number;
  /** The lab interface's address the export listens on. */
  bindAddress: string;
  /** The board's address: the only peer admitted. */
  allowFrom: string;
  /**
   * The job's own directory under the agent's state directory: nbdkit's socket, pid file and the
   * cow overlay live there. Created here (mode 0700) and removed by `stop()`.
   */
  overlayDir: string;
  /** When set, clients must ask for this export name; otherwise any name reaches the export. */
  exportName?: string;
  log: Logger;
  /** The nbdkit command (a name looked up on PATH, or a path); tests point it elsewhere. */
  nbdkit?: string;
  /** How long nbdkit may take to become ready (default 10 s). */
  startTimeoutMs?: number;
  /** How long `stop()` waits after SIGTERM before SIGKILL (default 3 s). */
  stopGraceMs?: number;
  /** Connections admitted at once (default 8; the kernel client opens one, or a few with multi-conn). */
  maxConnections?: number;
}

/** How the export's server ended. */
export interface NbdExportExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when `stop()` ended it. */
  stopped: boolean;
  /** NBD_SERVER_FAILED when nbdkit ended on its own during the job. */
  failure?: CodedError;
}

export interface NbdExport {
  /** Where the board connects: `bindAddress` and the port the kernel gave. */
  address: string;
  port: number;
  /** The export name clients ask for ('' when any name is accepted). */
  exportName: string;
  /** Bytes the export holds (the partition's, the range's or the image's size). */
  size: number;
  /** The nbdkit process (for CPU accounting and tests). */
  pid: number;
  /** `nbd://address:port/exportName`, as libnbd and qemu read it. */
  uri: string;
  /** Connections admitted and open now. */
  connections(): number;
  /** Stops admitting, drops every connection, ends nbdkit (TERM, then KILL), removes the overlay directory. */
  stop(): Promise<void>;
  /** Settles once nbdkit has exited and the overlay directory is gone; never rejects. */
  exited: Promise<NbdExportExit>;
}

const DEBIAN_PACKAGE = 'nbdkit';
const SOCKET_NAME = 'nbdkit.sock';
const PID_FILE = 'nbdkit.pid';
/** sockaddr_un's sun_path is 108 bytes with its terminating NUL. */
const MAX_SOCKET_PATH = 107;
const STDERR_KEEP = 4096;
const STDERR_LINES_LOGGED = 50;
const REFUSALS_LOGGED = 10;
const LINE_MAX = 300;

function misconfigured(message: string): CodedError {
  return new CodedError('LAB_MISCONFIGURED', message);
}

/** The absolute path of `command` (looked up on PATH unless it names a path), or undefined. */
async function findExecutable(command: string): Promise<string | undefined> {
  const candidates = command.includes('/')
    ? [command]
    : (process.env.PATH ?? '')
        .split(delimiter)
        .filter((dir) => isAbsolute(dir))
        .map((dir) => join(dir, command));
  for (const candidate of candidates) {
    try {
      await access(candidate, fsConstants.X_OK);
      if ((await stat(candidate)).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`; compare them as IPv4. */
function canonicalAddress(address: string | undefined): string {
  if (!address) return '';
  const lower = address.toLowerCase();
  return lower.startsWith('::ffff:') && net.isIPv4(lower.slice(7)) ? lower.slice(7) : lower;
}

interface Selection {
  filter?: 'partition' | 'offset';
  params: string[];
  size: number;
  describe: string;
}

/**
 * Checks what is to be exported against the image before nbdkit starts: nbdkit's partition filter
 * reads the table only when a client connects, which for a board is after its reset.
 */
async function selectBytes(o: NbdExportOptions): Promise<Selection> {
  let handle;
  try {
    handle = await open(o.image, 'r');
  } catch (err) {
    throw new CodedError('IMAGE_NOT_FOUND', `the image ${o.image} cannot be opened: ${(err as Error).message}`);
  }
  try {
    const imageSize = (await handle.stat()).size;
    if (o.partition !== undefined) {
      if (o.offset !== undefined || o.size !== undefined)
        throw new Error('an NBD export takes a partition or a byte range, not both');
      if (!Number.isInteger(o.partition) || o.partition < 1 || o.partition > 4)
        throw new Error(`partition ${o.partition} is not an MBR primary partition number (1-4)`);
      const sector0 = Buffer.alloc(SECTOR);
      await handle.read(sector0, 0, SECTOR, 0);
      const partitions = parseMbr(sector0, imageSize);
      const part = partitions.find((p) => p.index === o.partition);
      if (!part) {
        const have = partitions.map((p) => `${p.index} (type 0x${p.type.toString(16).padStart(2, '0')})`).join(', ');
        throw new CodedError(
          'IMAGE_NOT_DISK',
          `the image has no partition ${o.partition} to serve over NBD; its partitions: ${have}`,
        );
      }
      return {
        filter: 'partition',
        params: [`partition=${o.partition}`],
        size: part.size,
        describe: `partition ${o.partition}`,
      };
    }
    if (o.offset !== undefined || o.size !== undefined) {
      const offset = o.offset ?? 0;
      const size = o.size ?? imageSize - offset;
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || offset < 0 || size <= 0)
        throw new Error(`byte range ${offset}+${size} is not a valid range`);
      if (offset + size > imageSize)
        throw new CodedError(
          'IMAGE_TRUNCATED',
          `bytes ${offset}..${offset + size} are to be served over NBD but the image has only ${imageSize}`,
        );
      return {
        filter: 'offset',
        params: [`offset=${offset}`, `range=${size}`],
        size,
        describe: `bytes ${offset}+${size}`,
      };
    }
    return { params: [], size: imageSize, describe: 'the whole image' };
  } finally {
    await handle.close();
  }
}

/** Resolves when `path` exists, `ended` settles, or the time is up, whichever comes first. */
function waitForFile(path: string, ended: Promise<unknown>, timeoutMs: number): Promise<'ready' | 'ended' | 'timeout'> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (how: 'ready' | 'ended' | 'timeout') => {
      if (done) return;
      done = true;
      clearInterval(poll);
      clearTimeout(timer);
      resolve(how);
    };
    // nbdkit writes its pid file once it accepts connections: the one readiness signal it documents.
    const poll = setInterval(() => {
      access(path).then(
        () => finish('ready'),
        () => {},
      );
    }, 10);
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    void ended.then(() => finish('ended'));
  });
}

/**
 * Starts the job's NBD export and resolves once it accepts connections. Throws LAB_MISCONFIGURED
 * when nbdkit or one of its filters is missing (naming the Debian package) or the bind address
 * cannot be listened on, IMAGE_* when the image lacks the partition or range, NBD_SERVER_FAILED
 * when nbdkit does not start. On every failure nothing is left: no process, no overlay directory.
 */
/** Where the jobs' overlay directories live under the agent's state directory. */
const OVERLAYS = 'netboot';

/** The overlay directory of one job: `<stateDir>/netboot/<job>/`. */
export function overlayDirFor(stateDir: string, jobId: string): string {
  return join(stateDir, OVERLAYS, jobId);
}

/**
 * Remove the overlay directories an earlier run left (a kill -9: nbdkit died with the agent, its
 * unlinked overlay with it, but the directory and its socket stay). Run at start-up, before any job.
 */
export async function removeOverlayLeftovers(stateDir: string): Promise<string[]> {
  const root = join(stateDir, OVERLAYS);
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return [];
  }
  for (const name of names) await rm(join(root, name), { recursive: true, force: true });
  return names;
}

export async function startNbdExport(o: NbdExportOptions): Promise<NbdExport> {
  if (!net.isIP(o.bindAddress)) throw new Error(`bindAddress ${o.bindAddress} is not an IP address`);
  if (!net.isIP(o.allowFrom)) throw new Error(`allowFrom ${o.allowFrom} is not an IP address`);
  const exportName = o.exportName ?? '';
  if (exportName.length > 4096 || /[\0\n]/.test(exportName)) throw new Error('the export name is not usable');
  const socketPath = join(o.overlayDir, SOCKET_NAME);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH)
    throw misconfigured(`the NBD overlay directory's path is too long for a Unix socket: ${socketPath}`);

  const command = o.nbdkit ?? 'nbdkit';
  const nbdkit = await findExecutable(command);
  if (!nbdkit)
    throw misconfigured(
      `network boot serves the root file system with nbdkit, and \`${command}\` is not installed ` +
        `(install the Debian package ${DEBIAN_PACKAGE})`,
    );
  const selection = await selectBytes(o);
  const log = o.log.child({ nbd: selection.describe });

  await mkdir(o.overlayDir, { recursive: true, mode: 0o700 });
  // Only the agent's user may reach nbdkit's socket (the front door is the way in) or read the overlay.
  await chmod(o.overlayDir, 0o700);
  await rm(join(o.overlayDir, PID_FILE), { force: true });
  await rm(socketPath, { force: true });

  const uid = process.getuid?.() ?? 0;
  const args = [
    '--foreground',
    '--exit-with-parent',
    '--unix',
    socketPath,
    '--pidfile',
    join(o.overlayDir, PID_FILE),
    '--log=stderr',
    '--filter=ip',
    ...(exportName ? ['--filter=exportname'] : []),
    '--filter=cow',
    ...(selection.filter ? [`--filter=${selection.filter}`] : []),
    'file',
    `file=${o.image}`,
    `allow=uid:${uid}`,
    'deny=all',
    ...selection.params,
    ...(exportName ? [`exportname=${exportName}`, 'exportname-strict=true'] : []),
  ];
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: o.overlayDir };
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;

  let child: ChildProcessByStdio<null, null, Readable>;
  try {
    child = spawn(nbdkit, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
  } catch (err) {
    await rm(o.overlayDir, { recursive: true, force: true });
    throw misconfigured(`cannot run ${nbdkit}: ${(err as Error).message}`);
  }

  let stderrTail = '';
  let linesLogged = 0;
  let partial = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    stderrTail = (stderrTail + text).slice(-STDERR_KEEP);
    const lines = (partial + text).split('\n');
    partial = (lines.pop() ?? '').slice(-LINE_MAX);
    for (const line of lines) {
      if (!line.trim()) continue;
      if (linesLogged < STDERR_LINES_LOGGED) log.warn('nbdkit says', { line: line.slice(0, LINE_MAX) });
      else if (linesLogged === STDERR_LINES_LOGGED) log.warn('nbdkit says more; further lines are not logged');
      linesLogged++;
    }
  });

  let spawnError: Error | undefined;
  const processEnded = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('error', (err) => {
      spawnError = err;
      // 'close' follows for a process that ran; one that never started gets none.
      if (child.pid === undefined) resolve({ code: null, signal: null });
    });
    child.once('close', (code, signal) => resolve({ code, signal }));
  });

  const cleanUp = () => rm(o.overlayDir, { recursive: true, force: true }).catch(() => {});
  const why = (ended: { code: number | null; signal: NodeJS.Signals | null }) =>
    (stderrTail.trim() ? stderrTail.trim().split('\n').slice(-5).join('; ') : '') ||
    spawnError?.message ||
    (ended.signal ? `killed by ${ended.signal}` : `exit code ${ended.code}`);

  const startTimeoutMs = o.startTimeoutMs ?? 10_000;
  const readiness = await waitForFile(join(o.overlayDir, PID_FILE), processEnded, startTimeoutMs);
  if (readiness !== 'ready' || child.exitCode !== null || child.signalCode !== null) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) child.kill('SIGKILL');
    const ended = await processEnded;
    await cleanUp();
    const reason = why(ended);
    const missing = /cannot open (filter|plugin) '([^']+)'/.exec(reason);
    if (missing || spawnError)
      throw misconfigured(
        missing
          ? `nbdkit lacks its ${missing[2]} ${missing[1]} (${reason}); the Debian package ${DEBIAN_PACKAGE} ` +
              'ships the file plugin and the ip, cow, partition, offset and exportname filters'
          : `cannot run ${nbdkit}: ${reason}`,
      );
    throw new CodedError(
      'NBD_SERVER_FAILED',
      readiness === 'timeout'
        ? `nbdkit did not become ready within ${startTimeoutMs} ms (${reason})`
        : `nbdkit did not start: ${reason}`,
    );
  }
  const pid = child.pid!;

  // ---- the front door: the board's address only, relayed to nbdkit's socket ----
  const relays = new Set<net.Socket>();
  const maxConnections = o.maxConnections ?? 8;
  const allowed = canonicalAddress(o.allowFrom);
  let refusals = 0;
  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    client.on('error', () => {}); // a reset from the peer; 'close' follows
    const from = canonicalAddress(client.remoteAddress);
    if (from !== allowed || relays.size >= maxConnections) {
      refusals++;
      if (refusals <= REFUSALS_LOGGED)
        log.warn(from !== allowed ? 'NBD connection refused: not the board' : 'NBD connection refused: too many', {
          from,
          board: allowed,
        });
      else if (refusals === REFUSALS_LOGGED + 1) log.warn('more NBD connections refused; not logged one by one');
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    const upstream = net.connect(socketPath);
    relays.add(client);
    upstream.on('error', (err) => log.debug('NBD relay to nbdkit failed', { from, error: err.message }));
    const drop = () => {
      client.destroy();
      upstream.destroy();
    };
    client.once('close', () => {
      relays.delete(client);
      drop();
      log.info('NBD client disconnected', { from, bytesSent: client.bytesWritten, bytesReceived: client.bytesRead });
    });
    upstream.once('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
    log.info('NBD client connected', { from });
  });
  server.on('error', (err) => log.error('NBD listener failed', { error: err.message }));

  let stopRequested = false;
  const closeFrontDoor = () => {
    server.close();
    for (const socket of relays) socket.destroy();
  };
  const exited: Promise<NbdExportExit> = processEnded.then(async (ended) => {
    closeFrontDoor();
    await cleanUp();
    if (stopRequested) return { ...ended, stopped: true };
    const failure = new CodedError(
      'NBD_SERVER_FAILED',
      `nbdkit (pid ${pid}) stopped during the job ` +
        `(${ended.signal ? `signal ${ended.signal}` : `exit code ${ended.code}`}): ${why(ended)}`,
    );
    log.error('NBD server stopped during the job', { error: failure.message });
    return { ...ended, stopped: false, failure };
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      stopRequested = true;
      closeFrontDoor();
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const kill = setTimeout(() => child.kill('SIGKILL'), o.stopGraceMs ?? 3000);
        await processEnded;
        clearTimeout(kill);
      }
      await exited;
      log.info('NBD export stopped', { port: listening?.port });
    })();
    return stopping;
  };

  let listening: net.AddressInfo | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: o.bindAddress, port: 0, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    listening = server.address() as net.AddressInfo;
  } catch (err) {
    await stop();
    throw misconfigured(`cannot listen for NBD clients on ${o.bindAddress}: ${(err as Error).message}`);
  }

  const host = net.isIPv6(o.bindAddress) ? `[${o.bindAddress}]` : o.bindAddress;
  const result: NbdExport = {
    address: o.bindAddress,
    port: listening.port,
    exportName,
    size: selection.size,
    pid,
    uri: `nbd://${host}:${listening.port}/${encodeURIComponent(exportName)}`,
    connections: () => relays.size,
    stop,
    exited,
  };
  log.info('NBD export ready', {
    address: o.bindAddress,
    port: listening.port,
    board: allowed,
    size: selection.size,
    pid,
  });
  return result;
}
