/**
 * The agent's configuration: a JSON file, overridable by command-line flags, validated up front.
 * Every problem is collected and reported at once, so an operator fixes the file in one go.
 */
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { isIP, isIPv4 } from 'node:net';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseBootCheck } from '../../src/protocol/boot-check.js';
import type { Stage2Settings } from './board/stage2-script.js';
import { checkMinZeroRun } from './store/mapped-ranges.js';
import { builtinLayouts } from './layouts/registry.js';
import { isHostOf, parseSubnet } from './netboot/ipv4-subnet.js';
import { validateOtaSettings, type OtaSettings } from './layouts/ota-settings.js';

/** Health checks of the boards (lab/health-checks.ts). */
export interface HealthSettings {
  /** The known-good image (a path on the lab server); no checks can run without one. */
  image?: string;
  /** Seconds between scheduled checks of each board; none = no scheduled checks. */
  schedule?: number;
  /** Board-fault failures in a row that make a board unhealthy and start a check. */
  afterFailures: number;
  /** The check's boot check (`tcp:22`…); the agent's `bootCheck` when absent. */
  bootCheck?: string;
}

/** The DHCP responder for the Pi firmware's network boot (netboot/dhcp-responder.ts). */
export interface DhcpSettings {
  /**
   * `off`: no responder. `proxy`: beside the lab's own DHCP server, answering only the Pi firmware
   * of the database's boards. `full`: the only DHCP server of an isolated lab network, giving each
   * board its row's IP.
   */
  mode: 'off' | 'proxy' | 'full';
  /** Bind address; keep 0.0.0.0, as DISCOVERs are broadcasts. */
  address: string;
  port: number;
  /** The agent's address as the boards see it: their TFTP server (options 54, 66, siaddr). Required unless off. */
  serverIp?: string;
  /** The lab network as CIDR; required in `full` mode, where every row's IP must be a host of it. */
  subnet?: string;
  /** `full`: the router the boards are told (option 3); none when absent. */
  router?: string;
  /** `full`: the lease the boards are given, seconds. */
  leaseSeconds: number;
}

export interface AgentConfig {
  /** The agent's name, told to clients (welcome, leased) so a job says which agent ran it; default the host name. */
  name: string;
  listen: {
    host: string;
    port: number;
    tls?: { cert: string; key: string };
    /** Unread reply bytes one client may leave queued before the agent stops reading from it; twice this drops it. */
    maxSendBuffer: number;
  };
  /** The shared secret clients present as `Authorization: Bearer <token>`. */
  token: string;
  targets: string;
  tftp: {
    root: string;
    address: string;
    port: number;
    /** Refuse a target's files to any peer but the target's IP (off only where NAT hides the boards' addresses). */
    checkClientIp: boolean;
    maxBlksize: number;
    maxWindowsize: number;
    /** Transfers at once from one client address; an idle one (tftp/admission.ts) makes room for a new one. */
    maxTransfersPerClient: number;
    /** Transfers at once in all; likewise. */
    maxTransfers: number;
    /** Largest `timeout` option (seconds) a client may negotiate; a silent transfer ends after 6 × it. */
    maxTimeout: number;
  };
  stateDir: string;
  store: {
    maxBytes: number;
    /** Seconds a partial upload waits for a client to resume it before it is removed. */
    partialTtl: number;
  };
  /** Stage 2's settings (U-Boot memory map in hex; the defaults suit every Pi with ≥ 1 GiB) and the parts. */
  flash: Omit<Stage2Settings, 'tftpWindowSize'> & {
    /**
     * The TFTP window stage 2 asks for: a number, or `auto` to have each board measured and given
     * the fastest (staging/window-tuning.ts); unset, U-Boot's own lock-step. A targets row's
     * `windowsize` goes over it.
     */
    tftpWindowSize?: number | 'auto';
    partSize: number;
    resetPulseMs: number;
    /** Layout seed: the seed card's part size (750 MiB); change it only for tests. */
    seedPartSize: number;
    /**
     * The slowest a board's card may write, bytes per second: a board is silent while it writes a
     * part and reads it back, and that silence is no stall.
     */
    cardWriteRate: number;
    /** Write every byte of the image, not only its mapped ranges (store/mapped-ranges.ts). */
    writeZeros: boolean;
    /** All-zero runs at least this long are unmapped when the agent derives an image's ranges. */
    minZeroRun: number;
    /**
     * `auto`: parts travel gzip'd to boards whose model's U-Boot has `unzip` once the board has
     * confirmed it (layouts/stage2-flash.ts); `off`: always raw.
     */
    compress: 'auto' | 'off';
    /** Where a compressed part is downloaded before `unzip` inflates it to `loadAddr`. */
    zipAddr: number;
    /**
     * Stage 2 reads each part from the card first and skips it when its CRC already matches
     * (trusting the board's reading of its own card; README "Read-compare").
     */
    readCompare: boolean;
  };
  timeouts: {
    /** Seconds from reset until the board must fetch its script. */
    boardShow: number;
    /** Seconds without any TFTP activity from the board mid-flash. */
    stall: number;
    /** Seconds for the boot check after the board reported success. */
    boot: number;
    /** Seconds a silent or disconnected client keeps its lease. */
    leaseGrace: number;
    /** Seconds a running job gets to wind down on shutdown. */
    shutdown: number;
  };
  /** Boot check when a job names none: `tcp:22`, `tcp:host:port` or `none`. */
  bootCheck: string;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** The simulated lab: boards with reset spec `sim`. */
  sim: { bootPort: number; cardSize: number };
  /** Layout for targets whose CSV row names none (layouts/registry.ts): `inject` keeps boards network-flashable. */
  defaultLayout: string;
  /** Health checks of the boards (lab/health-checks.ts): a known-good image, when and after how many failures. */
  health: HealthSettings;
  /** The read-only dashboard on the listen port (dashboard/, README "Dashboard and metrics"). */
  dashboard: {
    enabled: boolean;
    /** A read-only token that opens the dashboard (the agent token always does). */
    token?: string;
    /** Dashboard pages open at once (each holds one event stream). */
    maxClients: number;
    /** Where a holder's `owner/repo run N` links to: `<runLinkBase>/owner/repo/actions/runs/N`. */
    runLinkBase: string;
  };
  /** The DHCP responder for network boot: off unless set. */
  dhcp: DhcpSettings;
  /** GET /metrics in the Prometheus text format (metrics/). */
  metrics: {
    enabled: boolean;
    /** The token Prometheus sends as a bearer token (the agent token is accepted too). */
    token?: string;
  };
  /** The in-place update over SSH (layout ota, layouts/ota-settings.ts). */
  ota: OtaSettings;
  /** What the inject layout carries into each image. */
  uboot: {
    /** Stage 1 script image; default: the agent's own `uboot/boot.scr`. */
    bootScr: string;
    /** U-Boot per board model (`pi3`, `pi4`, `arm64`…); default: Debian's u-boot-rpi build for it. */
    binaries: Record<string, string>;
    /** Model assumed for targets whose CSV row names none. */
    defaultModel: string;
  };
}

/**
 * The stage-1 script image shipped with the agent: `uboot/boot.scr` at the top of the package,
 * two folders up from the sources and three from the compiled `build/` copy.
 */
export const SHIPPED_BOOT_SCR =
  [new URL('../../uboot/boot.scr', import.meta.url), new URL('../../../uboot/boot.scr', import.meta.url)]
    .map((u) => fileURLToPath(u))
    .find((f) => existsSync(f)) ?? fileURLToPath(new URL('../../uboot/boot.scr', import.meta.url));

export const DEFAULTS = {
  listen: { host: '0.0.0.0', port: 8443, maxSendBuffer: 8 * 1024 ** 2 },
  tftp: {
    root: '/srv/tftp',
    address: '0.0.0.0',
    port: 69,
    checkClientIp: true,
    maxBlksize: 65464,
    maxWindowsize: 64,
    maxTransfersPerClient: 8,
    maxTransfers: 256,
    maxTimeout: 10,
  },
  stateDir: '/var/lib/rpi-flash',
  // Six hours: well past any retry of the same workflow run, and short enough that abandoned uploads do not pile up.
  store: { maxBytes: 32 * 1024 ** 3, partialTtl: 6 * 3600 },
  flash: {
    partSize: 64 * 1024 ** 2,
    retries: 2,
    resetPulseMs: 200,
    loadAddr: 0x1000_0000,
    crcAddr: 0x0f00_0000,
    beaconAddr: 0x0f10_0000,
    mmcDev: 0,
    seedPartSize: 750 * 1024 ** 2,
    // SD speed class 2, the slowest the SD specification names.
    cardWriteRate: 2 * 1024 ** 2,
    writeZeros: false,
    // A new part costs the board a TFTP request and a report: shorter zero runs travel inside their part.
    minZeroRun: 1024 ** 2,
    compress: 'auto',
    // Below the CRC slot: free RAM during stage 2 on every Pi (the initramfs's place in stage 1),
    // room for 192 MiB of compressed part, and no extra RAM at the top (512 MB boards).
    zipAddr: 0x0300_0000,
    readCompare: false,
  },
  timeouts: { boardShow: 90, stall: 120, boot: 300, leaseGrace: 60, shutdown: 10 },
  bootCheck: 'tcp:22',
  logLevel: 'info',
  sim: { bootPort: 2222, cardSize: 256 * 1024 ** 2 },
  defaultLayout: 'inject',
  uboot: { defaultModel: 'arm64' },
  // The dashboard opens only with a token, so it is on; /metrics is for those who run Prometheus.
  dashboard: { enabled: true, maxClients: 16, runLinkBase: 'https://github.com' },
  metrics: { enabled: false },
  health: { afterFailures: 3 },
  // Off: an agent must never start answering DHCP on a lab network because it was upgraded.
  dhcp: { mode: 'off', address: '0.0.0.0', port: 67, leaseSeconds: 3600 },
} as const;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
};

const DURATION_UNITS: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86_400 };

/** `3600`, `"90s"`, `"15m"`, `"24h"`, `"7d"` → seconds; undefined when not a duration. */
export function parseDuration(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value > 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$/i.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]) * DURATION_UNITS[m[2]!.toLowerCase()]!;
  return n > 0 ? n : undefined;
}

/** `1073741824`, `"1GiB"`, `"64 MiB"`, `"512k"` → bytes; undefined when not a size. */
export function parseSize(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value);
  if (!m) return undefined;
  const unit = SIZE_UNITS[m[2]!.toLowerCase()];
  return unit === undefined ? undefined : Math.round(Number(m[1]) * unit);
}

type Raw = Record<string, unknown>;

/**
 * Turn a raw object (the parsed file merged with flag overrides) into a config, or throw a
 * ConfigError listing every problem. Relative paths resolve against `baseDir` (the file's folder).
 */
export async function validateConfig(raw: Raw, baseDir: string): Promise<AgentConfig> {
  const problems: string[] = [];
  const obj = (key: string, from: Raw = raw): Raw => {
    const v = from[key];
    if (v === undefined) return {};
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Raw;
    problems.push(`"${key}" must be an object`);
    return {};
  };
  const known = (from: Raw, where: string, keys: string[]) => {
    for (const k of Object.keys(from)) if (!keys.includes(k)) problems.push(`unknown setting "${where}${k}"`);
  };
  const int = (name: string, v: unknown, dflt: number | undefined, min: number, max: number): number => {
    if (v === undefined) {
      if (dflt === undefined) problems.push(`"${name}" is required`);
      return dflt ?? min;
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      problems.push(`"${name}" must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
      return dflt ?? min;
    }
    return v;
  };
  const seconds = (name: string, v: unknown, dflt: number): number => {
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !(v > 0) || v > 86_400) {
      problems.push(`"${name}" must be a number of seconds between 0 and 86400, got ${JSON.stringify(v)}`);
      return dflt;
    }
    return v;
  };
  const size = (name: string, v: unknown, dflt: number): number => {
    if (v === undefined) return dflt;
    const n = parseSize(v);
    if (n === undefined || n === 0) {
      problems.push(`"${name}" must be a size like 64MiB or a byte count, got ${JSON.stringify(v)}`);
      return dflt;
    }
    return n;
  };
  const string = (name: string, v: unknown, dflt?: string): string => {
    if (v === undefined) {
      if (dflt === undefined) problems.push(`"${name}" is required`);
      return dflt ?? '';
    }
    if (typeof v !== 'string' || v.trim() === '') {
      problems.push(`"${name}" must be a non-empty string`);
      return dflt ?? '';
    }
    return v;
  };
  const file = (v: string) => path.resolve(baseDir, v);
  const address = (name: string, v: string) => {
    if (v !== 'localhost' && isIP(v) === 0) problems.push(`"${name}" must be an IP address, got "${v}"`);
    return v;
  };

  known(raw, '', [
    'name',
    'health',
    'listen',
    'token',
    'tokenFile',
    'targets',
    'tftp',
    'stateDir',
    'store',
    'flash',
    'timeouts',
    'bootCheck',
    'logLevel',
    'sim',
    'defaultLayout',
    'uboot',
    'dashboard',
    'metrics',
    'dhcp',
    'ota',
  ]);

  const listenRaw = obj('listen');
  known(listenRaw, 'listen.', ['host', 'port', 'tls', 'maxSendBuffer']);
  const tlsRaw = listenRaw.tls === undefined ? undefined : obj('tls', listenRaw);
  let tls: AgentConfig['listen']['tls'];
  if (tlsRaw) {
    known(tlsRaw, 'listen.tls.', ['cert', 'key']);
    tls = { cert: file(string('listen.tls.cert', tlsRaw.cert)), key: file(string('listen.tls.key', tlsRaw.key)) };
  }
  const listen = {
    host: address('listen.host', string('listen.host', listenRaw.host, DEFAULTS.listen.host)),
    port: int('listen.port', listenRaw.port, DEFAULTS.listen.port, 0, 65535),
    ...(tls ? { tls } : {}),
    maxSendBuffer: size('listen.maxSendBuffer', listenRaw.maxSendBuffer, DEFAULTS.listen.maxSendBuffer),
  };
  // Below 1 MiB one long result (a part report each) could pass twice the limit on its own and drop its client.
  if (listen.maxSendBuffer < 1024 ** 2 || listen.maxSendBuffer > 1024 ** 3)
    problems.push(`"listen.maxSendBuffer" must be from 1MiB to 1GiB, got ${JSON.stringify(listenRaw.maxSendBuffer)}`);

  let token = '';
  if (raw.token !== undefined && raw.tokenFile !== undefined) problems.push('set "token" or "tokenFile", not both');
  if (raw.tokenFile !== undefined) {
    const tokenFile = file(string('tokenFile', raw.tokenFile));
    try {
      token = (await readFile(tokenFile, 'utf8')).trim();
      if (!token) problems.push(`token file ${tokenFile} is empty`);
    } catch (err) {
      problems.push(`cannot read token file ${tokenFile}: ${(err as Error).message}`);
    }
  } else if (raw.token !== undefined) {
    token = string('token', raw.token);
  } else {
    problems.push('"token" or "tokenFile" is required (clients authenticate with it)');
  }
  if (token && token.length < 16) problems.push('the token must be at least 16 characters');

  const targets = file(string('targets', raw.targets));

  const tftpRaw = obj('tftp');
  known(tftpRaw, 'tftp.', [
    'root',
    'address',
    'port',
    'checkClientIp',
    'maxBlksize',
    'maxWindowsize',
    'maxTransfersPerClient',
    'maxTransfers',
    'maxTimeout',
  ]);
  if (tftpRaw.checkClientIp !== undefined && typeof tftpRaw.checkClientIp !== 'boolean')
    problems.push('"tftp.checkClientIp" must be true or false');
  const tftp = {
    root: file(string('tftp.root', tftpRaw.root, DEFAULTS.tftp.root)),
    address: address('tftp.address', string('tftp.address', tftpRaw.address, DEFAULTS.tftp.address)),
    port: int('tftp.port', tftpRaw.port, DEFAULTS.tftp.port, 0, 65535),
    checkClientIp: (tftpRaw.checkClientIp as boolean | undefined) ?? DEFAULTS.tftp.checkClientIp,
    maxBlksize: int('tftp.maxBlksize', tftpRaw.maxBlksize, DEFAULTS.tftp.maxBlksize, 512, 65464),
    maxWindowsize: int('tftp.maxWindowsize', tftpRaw.maxWindowsize, DEFAULTS.tftp.maxWindowsize, 1, 65535),
    maxTransfersPerClient: int(
      'tftp.maxTransfersPerClient',
      tftpRaw.maxTransfersPerClient,
      DEFAULTS.tftp.maxTransfersPerClient,
      1,
      1024,
    ),
    maxTransfers: int('tftp.maxTransfers', tftpRaw.maxTransfers, DEFAULTS.tftp.maxTransfers, 1, 4096),
    // RFC 2349 allows 1..255; the default keeps a silent transfer to a minute.
    maxTimeout: int('tftp.maxTimeout', tftpRaw.maxTimeout, DEFAULTS.tftp.maxTimeout, 1, 255),
  };
  if (tftp.maxTransfersPerClient > tftp.maxTransfers)
    problems.push(
      `"tftp.maxTransfersPerClient" (${tftp.maxTransfersPerClient}) must not exceed ` +
        `"tftp.maxTransfers" (${tftp.maxTransfers})`,
    );

  const storeRaw = obj('store');
  known(storeRaw, 'store.', ['maxBytes', 'partialTtl']);
  let partialTtl: number = DEFAULTS.store.partialTtl;
  if (storeRaw.partialTtl !== undefined) {
    const v = storeRaw.partialTtl;
    if (typeof v === 'number' && v > 0 && v <= 30 * 86_400) partialTtl = v;
    else
      problems.push(
        `"store.partialTtl" must be a number of seconds between 0 and 2592000 (30 days), got ${JSON.stringify(v)}`,
      );
  }

  const bool = (name: string, v: unknown, dflt: boolean): boolean => {
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') problems.push(`"${name}" must be true or false`);
    return typeof v === 'boolean' ? v : dflt;
  };
  const flashRaw = obj('flash');
  known(flashRaw, 'flash.', [
    'partSize',
    'retries',
    'resetPulseMs',
    'loadAddr',
    'crcAddr',
    'beaconAddr',
    'mmcDev',
    'tftpBlockSize',
    'tftpWindowSize',
    'seedPartSize',
    'cardWriteRate',
    'writeZeros',
    'minZeroRun',
    'compress',
    'zipAddr',
    'readCompare',
  ]);
  const hex = (name: string, v: unknown, dflt: number): number => {
    if (v === undefined) return dflt;
    const n =
      typeof v === 'string' && /^0x[0-9a-f]+$/i.test(v) ? Number.parseInt(v, 16) : typeof v === 'number' ? v : NaN;
    if (!Number.isSafeInteger(n) || n < 0 || n > 0xffff_ffff) {
      problems.push(`"${name}" must be an address like "0x10000000", got ${JSON.stringify(v)}`);
      return dflt;
    }
    return n;
  };
  const partSize = size('flash.partSize', flashRaw.partSize, DEFAULTS.flash.partSize);
  if (partSize % 512 !== 0) problems.push(`"flash.partSize" must be a multiple of 512 bytes, got ${partSize}`);
  const flash: AgentConfig['flash'] = {
    partSize,
    retries: int('flash.retries', flashRaw.retries, DEFAULTS.flash.retries, 0, 10),
    resetPulseMs: int('flash.resetPulseMs', flashRaw.resetPulseMs, DEFAULTS.flash.resetPulseMs, 1, 60_000),
    loadAddr: hex('flash.loadAddr', flashRaw.loadAddr, DEFAULTS.flash.loadAddr),
    crcAddr: hex('flash.crcAddr', flashRaw.crcAddr, DEFAULTS.flash.crcAddr),
    beaconAddr: hex('flash.beaconAddr', flashRaw.beaconAddr, DEFAULTS.flash.beaconAddr),
    mmcDev: int('flash.mmcDev', flashRaw.mmcDev, DEFAULTS.flash.mmcDev, 0, 15),
    seedPartSize: size('flash.seedPartSize', flashRaw.seedPartSize, DEFAULTS.flash.seedPartSize),
    cardWriteRate: size('flash.cardWriteRate', flashRaw.cardWriteRate, DEFAULTS.flash.cardWriteRate),
    writeZeros: bool('flash.writeZeros', flashRaw.writeZeros, DEFAULTS.flash.writeZeros),
    minZeroRun: size('flash.minZeroRun', flashRaw.minZeroRun, DEFAULTS.flash.minZeroRun),
    compress: DEFAULTS.flash.compress,
    zipAddr: hex('flash.zipAddr', flashRaw.zipAddr, DEFAULTS.flash.zipAddr),
    readCompare: bool('flash.readCompare', flashRaw.readCompare, DEFAULTS.flash.readCompare),
  };
  if (flashRaw.compress !== undefined) {
    if (flashRaw.compress === 'auto' || flashRaw.compress === 'off') flash.compress = flashRaw.compress;
    else problems.push(`"flash.compress" must be "auto" or "off", got ${JSON.stringify(flashRaw.compress)}`);
  }
  try {
    checkMinZeroRun(flash.minZeroRun);
  } catch (err) {
    problems.push(`"flash.minZeroRun": ${(err as Error).message}`);
  }
  if (flash.cardWriteRate < 64 * 1024)
    problems.push(`"flash.cardWriteRate" must be at least 64KiB (per second), got ${flash.cardWriteRate}`);
  if (flashRaw.tftpBlockSize !== undefined)
    flash.tftpBlockSize = int('flash.tftpBlockSize', flashRaw.tftpBlockSize, undefined, 512, 65464);
  if (flashRaw.tftpWindowSize === 'auto') flash.tftpWindowSize = 'auto';
  else if (typeof flashRaw.tftpWindowSize === 'string')
    problems.push(
      `"flash.tftpWindowSize" must be a window of 1 to 64 blocks or "auto", ` +
        `got ${JSON.stringify(flashRaw.tftpWindowSize)}`,
    );
  else if (flashRaw.tftpWindowSize !== undefined)
    flash.tftpWindowSize = int('flash.tftpWindowSize', flashRaw.tftpWindowSize, undefined, 1, 64);

  const timeoutsRaw = obj('timeouts');
  known(timeoutsRaw, 'timeouts.', ['boardShow', 'stall', 'boot', 'leaseGrace', 'shutdown']);
  const timeouts = {
    boardShow: seconds('timeouts.boardShow', timeoutsRaw.boardShow, DEFAULTS.timeouts.boardShow),
    stall: seconds('timeouts.stall', timeoutsRaw.stall, DEFAULTS.timeouts.stall),
    boot: seconds('timeouts.boot', timeoutsRaw.boot, DEFAULTS.timeouts.boot),
    leaseGrace: seconds('timeouts.leaseGrace', timeoutsRaw.leaseGrace, DEFAULTS.timeouts.leaseGrace),
    shutdown: seconds('timeouts.shutdown', timeoutsRaw.shutdown, DEFAULTS.timeouts.shutdown),
  };

  const bootCheck = string('bootCheck', raw.bootCheck, DEFAULTS.bootCheck);
  try {
    parseBootCheck(bootCheck);
  } catch (err) {
    problems.push(`"bootCheck": ${(err as Error).message}`);
  }

  const logLevel = string('logLevel', raw.logLevel, DEFAULTS.logLevel) as AgentConfig['logLevel'];
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel))
    problems.push(`"logLevel" must be debug, info, warn or error, got "${logLevel}"`);

  const simRaw = obj('sim');
  known(simRaw, 'sim.', ['bootPort', 'cardSize']);

  const defaultLayout = string('defaultLayout', raw.defaultLayout, DEFAULTS.defaultLayout);
  const layoutNames = Object.keys(builtinLayouts);
  if (!layoutNames.includes(defaultLayout))
    problems.push(`"defaultLayout" must be one of ${layoutNames.join(', ')}, got "${defaultLayout}"`);
  const ubootRaw = obj('uboot');
  known(ubootRaw, 'uboot.', ['bootScr', 'binaries', 'defaultModel']);
  const binaries: Record<string, string> = {};
  const binariesRaw = ubootRaw.binaries === undefined ? {} : obj('binaries', ubootRaw);
  for (const [model, bin] of Object.entries(binariesRaw))
    binaries[model.toLowerCase()] = file(string(`uboot.binaries.${model}`, bin));

  const name = string('name', raw.name, os.hostname() || 'rpi-flash-agent');
  if (name.length > 128 || [...name].some((c) => c.charCodeAt(0) < 0x20))
    problems.push('"name" must be at most 128 characters, without control characters');

  const healthRaw = obj('health');
  known(healthRaw, 'health.', ['image', 'schedule', 'afterFailures', 'bootCheck']);
  const health: HealthSettings = {
    afterFailures: int('health.afterFailures', healthRaw.afterFailures, DEFAULTS.health.afterFailures, 1, 1000),
  };
  if (healthRaw.image !== undefined) health.image = file(string('health.image', healthRaw.image));
  if (healthRaw.schedule !== undefined) {
    const every = parseDuration(healthRaw.schedule);
    if (every === undefined || every > 365 * 86_400)
      problems.push(
        `"health.schedule" must be a duration like "24h", "30m", "90s" or seconds, ` +
          `got ${JSON.stringify(healthRaw.schedule)}`,
      );
    else health.schedule = every;
    if (healthRaw.image === undefined) problems.push('"health.schedule" needs "health.image" (the known-good image)');
  }
  if (healthRaw.bootCheck !== undefined) {
    health.bootCheck = string('health.bootCheck', healthRaw.bootCheck);
    try {
      parseBootCheck(health.bootCheck);
    } catch (err) {
      problems.push(`"health.bootCheck": ${(err as Error).message}`);
    }
  }

  /** A section's own token (`token` or `tokenFile`), at least 16 characters and never the agent token. */
  const sectionToken = async (section: string, from: Raw): Promise<string | undefined> => {
    if (from.token !== undefined && from.tokenFile !== undefined)
      problems.push(`set "${section}.token" or "${section}.tokenFile", not both`);
    let value: string | undefined;
    if (from.tokenFile !== undefined) {
      const f = file(string(`${section}.tokenFile`, from.tokenFile));
      try {
        value = (await readFile(f, 'utf8')).trim();
      } catch (err) {
        problems.push(`cannot read token file ${f}: ${(err as Error).message}`);
      }
    } else if (from.token !== undefined) value = string(`${section}.token`, from.token);
    if (value !== undefined && value.length < 16) problems.push(`the ${section} token must be at least 16 characters`);
    if (value !== undefined && value === token)
      problems.push(`the ${section} token must differ from the agent token (it is meant to open less)`);
    return value || undefined;
  };
  const dashboardRaw = obj('dashboard');
  known(dashboardRaw, 'dashboard.', ['enabled', 'token', 'tokenFile', 'maxClients', 'runLinkBase']);
  const dashboardToken = await sectionToken('dashboard', dashboardRaw);
  const runLinkBase = string('dashboard.runLinkBase', dashboardRaw.runLinkBase, DEFAULTS.dashboard.runLinkBase);
  if (!/^https?:\/\/[^\s/]+/.test(runLinkBase))
    problems.push(`"dashboard.runLinkBase" must be an http(s) URL like https://github.com, got "${runLinkBase}"`);
  const dashboard: AgentConfig['dashboard'] = {
    enabled: bool('dashboard.enabled', dashboardRaw.enabled, DEFAULTS.dashboard.enabled),
    ...(dashboardToken ? { token: dashboardToken } : {}),
    maxClients: int('dashboard.maxClients', dashboardRaw.maxClients, DEFAULTS.dashboard.maxClients, 1, 1000),
    runLinkBase,
  };
  const metricsRaw = obj('metrics');
  known(metricsRaw, 'metrics.', ['enabled', 'token', 'tokenFile']);
  const metricsToken = await sectionToken('metrics', metricsRaw);
  const metrics: AgentConfig['metrics'] = {
    enabled: bool('metrics.enabled', metricsRaw.enabled, DEFAULTS.metrics.enabled),
    ...(metricsToken ? { token: metricsToken } : {}),
  };

  const dhcpRaw = obj('dhcp');
  known(dhcpRaw, 'dhcp.', ['mode', 'address', 'port', 'serverIp', 'subnet', 'router', 'leaseSeconds']);
  const ipv4 = (name: string, v: unknown): string | undefined => {
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || !isIPv4(v) || v === '0.0.0.0') {
      problems.push(`"${name}" must be an IPv4 address, got ${JSON.stringify(v)}`);
      return undefined;
    }
    return v;
  };
  const dhcp: DhcpSettings = {
    mode: DEFAULTS.dhcp.mode,
    address: DEFAULTS.dhcp.address,
    port: int('dhcp.port', dhcpRaw.port, DEFAULTS.dhcp.port, 0, 65535),
    leaseSeconds: int('dhcp.leaseSeconds', dhcpRaw.leaseSeconds, DEFAULTS.dhcp.leaseSeconds, 60, 7 * 86_400),
  };
  if (dhcpRaw.mode !== undefined) {
    if (dhcpRaw.mode === 'off' || dhcpRaw.mode === 'proxy' || dhcpRaw.mode === 'full') dhcp.mode = dhcpRaw.mode;
    else problems.push(`"dhcp.mode" must be "off", "proxy" or "full", got ${JSON.stringify(dhcpRaw.mode)}`);
  }
  if (dhcpRaw.address !== undefined) {
    // The responder's socket is IPv4 (DHCPv4); the wildcard is an address here.
    if (typeof dhcpRaw.address === 'string' && isIPv4(dhcpRaw.address)) dhcp.address = dhcpRaw.address;
    else problems.push(`"dhcp.address" must be an IPv4 address, got ${JSON.stringify(dhcpRaw.address)}`);
  }
  const serverIp = ipv4('dhcp.serverIp', dhcpRaw.serverIp);
  if (serverIp) dhcp.serverIp = serverIp;
  else if (dhcpRaw.serverIp === undefined && dhcp.mode !== 'off')
    problems.push(
      `"dhcp.serverIp" is required when "dhcp.mode" is "${dhcp.mode}" (the agent's address on the boards' network)`,
    );
  const router = ipv4('dhcp.router', dhcpRaw.router);
  if (router) dhcp.router = router;
  if (dhcpRaw.subnet !== undefined) {
    const subnet = typeof dhcpRaw.subnet === 'string' ? parseSubnet(dhcpRaw.subnet) : undefined;
    if (!subnet || 'problem' in subnet)
      problems.push(`"dhcp.subnet": ${subnet ? subnet.problem : 'must be a subnet like "192.168.7.0/24"'}`);
    else {
      dhcp.subnet = subnet.cidr;
      if (serverIp && !isHostOf(subnet, serverIp))
        problems.push(`"dhcp.serverIp" ${serverIp} is not a host address of "dhcp.subnet" ${subnet.cidr}`);
      if (router && !isHostOf(subnet, router))
        problems.push(`"dhcp.router" ${router} is not a host address of "dhcp.subnet" ${subnet.cidr}`);
    }
  } else if (dhcp.mode === 'full')
    problems.push('"dhcp.subnet" is required when "dhcp.mode" is "full" (the lab network, e.g. "192.168.7.0/24")');

  const config: AgentConfig = {
    name,
    health,
    listen,
    token,
    targets,
    tftp,
    stateDir: file(string('stateDir', raw.stateDir, DEFAULTS.stateDir)),
    store: { maxBytes: size('store.maxBytes', storeRaw.maxBytes, DEFAULTS.store.maxBytes), partialTtl },
    flash,
    timeouts,
    bootCheck,
    logLevel,
    sim: {
      bootPort: int('sim.bootPort', simRaw.bootPort, DEFAULTS.sim.bootPort, 1, 65535),
      cardSize: size('sim.cardSize', simRaw.cardSize, DEFAULTS.sim.cardSize),
    },
    defaultLayout,
    dashboard,
    metrics,
    dhcp,
    ota: validateOtaSettings(raw.ota, baseDir, problems),
    uboot: {
      bootScr: ubootRaw.bootScr === undefined ? SHIPPED_BOOT_SCR : file(string('uboot.bootScr', ubootRaw.bootScr)),
      binaries,
      defaultModel: string('uboot.defaultModel', ubootRaw.defaultModel, DEFAULTS.uboot.defaultModel).toLowerCase(),
    },
  };
  if (problems.length) throw new ConfigError(problems);
  return config;
}

/**
 * Read a JSON config file, apply overrides (dotted keys, e.g. `tftp.port`), validate. The file may
 * carry `//` and `/* … *\/` comments: the packaged example explains each setting where it is set.
 */
export async function loadConfig(file: string, overrides: Record<string, unknown> = {}): Promise<AgentConfig> {
  let raw: Raw;
  try {
    raw = JSON.parse(withoutComments(await readFile(file, 'utf8'))) as Raw;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new ConfigError([
      e.code === 'ENOENT' ? `config file ${file} does not exist` : `cannot read config file ${file}: ${e.message}`,
    ]);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new ConfigError([`${file} must hold a JSON object`]);
  for (const [dotted, value] of Object.entries(overrides)) setDotted(raw, dotted, value);
  return validateConfig(raw, path.dirname(path.resolve(file)));
}

export function setDotted(target: Raw, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let node = target;
  for (const key of keys.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
    node = node[key] as Raw;
  }
  node[keys.at(-1)!] = value;
}

/**
 * JSON text with its `//` and `/* … *\/` comments blanked out, strings left alone (a `//` in a URL
 * stays). Comments become spaces and their line breaks stay, so JSON.parse's positions still point
 * into the file as written. Throws a SyntaxError for a block comment that never ends.
 */
export function withoutComments(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === '/' && (text[i + 1] === '/' || text[i + 1] === '*')) {
      const block = text[i + 1] === '*';
      const close = block ? text.indexOf('*/', i + 2) : text.indexOf('\n', i);
      if (block && close === -1)
        throw new SyntaxError(`a /* comment on line ${text.slice(0, i).split('\n').length} never ends`);
      const end = close === -1 ? text.length : block ? close + 2 : close;
      out += text.slice(i, end).replace(/[^\n]/g, ' ');
      i = end;
    } else {
      out += c;
      i += 1;
    }
  }
  return out;
}
