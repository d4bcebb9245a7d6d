/**
 * What the Pi firmware would boot from this boot partition, read from config.txt the way the
 * firmware reads it, and the config.txt that makes it start U-Boot instead.
 *
 * Selection rule (Raspberry Pi firmware, documented in config.txt "Boot options"):
 * - The last applicable `kernel=` wins. Without one the firmware picks by mode: 64-bit
 *   (`arm_64bit=1`, the default on Pi 4 since the 2022 firmware) loads `kernel8.img`; 32-bit loads
 *   `kernel7l.img` (Pi 4), `kernel7.img` (Pi 2, Pi 3, Zero 2 W) or `kernel.img` (Pi 1, Zero),
 *   falling back down that list to a file that exists. A Pi 4 whose card has no kernel8.img
 *   boots 32-bit. An explicit `kernel=` naming one of those files implies its mode.
 * - The initramfs is the last applicable `initramfs FILE [followkernel|ADDR]` or `ramfsfile=FILE`;
 *   without one, `auto_initramfs=1` loads the file matching a standard kernel name
 *   (kernel8.img → initramfs8, kernel7l.img → initramfs7l, …) when it exists.
 * - The command line comes from the last applicable `cmdline=FILE`, default `cmdline.txt`.
 * - Sections: `[all]` resets the filters, `[none]` turns everything off, a model filter (`[pi4]`,
 *   `[pi3+]`, `[cm4]`…) replaces the previous model filter, and filters of other kinds (`[EDID=…]`,
 *   `[gpio4=1]`, `[0x12345678]`, `[HDMI:0]`, `[board-type=…]`) AND with it. `[tryboot]` is
 *   false: a normal boot is not a tryboot. `include FILE` is read in place.
 * - A line that affects what gets loaded inside a section whose condition cannot be evaluated for
 *   this board (an EDID, a GPIO, a serial number, or a model filter without a known model) is
 *   refused: guessing could boot the wrong kernel. Every other directive passes through untouched.
 * - Refused outright when they apply: `os_prefix` (moves the kernel and U-Boot into a folder),
 *   `upstream_kernel=1` with an `upstream/` folder (an implied os_prefix), `kernel_address`
 *   (the firmware would load U-Boot there), `kernel_old=1`, `device_tree=` with no file (no
 *   device tree for U-Boot to hand on), and an `autoboot.txt` (A/B boot picks another partition).
 */
import { InjectError } from './errors.js';
import { MODEL_FILTER, modelFilterApplies, type PiModel, type Tri } from './models.js';

export const INJECT_BEGIN = '# >>> rpi-flash';
export const INJECT_END = '# <<< rpi-flash';
/** Prefix of the lines the injection turned off; removing it restores them. */
export const COMMENT_PREFIX = '#rpi-flash: ';

const AUTO_INITRAMFS: Record<string, string> = {
  'kernel.img': 'initramfs',
  'kernel7.img': 'initramfs7',
  'kernel7l.img': 'initramfs7l',
  'kernel8.img': 'initramfs8',
  'kernel_2712.img': 'initramfs_2712',
};
const KNOWN_64 = new Set(['kernel8.img', 'kernel_2712.img']);
const KNOWN_32 = new Set(['kernel.img', 'kernel7.img', 'kernel7l.img']);
/** Directives whose lines are turned off in the rewritten config: U-Boot takes over their job. */
const TURNED_OFF = new Set(['kernel', 'initramfs', 'ramfsfile', 'ramfsaddr']);
/** Directives that decide what is loaded: they must be evaluable where they appear. */
const BOOT_RELEVANT = new Set([
  ...TURNED_OFF,
  'arm_64bit',
  'auto_initramfs',
  'cmdline',
  'os_prefix',
  'kernel_address',
  'kernel_old',
  'device_tree',
  'upstream_kernel',
  'include',
]);
const MAX_INCLUDE_DEPTH = 8;

/** Access to the boot partition's files, by path relative to its root. */
export interface BootFiles {
  readText(path: string): Promise<string | null>;
  exists(path: string): Promise<boolean>;
}

export interface BootSelection {
  kernel: string;
  initramfs: string | null;
  /** The mode the firmware would start the kernel in (before looking at the kernel file). */
  arm64: boolean;
  cmdlineFile: string;
  /** config.txt and every included file that has lines the rewrite turns off. */
  filesToRewrite: string[];
  /** Some config file sets enable_uart (then the injection leaves it alone). */
  setsEnableUart: boolean;
}

interface Directive {
  name: string;
  value: string;
  /** For `initramfs FILE ADDR`. */
  extra?: string;
}

export function parseDirective(line: string): Directive | null {
  const t = line.trim();
  if (!t || t.startsWith('#') || t.startsWith('[')) return null;
  let m = /^(include|initramfs)\s+(\S+)(?:\s+(\S+))?/.exec(t);
  if (m) return { name: m[1]!, value: m[2]!, ...(m[3] ? { extra: m[3] } : {}) };
  m = /^([A-Za-z0-9_]+)\s*=\s*(.*)$/.exec(t);
  if (m) return { name: m[1]!.toLowerCase(), value: m[2]!.trim() };
  return null;
}

function splitLines(text: string): { lines: string[]; eol: string; finalNewline: boolean } {
  const eol = /\r\n/.test(text) ? '\r\n' : '\n';
  const finalNewline = text.endsWith('\n');
  const body = finalNewline ? text.slice(0, text.endsWith('\r\n') ? -2 : -1) : text;
  return { lines: body === '' ? [] : body.split(/\r?\n/), eol, finalNewline };
}

/** Undoes an earlier injection, so injecting a card image made by make-card starts from the original. */
export function restoreConfigText(text: string): { text: string; wasInjected: boolean } {
  const { lines, eol, finalNewline } = splitLines(text);
  const out: string[] = [];
  let inBlock = false;
  let wasInjected = false;
  for (const line of lines) {
    if (line.startsWith(INJECT_BEGIN)) {
      inBlock = true;
      wasInjected = true;
      continue;
    }
    if (inBlock) {
      if (line.startsWith(INJECT_END)) inBlock = false;
      continue;
    }
    if (line.startsWith(COMMENT_PREFIX)) {
      wasInjected = true;
      out.push(line.slice(COMMENT_PREFIX.length));
    } else out.push(line);
  }
  if (!wasInjected) return { text, wasInjected };
  return { text: out.join(eol) + (out.length && finalNewline ? eol : ''), wasInjected };
}

export interface RewriteOptions {
  /** Append the block that starts U-Boot (config.txt only, not included files). */
  appendBlock?: { arm64: boolean; enableUart: boolean; envName: string };
}

/** Turns off kernel/initramfs lines (commented with COMMENT_PREFIX) and appends the U-Boot block. */
export function rewriteConfigText(text: string, o: RewriteOptions): string {
  const { lines, eol, finalNewline } = splitLines(text);
  const out = lines.map((line) => {
    const d = parseDirective(line);
    return d && TURNED_OFF.has(d.name) ? COMMENT_PREFIX + line : line;
  });
  let result = out.join(eol) + (out.length && (finalNewline || o.appendBlock) ? eol : '');
  if (o.appendBlock) {
    const b = o.appendBlock;
    const block = [
      `${INJECT_BEGIN}: the firmware starts U-Boot; its stage 1 (boot.scr) boots the kernel named in ${b.envName}.`,
      `# Lines starting "${COMMENT_PREFIX.trim()}" were active before; ` +
        'this block and that prefix are all that changed.',
      '[all]',
      'kernel=u-boot.bin',
      `arm_64bit=${b.arm64 ? 1 : 0}`,
      ...(b.enableUart
        ? ['# U-Boot on the Pi needs the UART clock fixed, or stray input stops its autoboot.', 'enable_uart=1']
        : []),
      INJECT_END,
    ];
    result += block.join(eol) + eol;
  }
  return result;
}

interface SourceLine {
  file: string;
  lineNo: number;
  text: string;
}

function combine(values: Tri[]): Tri {
  if (values.includes(false)) return false;
  if (values.includes('unknown')) return 'unknown';
  return true;
}

/** Reads config.txt (and its includes) and decides what the firmware would boot on `model`. */
export async function selectBoot(files: BootFiles, model: PiModel | undefined): Promise<BootSelection> {
  if (await files.exists('autoboot.txt')) {
    throw new InjectError(
      'BOOT_CONFIG_UNSUPPORTED',
      'the boot partition has autoboot.txt (A/B or tryboot partition switching): ' +
        'the firmware may boot another partition, which cannot carry U-Boot yet',
    );
  }
  let modelTri: Tri | undefined;
  const others = new Map<string, Tri>();
  let section = '[all]';
  const applies = (): Tri => combine([modelTri ?? true, ...others.values()]);

  let kernel: { value: string; at: SourceLine } | undefined;
  let arm64Explicit: boolean | undefined;
  let initramfs: { value: string; at: SourceLine } | undefined;
  let autoInitramfs = false;
  let cmdlineFile = 'cmdline.txt';
  let upstreamKernel = false;
  let setsEnableUart = false;
  const filesToRewrite = new Set<string>();

  const refuse = (at: SourceLine, why: string) =>
    new InjectError('BOOT_CONFIG_UNSUPPORTED', `${at.file} line ${at.lineNo} "${at.text.trim()}": ${why}`);

  const visit = async (file: string, depth: number, includedAt?: SourceLine): Promise<void> => {
    const raw = await files.readText(file);
    if (raw === null) {
      if (includedAt) throw refuse(includedAt, `the included file ${file} is not on the boot partition`);
      return; // no config.txt: the firmware's defaults
    }
    const { text } = restoreConfigText(raw);
    const lines = splitLines(text).lines;
    for (let i = 0; i < lines.length; i++) {
      const at: SourceLine = { file, lineNo: i + 1, text: lines[i]! };
      const t = at.text.trim();
      const sectionMatch = /^\[([^\]]*)\]/.exec(t);
      if (sectionMatch) {
        const filter = sectionMatch[1]!.trim().toLowerCase();
        section = `[${sectionMatch[1]!.trim()}]`;
        if (filter === 'all') {
          modelTri = undefined;
          others.clear();
        } else if (filter === 'none') others.set('none', false);
        else if (filter === 'tryboot') others.set('tryboot', false);
        else if (MODEL_FILTER.test(filter)) modelTri = modelFilterApplies(filter, model);
        else others.set(/^0x/.test(filter) ? 'serial' : filter.split(/[=:]/)[0]!, 'unknown');
        continue;
      }
      const d = parseDirective(at.text);
      if (!d) continue;
      if (d.name === 'enable_uart') setsEnableUart = true;
      if (TURNED_OFF.has(d.name)) filesToRewrite.add(file);
      if (!BOOT_RELEVANT.has(d.name)) continue;
      const now = applies();
      if (now === false) continue;
      if (now === 'unknown') {
        throw refuse(
          at,
          `it decides what the firmware loads but sits under ${section}, a condition that cannot be evaluated for ` +
            (model ? `model ${model.name}` : 'an unknown board model (give the model)'),
        );
      }
      switch (d.name) {
        case 'include':
          if (depth >= MAX_INCLUDE_DEPTH) throw refuse(at, `includes nest deeper than ${MAX_INCLUDE_DEPTH} levels`);
          await visit(d.value, depth + 1, at);
          break;
        case 'kernel':
          kernel = { value: d.value, at };
          break;
        case 'arm_64bit':
          arm64Explicit = Number(d.value) !== 0;
          break;
        case 'initramfs':
        case 'ramfsfile':
          if (d.value.includes(',')) throw refuse(at, 'several initramfs files concatenated are not supported');
          initramfs = { value: d.value, at };
          break;
        case 'auto_initramfs':
          autoInitramfs = Number(d.value) !== 0;
          break;
        case 'cmdline':
          cmdlineFile = d.value;
          break;
        case 'os_prefix':
          if (d.value) throw refuse(at, 'os_prefix moves the kernel and U-Boot into a folder; not supported yet');
          break;
        case 'kernel_address':
          throw refuse(at, 'the firmware would load U-Boot at this address instead of where U-Boot expects to run');
        case 'kernel_old':
          if (Number(d.value) !== 0)
            throw refuse(at, 'kernel_old loads the kernel at address 0, where U-Boot cannot run');
          break;
        case 'device_tree':
          if (!d.value)
            throw refuse(at, 'an empty device_tree= disables the device tree that U-Boot hands to the kernel');
          break;
        case 'upstream_kernel':
          upstreamKernel = Number(d.value) !== 0;
          break;
      }
    }
  };
  await visit('config.txt', 0);

  if (upstreamKernel && (await files.exists('upstream'))) {
    throw new InjectError(
      'BOOT_CONFIG_UNSUPPORTED',
      'config.txt sets upstream_kernel=1 and the boot partition has an upstream/ folder: ' +
        'the firmware then loads the kernel from there (an implied os_prefix), not supported yet',
    );
  }

  let kernelName: string;
  let arm64: boolean;
  if (kernel) {
    kernelName = kernel.value.replace(/^\/+/, '');
    if (/u-?boot/i.test(kernelName)) {
      throw new InjectError(
        'BOOT_CONFIG_UNSUPPORTED',
        `${kernel.at.file} line ${kernel.at.lineNo} boots "${kernelName}": ` +
          'the image already starts its own U-Boot, and chaining two is not supported',
      );
    }
    if (!(await files.exists(kernelName))) {
      throw new InjectError(
        'BOOT_CONFIG_UNSUPPORTED',
        `${kernel.at.file} line ${kernel.at.lineNo} names kernel ${kernelName}, which is not on the boot partition`,
      );
    }
    arm64 =
      arm64Explicit ??
      (KNOWN_64.has(kernelName)
        ? true
        : KNOWN_32.has(kernelName)
          ? false
          : (model?.firmwareDefault64 ?? model?.arm64 ?? false));
  } else {
    const want64 = arm64Explicit ?? model?.firmwareDefault64;
    const chain32 = model?.kernels32 ?? ['kernel7l.img', 'kernel7.img', 'kernel.img'];
    // Explicit arm_64bit=1 insists on kernel8.img; the Pi 4 default (and an unknown model) falls
    // back to 32-bit when kernel8.img is missing, as the firmware does.
    const candidates =
      want64 === true && arm64Explicit === true
        ? ['kernel8.img']
        : want64 === false
          ? chain32
          : ['kernel8.img', ...chain32];
    let found: string | undefined;
    for (const c of candidates) {
      if (await files.exists(c)) {
        found = c;
        break;
      }
    }
    if (!found) {
      throw new InjectError(
        'BOOT_CONFIG_UNSUPPORTED',
        `config.txt names no kernel and none of the firmware's default kernels for ` +
          `${model ? `model ${model.name}` : 'this board'} is on the boot partition ` +
          `(looked for ${candidates.join(', ')})`,
      );
    }
    kernelName = found;
    arm64 = KNOWN_64.has(found);
  }

  let initramfsName: string | null = null;
  if (initramfs) {
    initramfsName = initramfs.value.replace(/^\/+/, '');
    if (!(await files.exists(initramfsName))) {
      throw new InjectError(
        'BOOT_CONFIG_UNSUPPORTED',
        `${initramfs.at.file} line ${initramfs.at.lineNo} names initramfs ${initramfsName}, ` +
          'which is not on the boot partition',
      );
    }
  } else if (autoInitramfs && AUTO_INITRAMFS[kernelName] && (await files.exists(AUTO_INITRAMFS[kernelName]!))) {
    initramfsName = AUTO_INITRAMFS[kernelName]!;
  }

  return {
    kernel: kernelName,
    initramfs: initramfsName,
    arm64,
    cmdlineFile,
    filesToRewrite: [...filesToRewrite],
    setsEnableUart,
  };
}
