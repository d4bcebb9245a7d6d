/**
 * The `ota` section of the agent's configuration (layout `ota`, README "In-place update over
 * SSH"): the static busybox the agent uploads per board architecture, the part size, where the
 * board finds the agent's TFTP server, and the SSH steps' limits. Validated here, called from
 * config.ts, so the section's rules sit beside the layout that reads them.
 */
import path from 'node:path';
import { parseSize } from '../config.js';

/** Debian architectures whose busybox-static the agent may carry (busyboxArchesFor in board/ota-probe.ts). */
export const OTA_ARCHES = ['arm64', 'armhf', 'armel'] as const;
export type OtaArch = (typeof OTA_ARCHES)[number];

export interface OtaSettings {
  /** A static busybox per architecture (Debian's busybox-static installs /bin/busybox). */
  busybox: Partial<Record<OtaArch, string>>;
  /** Bytes per part: the board holds one in RAM at a time. */
  partSize: number;
  /** The agent's TFTP address as the boards reach it; none = the address their sshd sees the agent at. */
  serverAddress?: string;
  /** Seconds to connect and log in, and for each SSH command. */
  connectTimeout: number;
  commandTimeout: number;
  /** RAM the board must have free beyond one part and the busybox binary. */
  ramMargin: number;
  /** TFTP block size the board's busybox asks for (it has no window: one block per round trip). */
  tftpBlockSize: number;
}

/** The lab server's own architecture as Debian names it, where busybox-static's /bin/busybox is. */
function ownArch(): OtaArch | undefined {
  return process.arch === 'arm64' ? 'arm64' : process.arch === 'arm' ? 'armhf' : undefined;
}

export const OTA_DEFAULTS = {
  partSize: 64 * 1024 ** 2,
  connectTimeout: 10,
  commandTimeout: 60,
  ramMargin: 16 * 1024 ** 2,
  tftpBlockSize: 1468,
} as const;

export function defaultOtaSettings(): OtaSettings {
  const arch = ownArch();
  return { ...OTA_DEFAULTS, busybox: arch ? { [arch]: '/bin/busybox' } : {} };
}

/** Checks `raw.ota`; pushes each problem (as config.ts words them) and returns usable settings. */
export function validateOtaSettings(raw: unknown, baseDir: string, problems: string[]): OtaSettings {
  const out = defaultOtaSettings();
  if (raw === undefined) return out;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    problems.push('"ota" must be an object');
    return out;
  }
  const o = raw as Record<string, unknown>;
  const keys = [
    'busybox',
    'partSize',
    'serverAddress',
    'connectTimeout',
    'commandTimeout',
    'ramMargin',
    'tftpBlockSize',
  ];
  for (const k of Object.keys(o)) if (!keys.includes(k)) problems.push(`unknown setting "ota.${k}"`);
  if (o.busybox !== undefined) {
    if (typeof o.busybox !== 'object' || o.busybox === null || Array.isArray(o.busybox)) {
      problems.push('"ota.busybox" must be an object like { "arm64": "/bin/busybox" }');
    } else {
      out.busybox = {};
      for (const [arch, file] of Object.entries(o.busybox as Record<string, unknown>)) {
        if (!(OTA_ARCHES as readonly string[]).includes(arch))
          problems.push(`unknown setting "ota.busybox.${arch}" (architectures: ${OTA_ARCHES.join(', ')})`);
        else if (typeof file !== 'string' || !file.trim())
          problems.push(`"ota.busybox.${arch}" must be the path of a static busybox`);
        else out.busybox[arch as OtaArch] = path.resolve(baseDir, file);
      }
    }
  }
  const size = (key: 'partSize' | 'ramMargin', min: number) => {
    const v = o[key];
    if (v === undefined) return;
    const n = parseSize(v);
    if (n === undefined || n < min)
      problems.push(`"ota.${key}" must be a size of at least ${min} bytes, got ${JSON.stringify(v)}`);
    else out[key] = n;
  };
  size('partSize', 512);
  size('ramMargin', 0);
  if (out.partSize % 512 !== 0) problems.push(`"ota.partSize" must be a multiple of 512 bytes, got ${out.partSize}`);
  const seconds = (key: 'connectTimeout' | 'commandTimeout') => {
    const v = o[key];
    if (v === undefined) return;
    if (typeof v !== 'number' || !(v > 0) || v > 3600)
      problems.push(`"ota.${key}" must be a number of seconds from 0 to 3600, got ${JSON.stringify(v)}`);
    else out[key] = v;
  };
  seconds('connectTimeout');
  seconds('commandTimeout');
  if (o.tftpBlockSize !== undefined) {
    const v = o.tftpBlockSize;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 512 || v > 65464)
      problems.push(`"ota.tftpBlockSize" must be an integer from 512 to 65464, got ${JSON.stringify(v)}`);
    else out.tftpBlockSize = v;
  }
  if (o.serverAddress !== undefined) {
    const v = o.serverAddress;
    if (typeof v !== 'string' || !/^(\d{1,3}\.){3}\d{1,3}$/.test(v))
      problems.push(`"ota.serverAddress" must be an IPv4 address, got ${JSON.stringify(v)}`);
    else out.serverAddress = v;
  }
  return out;
}
