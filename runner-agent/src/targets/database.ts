/**
 * The targets database (DESIGN §3.3): which boards the agent may flash, how to find them on the
 * network and how to reset them. A CSV file with a header row, in one of two formats, told apart
 * by the header (case and spaces ignored):
 *
 * 1. The native format. Columns (any order):
 *      name    required  unique; letters, digits, `.`, `_`, `-`; what workflows pass as `target`
 *      mac     required  unique; `b8:27:eb:28:f6:6d` or with `-`, any case
 *      ip      required  unique; dotted IPv4, used by the boot check
 *      reset   required  a reset spec (see parseResetSpec): gpio:<bcm>, gpiod:<chip>:<line>,
 *                        cmd:<command>, qmp:<socket path>, sim[:flag,flag…], none (layout ota: the
 *                        layout reboots the board itself), ssh or ssh,<hard spec> (`reboot` over
 *                        the row's SSH, the hard spec when SSH does not answer; quote it in CSV)
 *      model   optional  free text, e.g. `pi4b`
 *      serial  optional  free text
 *      labels  optional  separated by spaces or `;`
 *      layout  optional  how an image lands on the card: a name in layouts/registry.ts (inject,
 *                        whole, seed…; the README's "Layouts" says what each does); empty: the
 *                        agent's `defaultLayout`
 *      console optional  where the board's serial console is read during a job (see
 *                        console/spec.ts): serial:/dev/ttyUSB0@115200, tcp:<host>:<port>
 *                        (ser2net, raw mode) or unix:<socket path> (QEMU's -serial unix:…)
 *      windowsize optional the TFTP window this board's U-Boot asks for (1–64, decimal), over the
 *                        agent's `flash.tftpWindowSize`: for boards measured faster (or only safe)
 *                        with their own
 *      netboot optional  the folder the board's own firmware (Pi 3 ROM, Pi 4/5 EEPROM) fetches its
 *                        boot files from over TFTP (DESIGN §8), see parseNetbootSpec: empty = the
 *                        board does not network-boot; `serial` (its `serial`'s low 32 bits),
 *                        `mac` (`dc-a6-32-01-36-c2`) or `prefix:<TFTP_PREFIX_STR>`
 *      ssh     optional  `<user>[:<port>]` on the row's ip (targets/ssh-access.ts); with sshkey
 *      sshkey  optional  the private key file (relative: against this file's folder) and hostkey
 *      hostkey optional  the board's pinned public host key line or `SHA256:` fingerprint. The three
 *                        are required by layout `ota` and reset `ssh`.
 *    A `cmd:` spec that contains a comma must be quoted as a CSV field: `"cmd:relay 3,off"`.
 *
 * 2. The seed system's file, as is: header `mac address,ip address,reset gpio (wiring pi)`. The
 *    wiringPi pin becomes `gpio:<bcm>` (see wiringpi.ts), the layout is `seed`, and the name is the
 *    MAC with `-` (`b8-27-eb-28-f6-6d`).
 *
 * Whole-line comments start with `#`; blank lines are skipped; fields are trimmed. A `#` inside a
 * field is data (a command may contain one). Line numbers in problems are real line numbers in the
 * file, counting comments and blank lines. Any problem fails the whole load, listing every problem
 * at once: a bad row never silently drops a target (the agent keeps its previous database).
 */
import { parseFaults } from '../sim/sim-board.js';
import { readFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import path from 'node:path';
import { CsvError, parse } from 'csv-parse/sync';
import { isMac, macDir, normalizeMac } from '../../../src/protocol/tftp-names.js';
import { wiringPiToBcm } from './wiringpi.js';
import { builtinLayouts } from '../layouts/registry.js';
import { parseConsoleSpec, type ConsoleSpec } from '../console/spec.js';
import { parseSshAccess, type SshAccess } from './ssh-access.js';

export type ResetSpec =
  | { kind: 'gpio'; bcm: number }
  | { kind: 'gpiod'; chip: string; line: string /* offset or name */ }
  | { kind: 'cmd'; command: string }
  | { kind: 'qmp'; socket: string }
  | { kind: 'sim'; options: string[] /* e.g. sim:no-show,fail-write — free-form fault flags */ }
  /** No reset line: the layout restarts the board itself (`ota`). */
  | { kind: 'none' }
  /** `reboot` over the row's SSH (reset/ssh.ts); the hard reset when SSH does not answer. */
  | { kind: 'ssh'; fallback?: HardResetSpec };

/** A reset that needs nothing from the running system: what `ssh,<spec>` falls back to. */
export type HardResetSpec = Exclude<ResetSpec, { kind: 'none' } | { kind: 'ssh' }>;

/** The layout that writes the card from the running system over SSH: its rows need the SSH columns. */
export const OTA_LAYOUT = 'ota';

export interface Target {
  name: string;
  /** normalizeMac() form: lower case, `:` separators. */
  mac: string;
  ip: string;
  reset: ResetSpec;
  /** The reset spec as written (for gpio rows from the seed file: the mapped `gpio:<bcm>`). */
  resetText: string;
  model?: string;
  serial?: string;
  labels: string[];
  /** How the image lands on the card (a name in layouts/registry.ts); undefined = the agent's `defaultLayout`. */
  layout?: string;
  /** The board's serial console, when the database names one. */
  console?: ConsoleSpec;
  /** The TFTP window its stage 2 asks for, over the agent's `flash.tftpWindowSize`. */
  tftpWindowSize?: number;
  /** Where its firmware's network boot looks for files; absent = the board does not network-boot. */
  netboot?: NetbootFolder;
  /** How the agent logs in to the running board (layout ota, reset ssh). */
  ssh?: SshAccess;
  source: { file: string; line: number };
}

/**
 * The folder a board's firmware puts before every file it fetches over TFTP after `bootcode.bin`
 * (DESIGN §8): the Pi 3 ROM always uses its serial; the Pi 4/5 EEPROM's `TFTP_PREFIX` picks the
 * serial (0, the default), `TFTP_PREFIX_STR` (1) or the MAC (2).
 */
export interface NetbootFolder {
  prefixMode: 'serial' | 'mac' | 'string';
  /** Relative, no trailing `/`: `1a2b3c4d`, `dc-a6-32-01-36-c2`, or the prefix string's folder. */
  folder: string;
}

export interface TargetProblem {
  file: string;
  line: number;
  reason: string;
}

export class TargetsError extends Error {
  constructor(readonly problems: TargetProblem[]) {
    super(
      `targets database has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n` +
        problems.map((p) => `  ${p.file}:${p.line}: ${p.reason}`).join('\n'),
    );
    this.name = 'TargetsError';
  }
}

/** BCM2711 (Pi 4) has 58 GPIOs, the most of any Pi SoC; the header uses 0–27. */
const MAX_BCM = 57;
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const SIM_FLAG_PATTERN = /^[A-Za-z0-9_.=-]+(:[A-Za-z0-9_.=-]+)?$/;
const RESET_FORMS =
  'gpio:<bcm>, gpiod:<chip>:<line>, cmd:<command>, qmp:<socket path>, sim[:flags], none, ssh or ssh,<hard reset spec>';
const NETBOOT_FORMS = 'serial, mac or prefix:<folder>';
/** What the EEPROM holds in TFTP_PREFIX_STR, trailing `/` included (rpi-eeprom's limit). */
const MAX_PREFIX_STR = 32;
const PREFIX_SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;
/** A board serial as /proc/cpuinfo (`10000000b1c2d3e4`) or `vcgencmd otp_dump` (`b1c2d3e4`) shows it. */
const SERIAL_PATTERN = /^(0x)?[0-9a-f]{1,16}$/i;

/**
 * The firmware's serial folder: the serial's low 32 bits as 8 lower-case hex digits, leading
 * zeros kept (DESIGN §8). Throws an Error saying what is wrong with the serial.
 */
export function serialFolder(serial: string): string {
  const s = serial.trim();
  if (!SERIAL_PATTERN.test(s))
    throw new Error(`serial "${s}" is not a board serial (up to 16 hex digits, e.g. 10000000b1c2d3e4)`);
  return s.replace(/^0x/i, '').slice(-8).padStart(8, '0').toLowerCase();
}

/**
 * Parses a `netboot` cell for a board with this serial and MAC (DESIGN §8). Throws an Error whose
 * message says what is wrong: a `serial` board without a usable serial, a prefix the EEPROM
 * cannot hold.
 */
export function parseNetbootSpec(text: string, board: { serial?: string; mac: string }): NetbootFolder {
  const spec = text.trim();
  const colon = spec.indexOf(':');
  const kind = (colon < 0 ? spec : spec.slice(0, colon)).toLowerCase();
  const rest = colon < 0 ? '' : spec.slice(colon + 1).trim();
  if (kind === 'serial' && colon < 0) {
    if (!board.serial) throw new Error('netboot "serial" needs the serial column: the firmware names its folder by it');
    return { prefixMode: 'serial', folder: serialFolder(board.serial) };
  }
  if (kind === 'mac' && colon < 0) return { prefixMode: 'mac', folder: macDir(board.mac) };
  if (kind === 'prefix' && colon >= 0) {
    const folder = rest.replace(/\/$/, '');
    if (!folder) throw new Error('netboot "prefix:" needs the folder the EEPROM\'s TFTP_PREFIX_STR names');
    if (folder.length + 1 > MAX_PREFIX_STR)
      throw new Error(
        `netboot prefix "${rest}" is too long: TFTP_PREFIX_STR holds at most ${MAX_PREFIX_STR} characters ` +
          `with its trailing "/" ("${folder}/" has ${folder.length + 1})`,
      );
    if (!folder.split('/').every((segment) => PREFIX_SEGMENT.test(segment)))
      throw new Error(
        `netboot prefix "${rest}" must be a relative folder of letters, digits, ".", "_" and "-" ` +
          '(segments separated by "/", none starting with ".")',
      );
    return { prefixMode: 'string', folder };
  }
  throw new Error(`unknown netboot spec "${spec}": expected ${NETBOOT_FORMS}, or empty when the board does not`);
}

/** Parses a reset spec (DESIGN §3.3). Throws an Error whose message says what is wrong. */
export function parseResetSpec(text: string): ResetSpec {
  const spec = text.trim();
  if (/^ssh\s*(,|$)/i.test(spec)) {
    const rest = spec.replace(/^ssh\s*,?/i, '').trim();
    if (!rest) return { kind: 'ssh' };
    const fallback = parseResetSpec(rest);
    if (fallback.kind === 'ssh' || fallback.kind === 'none')
      throw new Error(`ssh reset falls back to a hard reset (gpio:17, qmp:…), not "${rest}"`);
    return { kind: 'ssh', fallback };
  }
  const colon = spec.indexOf(':');
  const kind = (colon < 0 ? spec : spec.slice(0, colon)).toLowerCase();
  const rest = colon < 0 ? '' : spec.slice(colon + 1).trim();
  const hasRest = colon >= 0;
  switch (kind) {
    case 'gpio': {
      if (!/^\d+$/.test(rest)) throw new Error(`gpio reset needs a BCM GPIO number (gpio:17), got "${spec}"`);
      const bcm = Number(rest);
      if (bcm > MAX_BCM) throw new Error(`gpio reset: BCM GPIO ${bcm} does not exist (0–${MAX_BCM})`);
      return { kind: 'gpio', bcm };
    }
    case 'gpiod': {
      const sep = rest.indexOf(':');
      const chip = sep < 0 ? '' : rest.slice(0, sep).trim();
      const line = sep < 0 ? '' : rest.slice(sep + 1).trim();
      if (!chip || !line) {
        throw new Error(
          `gpiod reset needs a chip and a line (gpiod:gpiochip0:17 or gpiod:gpiochip0:GPIO17), got "${spec}"`,
        );
      }
      return { kind: 'gpiod', chip, line };
    }
    case 'cmd':
      if (!rest) throw new Error('cmd reset needs a command after "cmd:"');
      return { kind: 'cmd', command: rest };
    case 'qmp':
      if (!rest) throw new Error('qmp reset needs the path of QEMU\'s QMP socket after "qmp:"');
      // A relative path would depend on the agent's working directory, which systemd chooses.
      if (!path.isAbsolute(rest)) throw new Error(`qmp reset needs an absolute socket path, got "${rest}"`);
      return { kind: 'qmp', socket: rest };
    case 'none':
      if (hasRest) throw new Error(`none reset takes nothing after it, got "${spec}"`);
      return { kind: 'none' };
    case 'sim': {
      if (!hasRest) return { kind: 'sim', options: [] };
      const options = rest.split(',').map((o) => o.trim());
      const bad = options.find((o) => !SIM_FLAG_PATTERN.test(o));
      if (bad !== undefined) throw new Error(`sim reset: bad flag "${bad}" (flags are words separated by ",")`);
      parseFaults(options, 'sim');
      return { kind: 'sim', options };
    }
    default:
      throw new Error(`unknown reset spec "${spec}": expected ${RESET_FORMS}`);
  }
}

/** Header cells compared without case or whitespace: `MAC Address` = `mac address` = `macaddress`. */
function headerKey(cell: string): string {
  return cell.toLowerCase().replace(/\s+/g, '');
}

const NATIVE_REQUIRED = ['name', 'mac', 'ip', 'reset'] as const;
const NATIVE_OPTIONAL = [
  'model',
  'serial',
  'labels',
  'layout',
  'console',
  'windowsize',
  'netboot',
  'ssh',
  'sshkey',
  'hostkey',
] as const;
const NATIVE_COLUMNS: readonly string[] = [...NATIVE_REQUIRED, ...NATIVE_OPTIONAL];
const SEED_COLUMNS = ['macaddress', 'ipaddress', 'resetgpio(wiringpi)'] as const;
const HEADER_HELP =
  'the header must be name,mac,ip,reset[,model,serial,labels,layout,console,windowsize,netboot,ssh,sshkey,hostkey] ' +
  'or the seed system\'s "mac address,ip address,reset gpio (wiring pi)"';

interface Row {
  line: number;
  cells: string[];
}

/** Splits the CSV into rows that carry the line they start on. */
function readRows(csvText: string, file: string): Row[] {
  let records: { record: string[]; info: { lines: number } }[];
  try {
    records = parse(csvText, {
      trim: true,
      comment: '#',
      // Only whole-line comments: a `#` inside a command or a label is data.
      comment_no_infix: true,
      skip_empty_lines: true,
      // Rows with too few or too many cells are reported by us, with the rest of the problems.
      relax_column_count: true,
      info: true,
    }) as unknown as { record: string[]; info: { lines: number } }[];
  } catch (err) {
    // csv-parse puts the line it stopped at on its errors (not in its typings).
    const stoppedAt = err instanceof CsvError ? (err as CsvError & { lines?: unknown }).lines : undefined;
    const line = typeof stoppedAt === 'number' ? stoppedAt : 0;
    throw new TargetsError([{ file, line, reason: `not valid CSV: ${(err as Error).message}` }]);
  }
  // info.lines is the record's last line; a quoted field may span lines, so count back.
  return records.map(({ record, info }) => ({
    cells: record,
    line: info.lines - record.reduce((n, cell) => n + (cell.match(/\n/g)?.length ?? 0), 0),
  }));
}

interface Candidate {
  name: string;
  mac: string;
  ip: string;
  resetText: string;
  model: string;
  serial: string;
  labels: string;
  layout: string;
  console: string;
  windowsize: string;
  netboot: string;
  ssh: string;
  sshkey: string;
  hostkey: string;
  line: number;
}

/** Header → a function that turns a row's cells into the fields of a target, or header problems. */
function mapColumns(
  header: Row,
  file: string,
): { toCandidate: (row: Row) => Candidate; seed: boolean } | TargetProblem[] {
  const keys = header.cells.map(headerKey);
  const problems: TargetProblem[] = [];
  const seen = new Map<string, number>();
  keys.forEach((key, i) => {
    if (seen.has(key))
      problems.push({ file, line: header.line, reason: `column "${header.cells[i]}" appears twice in the header` });
    seen.set(key, i);
  });
  const cell = (row: Row, key: string): string => {
    const i = seen.get(key);
    return i === undefined ? '' : (row.cells[i] ?? '');
  };

  if (keys.includes('macaddress')) {
    const missing = SEED_COLUMNS.filter((c) => !seen.has(c));
    const unknown = header.cells.filter((_, i) => !(SEED_COLUMNS as readonly string[]).includes(keys[i] ?? ''));
    if (missing.length || unknown.length) {
      const lacks = missing.length ? `lacks ${missing.join(', ')}` : '';
      const and = missing.length && unknown.length ? ' and ' : '';
      const has = unknown.length ? `has unknown column(s) ${unknown.map((u) => `"${u}"`).join(', ')}` : '';
      problems.push({ file, line: header.line, reason: `seed-format header ${lacks}${and}${has}: ${HEADER_HELP}` });
    }
    if (problems.length) return problems;
    return {
      seed: true,
      toCandidate: (row) => ({
        name: '', // from the MAC, once it is known to be one
        mac: cell(row, 'macaddress'),
        ip: cell(row, 'ipaddress'),
        resetText: cell(row, 'resetgpio(wiringpi)'),
        model: '',
        serial: '',
        labels: '',
        layout: 'seed',
        console: '',
        windowsize: '',
        netboot: '',
        ssh: '',
        sshkey: '',
        hostkey: '',
        line: row.line,
      }),
    };
  }

  const missing = NATIVE_REQUIRED.filter((c) => !seen.has(c));
  const unknown = header.cells.filter((_, i) => !NATIVE_COLUMNS.includes(keys[i] ?? ''));
  if (missing.length)
    problems.push({ file, line: header.line, reason: `header lacks column(s) ${missing.join(', ')}: ${HEADER_HELP}` });
  if (unknown.length)
    problems.push({
      file,
      line: header.line,
      reason: `unknown column(s) ${unknown.map((u) => `"${u}"`).join(', ')}: ${HEADER_HELP}`,
    });
  if (problems.length) return problems;
  return {
    seed: false,
    toCandidate: (row) => ({
      name: cell(row, 'name'),
      mac: cell(row, 'mac'),
      ip: cell(row, 'ip'),
      resetText: cell(row, 'reset'),
      model: cell(row, 'model'),
      serial: cell(row, 'serial'),
      labels: cell(row, 'labels'),
      layout: cell(row, 'layout'),
      console: cell(row, 'console'),
      windowsize: cell(row, 'windowsize'),
      netboot: cell(row, 'netboot'),
      ssh: cell(row, 'ssh'),
      sshkey: cell(row, 'sshkey'),
      hostkey: cell(row, 'hostkey'),
      line: row.line,
    }),
  };
}

/**
 * Parses a targets CSV. Throws TargetsError listing every problem in the file. `layouts` are the
 * names a `layout` cell may hold: the agent's registry (the built-in layouts unless given);
 * `defaultLayout` is what an empty cell means (the config's), so a row that gets `ota` from it is
 * held to the SSH columns too.
 */
export interface TargetsOptions {
  layouts?: readonly string[];
  defaultLayout?: string;
}

export function parseTargets(csvText: string, file: string, options: TargetsOptions = {}): Target[] {
  const { layouts = Object.keys(builtinLayouts), defaultLayout } = options;
  const rows = readRows(csvText, file);
  const header = rows[0];
  if (!header) throw new TargetsError([{ file, line: 1, reason: `the file is empty: ${HEADER_HELP}` }]);
  const mapping = mapColumns(header, file);
  if (Array.isArray(mapping)) throw new TargetsError(mapping);

  const problems: TargetProblem[] = [];
  const targets: Target[] = [];
  const width = header.cells.length;
  for (const row of rows.slice(1)) {
    const problem = (reason: string) => problems.push({ file, line: row.line, reason });
    if (row.cells.length !== width) {
      problem(`${row.cells.length} field${row.cells.length === 1 ? '' : 's'} where the header has ${width}`);
      continue;
    }
    const c = mapping.toCandidate(row);
    const before = problems.length;

    let mac = '';
    if (!c.mac) problem('mac is empty');
    else if (!isMac(c.mac)) problem(`"${c.mac}" is not a MAC address (expected six hex pairs like b8:27:eb:28:f6:6d)`);
    else mac = normalizeMac(c.mac);

    if (!c.ip) problem('ip is empty');
    else if (!isIPv4(c.ip)) problem(`"${c.ip}" is not a dotted IPv4 address`);

    let reset: ResetSpec | undefined;
    let resetText = c.resetText;
    if (mapping.seed) {
      if (!/^\d+$/.test(c.resetText)) {
        problem(`reset gpio "${c.resetText}" is not a wiringPi pin number`);
      } else {
        const bcm = wiringPiToBcm(Number(c.resetText));
        if (bcm === undefined) {
          problem(`wiringPi pin ${c.resetText} has no BCM GPIO on a 40-pin header (valid: 0–16, 21–31)`);
        } else {
          resetText = `gpio:${bcm}`;
          reset = { kind: 'gpio', bcm };
        }
      }
    } else if (!c.resetText) {
      problem(`reset is empty: expected ${RESET_FORMS}`);
    } else {
      try {
        reset = parseResetSpec(c.resetText);
      } catch (err) {
        problem(`bad reset spec: ${(err as Error).message}`);
      }
    }

    const name = mapping.seed ? mac.replaceAll(':', '-') : c.name;
    if (!mapping.seed) {
      if (!name) problem('name is empty');
      else if (!NAME_PATTERN.test(name))
        problem(
          `name "${name}" may hold only letters, digits, ".", "_" and "-" ` +
            '(at most 64, starting with a letter or digit)',
        );
    }

    // Empty = the agent's default layout (config `defaultLayout`).
    let layout: string | undefined;
    if (c.layout) {
      const l = c.layout.toLowerCase();
      if (layouts.includes(l)) layout = l;
      else problem(`unknown layout "${c.layout}" (expected ${layouts.join(', ')})`);
    }

    let consoleSpec: ConsoleSpec | undefined;
    if (c.console) {
      try {
        consoleSpec = parseConsoleSpec(c.console);
      } catch (err) {
        problem(`bad console spec: ${(err as Error).message}`);
      }
    }

    let windowSize: number | undefined;
    if (c.windowsize) {
      if (/^\d{1,2}$/.test(c.windowsize) && Number(c.windowsize) >= 1 && Number(c.windowsize) <= 64)
        windowSize = Number(c.windowsize);
      else problem(`windowsize "${c.windowsize}" must be a TFTP window of 1 to 64 blocks`);
    }

    let netboot: NetbootFolder | undefined;
    if (c.netboot && mac) {
      try {
        netboot = parseNetbootSpec(c.netboot, { mac, ...(c.serial ? { serial: c.serial } : {}) });
      } catch (err) {
        problem(`bad netboot: ${(err as Error).message}`);
      }
    }

    const needsSsh =
      layout === OTA_LAYOUT
        ? `layout ${OTA_LAYOUT}`
        : !layout && defaultLayout === OTA_LAYOUT
          ? `layout ${OTA_LAYOUT} (the agent's defaultLayout)`
          : reset?.kind === 'ssh'
            ? `reset ${c.resetText}`
            : undefined;
    const ssh = parseSshAccess(c, file, needsSsh);
    for (const p of ssh.problems) problem(p);
    // The job's reset comes between the upload to the board's RAM and the switch: any reset there
    // would throw the staged RAM system away.
    if ((layout ?? defaultLayout) === OTA_LAYOUT && reset && reset.kind !== 'none')
      problem(`layout ${OTA_LAYOUT} reboots the board itself: its reset must be none, not ${c.resetText}`);

    if (problems.length !== before || !reset) continue;
    targets.push({
      name,
      mac,
      ip: c.ip,
      reset,
      resetText,
      ...(c.model ? { model: c.model } : {}),
      ...(c.serial ? { serial: c.serial } : {}),
      labels: [...new Set(c.labels.split(/[\s;]+/).filter(Boolean))],
      ...(layout ? { layout } : {}),
      ...(consoleSpec ? { console: consoleSpec } : {}),
      ...(windowSize !== undefined ? { tftpWindowSize: windowSize } : {}),
      ...(netboot ? { netboot } : {}),
      ...(ssh.access ? { ssh: ssh.access } : {}),
      source: { file, line: row.line },
    });
  }

  problems.push(...findConflicts(targets, file));
  if (problems.length) {
    problems.sort((a, b) => a.line - b.line);
    throw new TargetsError(problems);
  }
  return targets;
}

/** Duplicates, and names that would make findTarget ambiguous. */
function findConflicts(targets: readonly Target[], file: string): TargetProblem[] {
  const problems: TargetProblem[] = [];
  const first = {
    name: new Map<string, Target>(),
    mac: new Map<string, Target>(),
    ip: new Map<string, Target>(),
  };
  for (const t of targets) {
    const check = (what: 'name' | 'mac' | 'ip', key: string, shown: string) => {
      const earlier = first[what].get(key);
      if (earlier)
        problems.push({
          file,
          line: t.source.line,
          reason: `duplicate ${what} ${shown} (already used by "${earlier.name}" on line ${earlier.source.line})`,
        });
      else first[what].set(key, t);
    };
    // Names are matched without case by findTarget, so "Pi4" and "pi4" would collide.
    check('name', t.name.toLowerCase(), `"${t.name}"`);
    check('mac', t.mac, t.mac);
    check('ip', t.ip, t.ip);
  }
  problems.push(...folderConflicts(targets, file));
  for (const t of targets) {
    // A name that reads as some other board's MAC or IP would make `target:` lookups ambiguous.
    const other = isMac(t.name)
      ? first.mac.get(normalizeMac(t.name))
      : isIPv4(t.name)
        ? first.ip.get(t.name)
        : undefined;
    if (other && other !== t) {
      problems.push({
        file,
        line: t.source.line,
        reason: `name "${t.name}" is the MAC or IP of "${other.name}" (line ${other.source.line})`,
      });
    }
  }
  return problems;
}

/**
 * Firmware folders that would serve one board's files to another: the same folder twice (two
 * serials alike in their low 32 bits), or a folder that is another board's macdir or lies inside
 * it (or holds it). A `mac` folder is the board's own macdir, which is no conflict.
 */
function folderConflicts(targets: readonly Target[], file: string): TargetProblem[] {
  const claims: { path: string; owner: Target; kind: 'macdir' | 'netboot'; what: string }[] = [];
  for (const t of targets) {
    const own = macDir(t.mac);
    claims.push({ path: own, owner: t, kind: 'macdir', what: `macdir ${own}` });
    const folder = t.netboot?.folder;
    if (folder !== undefined && folder.toLowerCase() !== own)
      claims.push({ path: folder.toLowerCase(), owner: t, kind: 'netboot', what: `netboot folder "${folder}"` });
  }
  const overlap = (a: string, b: string) => a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
  const problems: TargetProblem[] = [];
  claims.forEach((later, i) => {
    const earlier = claims
      .slice(0, i)
      // Two macdirs alike are a duplicate mac, reported as such.
      .find(
        (c) =>
          c.owner !== later.owner && (c.kind === 'netboot' || later.kind === 'netboot') && overlap(c.path, later.path),
      );
    if (!earlier) return;
    problems.push({
      file,
      line: later.owner.source.line,
      reason:
        `${later.what} overlaps the ${earlier.what} of "${earlier.owner.name}" (line ${earlier.owner.source.line}): ` +
        "each board's firmware must have a folder of its own",
    });
  });
  return problems;
}

export async function loadTargets(file: string, options: TargetsOptions = {}): Promise<Target[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new TargetsError([{ file, line: 0, reason: `cannot read the targets database: ${(err as Error).message}` }]);
  }
  return parseTargets(text, file, options);
}

/** The target a workflow means by `target`: its name (any case), its MAC (any separator or case) or its IP. */
export function findTarget(targets: readonly Target[], query: string): Target | undefined {
  const q = query.trim();
  if (!q) return undefined;
  const lower = q.toLowerCase();
  const byName = targets.find((t) => t.name.toLowerCase() === lower);
  if (byName) return byName;
  if (isMac(q)) {
    const mac = normalizeMac(q);
    return targets.find((t) => t.mac === mac);
  }
  return targets.find((t) => t.ip === q);
}
