/**
 * An SSH session with a board (ssh2): the pinned host key checked in `hostVerifier`, before any
 * authentication, so a board that is not the one its row names never sees the agent's key; then
 * `exec` of one command at a time, with its stdin given whole (what dropbear offers: no sftp) and
 * its output bounded. Failures carry the codes of the in-place update: SSH_HOST_KEY_MISMATCH,
 * SSH_FAILED (with `answered`: whether an SSH server spoke at all, which the ssh reset needs to
 * decide whether to fall back to the hard reset).
 */
import { readFile } from 'node:fs/promises';
import { Client, type ClientChannel } from 'ssh2';
import { CodedError, type ErrorCode } from '../../../src/protocol/errors.js';
import { describePin, hostKeyMatches, keyTypeOf, sha256Fingerprint, type SshAccess } from './ssh-access.js';

export class SshError extends CodedError {
  constructor(
    code: ErrorCode,
    message: string,
    /** An SSH server answered (sent its host key): the board runs, whatever else failed. */
    readonly answered: boolean,
  ) {
    super(code, message);
    this.name = 'SshError';
  }
}

export interface ExecResult {
  /** Exit status; null when the command ended by a signal or the session dropped before it said. */
  code: number | null;
  signal?: string;
  stdout: string;
  stderr: string;
  /** The session closed before the command's exit status came (the board killed its sshd, or rebooted). */
  dropped: boolean;
}

export interface ExecOptions {
  stdin?: Buffer | string;
  timeoutMs: number;
}

/** Output kept per stream: the probe's /proc files fit many times over. */
const MAX_OUTPUT = 1024 * 1024;

export class SshSession {
  private closed = false;

  private constructor(
    private readonly client: Client,
    /** `user@host:port`, for messages. */
    readonly where: string,
  ) {
    client.on('close', () => {
      this.closed = true;
    });
  }

  /** Connect and log in; rejects with an SshError. */
  static async connect(host: string, access: SshAccess, o: { timeoutMs: number }): Promise<SshSession> {
    const where = `${access.user}@${host}:${access.port}`;
    let privateKey: Buffer;
    try {
      privateKey = await readFile(access.keyFile);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new SshError('LAB_MISCONFIGURED', `cannot read the SSH key ${access.keyFile} for ${where}: ${why}`, false);
    }
    const client = new Client();
    let presented: Buffer | undefined;
    let mismatch = false;
    return new Promise<SshSession>((resolve, reject) => {
      let settled = false;
      const fail = (err: SshError) => {
        if (settled) return;
        settled = true;
        client.end();
        reject(err);
      };
      // A server that never answers within the timeout; ssh2's readyTimeout covers the handshake only.
      const timer = setTimeout(
        () =>
          fail(
            new SshError(
              'SSH_FAILED',
              `${where} did not complete an SSH login within ${o.timeoutMs} ms` +
                (presented ? ' (it sent its host key, then stalled)' : ' (no SSH server answered)'),
              presented !== undefined,
            ),
          ),
        o.timeoutMs,
      );
      client.on('ready', () => {
        clearTimeout(timer);
        if (settled) return client.end();
        settled = true;
        resolve(new SshSession(client, where));
      });
      client.on('error', (err: Error & { level?: string }) => {
        clearTimeout(timer);
        if (mismatch) {
          const got = presented ? `${keyTypeOf(presented)} ${sha256Fingerprint(presented)}` : 'another key';
          fail(
            new SshError(
              'SSH_HOST_KEY_MISMATCH',
              `${where} presented the host key ${got}, but its targets row pins ${describePin(access.hostKey)}: ` +
                'not logged in, nothing touched (a reinstalled board has a new key: update the hostkey cell)',
              true,
            ),
          );
        } else if (err.level === 'client-authentication') {
          fail(
            new SshError(
              'SSH_FAILED',
              `${where} refused the login with the key ${access.keyFile} (is its public key in the board's ` +
                'authorized_keys?)',
              true,
            ),
          );
        } else {
          fail(new SshError('SSH_FAILED', `cannot reach ${where} over SSH: ${err.message}`, presented !== undefined));
        }
      });
      client.on('close', () => {
        clearTimeout(timer);
        fail(new SshError('SSH_FAILED', `${where} closed the SSH connection during login`, presented !== undefined));
      });
      client.connect({
        host,
        port: access.port,
        username: access.user,
        privateKey,
        readyTimeout: o.timeoutMs,
        // Only key authentication: no password prompts, no agent.
        authHandler: ['publickey'],
        hostVerifier: (key: Buffer) => {
          presented = Buffer.from(key);
          mismatch = !hostKeyMatches(access.hostKey, presented);
          return !mismatch;
        },
      });
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Run one command (through the board's login shell, `sh -c` for dropbear and OpenSSH) and
   * collect its output. Resolves with `dropped` when the session ends under the command: the
   * caller decides whether that was expected (a reboot) or a failure.
   */
  exec(command: string, o: ExecOptions): Promise<ExecResult> {
    return new Promise<ExecResult>((resolve, reject) => {
      if (this.closed) {
        reject(new SshError('SSH_FAILED', `the SSH session with ${this.where} is closed`, true));
        return;
      }
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let outBytes = 0;
      let errBytes = 0;
      let exit: { code: number | null; signal?: string } | undefined;
      let channel: ClientChannel | undefined;
      let done = false;
      const finish = (dropped: boolean) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.client.removeListener('close', onClose);
        resolve({
          code: exit?.code ?? null,
          ...(exit?.signal ? { signal: exit.signal } : {}),
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
          dropped,
        });
      };
      const onClose = () => finish(exit === undefined);
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        this.client.removeListener('close', onClose);
        channel?.close();
        reject(new SshError('SSH_FAILED', `${this.where}: "${command}" did not finish within ${o.timeoutMs} ms`, true));
      }, o.timeoutMs);
      this.client.once('close', onClose);
      try {
        this.client.exec(command, (e, ch) => {
          if (e) {
            if (done) return;
            done = true;
            clearTimeout(timer);
            this.client.removeListener('close', onClose);
            reject(new SshError('SSH_FAILED', `${this.where}: cannot run "${command}": ${e.message}`, true));
            return;
          }
          channel = ch;
          ch.on('data', (d: Buffer) => {
            if (outBytes < MAX_OUTPUT) out.push(d);
            outBytes += d.length;
          });
          ch.stderr.on('data', (d: Buffer) => {
            if (errBytes < MAX_OUTPUT) err.push(d);
            errBytes += d.length;
          });
          ch.on('exit', (code: number | null, signal?: string) => {
            exit = { code: typeof code === 'number' ? code : null, ...(signal ? { signal } : {}) };
          });
          ch.on('close', () => finish(exit === undefined));
          ch.on('error', () => finish(exit === undefined));
          if (o.stdin !== undefined) ch.end(o.stdin);
          else ch.end();
        });
      } catch (e) {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.client.removeListener('close', onClose);
        reject(new SshError('SSH_FAILED', `${this.where}: cannot run "${command}": ${(e as Error).message}`, true));
      }
    });
  }

  close(): void {
    this.closed = true;
    this.client.end();
  }
}
