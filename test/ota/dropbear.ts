/**
 * A real SSH server on loopback for the OTA tests: Debian's dropbear (the server the test OS and
 * many small boards run) in inetd mode, one process per connection behind a Node listener on
 * 127.0.0.1 port 0, so no port is guessed. Its user lives in a temp folder: each dropbear runs in a
 * private mount namespace (`unshare -m`) with a fake /etc/passwd bound over the real
 * one, whose only user `tester` (uid 0 inside the namespace, the caller outside) has the temp
 * folder as home, its authorized_keys there and /bin/sh as shell. The commands it runs are the
 * host's real ones. Root-less runs use a user namespace too (`unshare -rm`), but there dropbear's
 * initgroups() is refused (setgroups is denied in such a namespace) and every command fails with
 * "Error changing user group": the tests run as root, as CI and the lab machines do.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const TEST_USER = 'tester';

export interface DropbearServer {
  port: number;
  dir: string;
  /** The server's host public key line (`ssh-ed25519 AAAA… `), what a targets row pins. */
  hostKeyLine: string;
  /** A client key the server accepts (OpenSSH format) and one it does not. */
  clientKey: string;
  strangerKey: string;
  /** dropbear's own log lines (stderr of every connection). */
  log(): string;
  /** Connections accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

async function sshKeygen(file: string): Promise<void> {
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'rpi-flash-test', '-f', file]);
}

/** A dropbear host key and its public line, as an operator gets them from `dropbearkey -y`. */
export async function dropbearHostKey(file: string): Promise<string> {
  await run('dropbearkey', ['-t', 'ed25519', '-f', file]);
  const { stdout } = await run('dropbearkey', ['-y', '-f', file]);
  const line = stdout.split('\n').find((l) => l.startsWith('ssh-'));
  if (!line) throw new Error(`dropbearkey -y printed no key line: ${stdout}`);
  return line.trim();
}

export async function startDropbear(o: { hostKeyFile?: string } = {}): Promise<DropbearServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'rpf-dropbear-'));
  const home = path.join(dir, 'home');
  await mkdir(path.join(home, '.ssh'), { recursive: true, mode: 0o700 });
  await chmod(home, 0o700);
  const hostKeyFile = o.hostKeyFile ?? path.join(dir, 'host_ed25519');
  const hostKeyLine = o.hostKeyFile
    ? (await run('dropbearkey', ['-y', '-f', hostKeyFile])).stdout
        .split('\n')
        .find((l) => l.startsWith('ssh-'))!
        .trim()
    : await dropbearHostKey(hostKeyFile);
  const clientKey = path.join(dir, 'client_ed25519');
  const strangerKey = path.join(dir, 'stranger_ed25519');
  await sshKeygen(clientKey);
  await sshKeygen(strangerKey);
  await writeFile(path.join(home, '.ssh', 'authorized_keys'), await readFile(`${clientKey}.pub`), { mode: 0o600 });
  const passwd = path.join(dir, 'passwd');
  await writeFile(passwd, `root:x:0:0:root:/root:/bin/sh\n${TEST_USER}:x:0:0:test:${home}:/bin/sh\n`);

  const children = new Set<ChildProcess>();
  let logText = '';
  let count = 0;
  const server = net.createServer((socket) => {
    count += 1;
    socket.on('error', () => {});
    // -i: one session on stdin/stdout (it logs to syslog only then); -s: keys only; -m: no motd.
    const child = spawn(
      'unshare',
      [
        process.getuid?.() === 0 ? '-m' : '-rm',
        'sh',
        '-c',
        'mount --bind "$0" /etc/passwd && exec dropbear -i -s -m -r "$1"',
        passwd,
        hostKeyFile,
      ],
      { stdio: [socket, socket, 'pipe'] },
    );
    children.add(child);
    child.stderr?.on('data', (d: Buffer) => {
      logText += d.toString();
    });
    child.on('exit', () => {
      children.delete(child);
      socket.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    dir,
    hostKeyLine,
    clientKey,
    strangerKey,
    log: () => logText,
    connections: () => count,
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of children) c.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    },
  };
}
