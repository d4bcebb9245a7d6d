/**
 * Private network namespaces for tests, without root: `unshare -rn` makes a user namespace in
 * which the test is root and a network namespace that holds only a loopback. Inside, a test may
 * bind the real ports (67, 69), create veth pairs and broadcast, and nothing it sends can reach
 * the machine's own networks.
 *
 * A Node process cannot move itself into a namespace, so the namespaced part of a test is a
 * script run as a child (`runInNetns`), as test/qemu/agent-flash.test.ts does for QEMU: it takes
 * its options as JSON in argv[2] and prints its result as JSON on stdout. Inside that script,
 * `ip()` and `addVethPair()` shape the namespace's network.
 *
 * In CI (`CI` set) a machine that refuses `unshare -rn` fails the test; elsewhere it is skipped
 * with the reason.
 */
import { execFile } from 'node:child_process';
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

/** The script side of runInNetns: its options (argv[2]), and a way to print the result and exit. */
export function scenarioArgs<T>(): T {
  const raw = process.argv[2];
  if (!raw) throw new Error('expected the options as JSON in argv[2]');
  return JSON.parse(raw) as T;
}

export function printResult(result: unknown): void {
  process.stdout.write(JSON.stringify(result));
}
