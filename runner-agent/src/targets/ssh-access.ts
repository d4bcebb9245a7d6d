/**
 * How the agent reaches a board that answers SSH (layout `ota`, reset kind `ssh`): the targets
 * database's `ssh`, `sshkey` and `hostkey` cells. The host key is pinned: the agent never learns a
 * key on first use, and a board that presents another key is refused before authentication
 * (ssh-session.ts).
 */
import { createHash } from 'node:crypto';
import path from 'node:path';

export interface SshAccess {
  user: string;
  port: number;
  /** Absolute path of the private key file (relative cells resolve against the targets file's folder). */
  keyFile: string;
  hostKey: HostKeyPin;
}

/**
 * The board's host key as the database pins it: the whole public key (what `ssh-keyscan` or
 * `dropbearkey -y` prints), or only its OpenSSH SHA256 fingerprint.
 */
export type HostKeyPin =
  | { kind: 'key'; type: string; blob: Buffer; text: string }
  | { kind: 'sha256'; fingerprint: string /* base64, no padding, as `ssh-keygen -l` prints after SHA256: */ };

const USER_PATTERN = /^[a-z_][a-z0-9_.-]{0,31}$/i;
const KEY_TYPE_PATTERN = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|ssh-dss)$/;

/** `<user>` or `<user>:<port>`. Throws an Error saying what is wrong. */
export function parseSshCell(text: string): { user: string; port: number } {
  const cell = text.trim();
  const colon = cell.lastIndexOf(':');
  const user = colon < 0 ? cell : cell.slice(0, colon);
  const portText = colon < 0 ? '22' : cell.slice(colon + 1);
  if (!USER_PATTERN.test(user)) throw new Error(`ssh "${cell}": "${user}" is not a user name (ssh is <user>[:<port>])`);
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535)
    throw new Error(`ssh "${cell}": port "${portText}" must be 1 to 65535`);
  return { user, port };
}

/** An OpenSSH public-key line or a `SHA256:` fingerprint. Throws an Error saying what is wrong. */
export function parseHostKeyPin(text: string): HostKeyPin {
  const cell = text.trim();
  const fp = /^SHA256:([A-Za-z0-9+/]{43})=?$/.exec(cell);
  if (fp) return { kind: 'sha256', fingerprint: fp[1]! };
  const [type, b64] = cell.split(/\s+/);
  if (!type || !b64 || !KEY_TYPE_PATTERN.test(type) || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64))
    throw new Error(
      'hostkey must be the board\'s public host key as one OpenSSH line ("ssh-ed25519 AAAA…", what ' +
        'ssh-keyscan or dropbearkey -y prints) or its fingerprint "SHA256:…"',
    );
  const blob = Buffer.from(b64, 'base64');
  // The blob starts with its own type as an SSH string: a key pasted under the wrong type is no key.
  const inner = blob.length >= 4 ? blob.subarray(4, 4 + blob.readUInt32BE(0)).toString('latin1') : '';
  if (inner !== type)
    throw new Error(`hostkey: the key data is not a ${type} key${inner ? ` (it says ${inner})` : ''}`);
  return { kind: 'key', type, blob, text: `${type} ${b64}` };
}

/** The OpenSSH fingerprint of a key blob: `SHA256:` and base64 without padding. */
export function sha256Fingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** The key type an SSH key blob names (its first SSH string), for messages. */
export function keyTypeOf(blob: Buffer): string {
  if (blob.length < 4) return 'unknown';
  const n = blob.readUInt32BE(0);
  return n > 0 && n < 64 && blob.length >= 4 + n ? blob.subarray(4, 4 + n).toString('latin1') : 'unknown';
}

export function hostKeyMatches(pin: HostKeyPin, blob: Buffer): boolean {
  return pin.kind === 'key' ? pin.blob.equals(blob) : sha256Fingerprint(blob) === `SHA256:${pin.fingerprint}`;
}

export function describePin(pin: HostKeyPin): string {
  return pin.kind === 'key' ? `${pin.type} ${sha256Fingerprint(pin.blob)}` : `SHA256:${pin.fingerprint}`;
}

/**
 * The three cells of a row as one access, or the problems with them (each a sentence). `what`
 * names why the row needs them (`layout ota`, `reset ssh`); `cells` may all be empty, which is a
 * problem only when `required`.
 */
export function parseSshAccess(
  cells: { ssh: string; sshkey: string; hostkey: string },
  targetsFile: string,
  required: string | undefined,
): { access?: SshAccess; problems: string[] } {
  const problems: string[] = [];
  const given = [cells.ssh, cells.sshkey, cells.hostkey].some(Boolean);
  if (!given && !required) return { problems };
  const missing = (['ssh', 'sshkey', 'hostkey'] as const).filter((k) => !cells[k]);
  if (missing.length)
    problems.push(
      `${required ?? 'ssh access'} needs the column(s) ${missing.join(', ')} ` +
        '(ssh = <user>[:<port>], sshkey = the private key file, ' +
        "hostkey = the board's public host key line or SHA256:…)",
    );
  let login: { user: string; port: number } | undefined;
  let hostKey: HostKeyPin | undefined;
  if (cells.ssh) {
    try {
      login = parseSshCell(cells.ssh);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  if (cells.hostkey) {
    try {
      hostKey = parseHostKeyPin(cells.hostkey);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  if (problems.length || !login || !hostKey || !cells.sshkey) return { problems };
  const keyFile = path.resolve(path.dirname(path.resolve(targetsFile)), cells.sshkey);
  return { access: { ...login, keyFile, hostKey }, problems };
}
