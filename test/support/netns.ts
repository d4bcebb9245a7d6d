/**
 * Private network namespaces for tests, without root: `unshare -rn` makes a user namespace in
 * which the test is root and a network namespace that holds only a loopback. Inside, a test may
 * bind the real ports (67, 69), create veth pairs and broadcast, and nothing it sends can reach
 * the machine's own networks.
 *
 * A Node process cannot move itself into a namespace, so the namespaced part of a test is a
 * script run as a child (`runInNetns`), as test/qemu/agent-flash.test.ts does for QEMU: it takes
 * its options as JSON in argv[2] and prints its result as JSON on stdout. Inside that script,
 * `ip()` and `addVethPair()` shape the namespace's network, and `peerNamespace()` makes a second
 * one for the other end of a link: a host with no address at all, as a board before DHCP (its
 * datagrams leave from 0.0.0.0, and nothing it sends is delivered back to its own sockets).
 *
 * In CI (`CI` set) a machine that refuses `unshare -rn` fails the test; elsewhere it is skipped
 * with the reason.
 */
import { execFile, spawn } from 'node:child_process';
import { readlink } from 'node:fs/promises';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const REPO_ROOT = new URL('../..', import.meta.url).pathname;
const inCi = Boolean(process.env.CI);

let usable: Promise<string | undefined> | undefined;

/** Undefined when `unshare -rn` works here, else why not. Asked once per test process. */
export function unshareProblem(): Promise<string | undefined> {
  usable ??= execFileAsync('unshare', ['-rn', 'true']).then(
    () => undefined,
    (err: Error) => err.message,
  );
  return usable;
}

/**
 * For a test's first line: returns when namespaces work, throws in CI when they do not, and
 * otherwise skips the test (vitest's `ctx.skip`) saying why.
 */
export async function needNetns(ctx: { skip: (note?: string) => void }): Promise<void> {
  const problem = await unshareProblem();
  if (!problem) return;
  if (inCi) throw new Error(`CI must allow unshare -rn: ${problem}`);
  ctx.skip(`user namespaces are not available here: ${problem}`);
}

/**
 * Likewise for the programs a namespaced test runs (busybox, dnsmasq, nsenter…): CI installs them
 * (.ci/run), so there a missing one fails the test; elsewhere it is skipped naming what to install.
 */
export async function needCommands(ctx: { skip: (note?: string) => void }, commands: string[]): Promise<void> {
  const missing: string[] = [];
  for (const c of commands) await execFileAsync('sh', ['-c', 'command -v "$1"', 'sh', c]).catch(() => missing.push(c));
  if (!missing.length) return;
  if (inCi) throw new Error(`CI must have ${missing.join(', ')} (see .ci/run)`);
  ctx.skip(`not installed here: ${missing.join(', ')}`);
}

export interface NetnsRun<T> {
  result: T;
  /** The child's stderr (its logs), for a failing assertion's message. */
  stderr: string;
}

/**
 * Run `script` (a path from the repository root, e.g. `test/netboot/dhcp-scenario.ts`) under tsx
 * in a new user and network namespace, its loopback up, with `options` as JSON in argv[2]; its
 * stdout is parsed as JSON. A failing child throws with its stderr attached.
 */
export async function runInNetns<T>(
  script: string,
  options: unknown,
  o: { timeoutMs?: number } = {},
): Promise<NetnsRun<T>> {
  try {
    const { stdout, stderr } = await execFileAsync(
      'unshare',
      [
        '-rn',
        'sh',
        '-c',
        // A new network namespace starts with its loopback down.
        'ip link set lo up && exec "$0" --import tsx "$1" "$2"',
        process.execPath,
        script,
        JSON.stringify(options),
      ],
      { cwd: REPO_ROOT, timeout: o.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 },
    );
    return { result: JSON.parse(stdout) as T, stderr };
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string };
    e.message += `\n--- ${script} stderr ---\n${e.stderr ?? ''}\n--- stdout ---\n${e.stdout ?? ''}`;
    throw e;
  }
}

/** `ip …` inside the namespace (iproute2); throws with ip's own message. */
export async function ip(...args: string[]): Promise<void> {
  try {
    await execFileAsync('ip', args);
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`ip ${args.join(' ')}: ${e.stderr?.trim() || e.message}`, { cause: err });
  }
}

/**
 * A veth pair, both ends up: `name` gets `address` (CIDR, e.g. 10.77.0.1/24) when given, `peer`
 * stays without an address, as a board's interface is before DHCP. `peerMac` sets the peer's MAC
 * (a board's, from the targets database).
 */
export async function addVethPair(o: {
  name: string;
  peer: string;
  address?: string;
  peerMac?: string;
}): Promise<void> {
  await ip('link', 'add', o.name, 'type', 'veth', 'peer', 'name', o.peer);
  if (o.peerMac) await ip('link', 'set', o.peer, 'address', o.peerMac);
  if (o.address) await ip('addr', 'add', o.address, 'dev', o.name);
  await ip('link', 'set', o.name, 'up');
  await ip('link', 'set', o.peer, 'up');
}

export interface PeerNamespace {
  /** Move a link of this namespace into the peer (its addresses stay behind). */
  moveLink(name: string): Promise<void>;
  /** Run a command in the peer (`nsenter -n`), from the repository root. */
  exec(command: string, args: string[], o?: { timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>;
  close(): void;
}

/**
 * A second network namespace, held open by a `sleep` inside it (unshare -n: the test is root in
 * its user namespace), its loopback up. Close it when done; it dies with its parent anyway.
 */
export async function peerNamespace(): Promise<PeerNamespace> {
  const holder = spawn('unshare', ['-n', 'sleep', '3600'], { stdio: 'ignore' });
  const pid = holder.pid!;
  const own = await readlink('/proc/self/ns/net');
  // unshare execs sleep once it has its namespace: until then the link would move nowhere.
  const deadline = Date.now() + 10_000;
  while ((await readlink(`/proc/${pid}/ns/net`).catch(() => own)) === own) {
    if (Date.now() > deadline) throw new Error('the peer namespace did not appear');
    await new Promise((r) => setTimeout(r, 10));
  }
  const exec = async (command: string, args: string[], o: { timeoutMs?: number } = {}) => {
    try {
      return await execFileAsync('nsenter', ['-t', String(pid), '-n', command, ...args], {
        cwd: REPO_ROOT,
        timeout: o.timeoutMs ?? 60_000,
        maxBuffer: 16 * 1024 * 1024,
      });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      e.message += `\n--- ${command} stderr (in the peer namespace) ---\n${e.stderr ?? ''}`;
      throw e;
    }
  };
  await exec('ip', ['link', 'set', 'lo', 'up']);
  return {
    moveLink: (name) => ip('link', 'set', name, 'netns', String(pid)),
    exec,
    close: () => holder.kill(),
  };
}

/** The script side of runInNetns: its options (argv[2]), and a way to print the result and exit. */
export function scenarioArgs<T>(): T {
  const raw = process.argv[2];
  if (!raw) throw new Error('expected the options as JSON in argv[2]');
  return JSON.parse(raw) as T;
}

export function printResult(result: unknown): void {
  process.stdout.write(JSON.stringify(result));
}
