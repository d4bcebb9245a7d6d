/**
 * A U-Boot 2023.01 command line for the simulated board: hush execution semantics
 * (common/cli_hush.c) and the commands our stage-1/stage-2 scripts use, with their argument
 * parsing and results as in cmd/*.c. It is a test double for a real U-Boot, so where U-Boot is
 * odd, this is odd too:
 * - `a || b && c` skips c when a succeeds; `a && b || c` skips c when a fails (hush skips the
 *   rest of the chain, not one command).
 * - A command holding `$…` is expanded, flattened back to text (quoted words re-quoted with
 *   '…') and parsed again with `; $ & |` plain; newlines in values become blanks.
 * - `run` returns the status of the last command run; an `if` with a false condition and no
 *   `else` returns failure.
 * - Numbers are hex (`hextoul`: optional 0x, stops at the first non-hex character).
 * - `crc32 addr len dest` stores 4 bytes big-endian (builds with the multi-hash code, e.g. the
 *   QEMU test build) or a native little-endian ulong, 8 bytes (Debian's Pi builds): `crcStore`.
 * Anything else is "Unknown command 'x' - try 'help'" with status 1, as on a board.
 */
import { hex8 } from '../../../src/protocol/units.js';
import { setTimeout as delay } from 'node:timers/promises';
import { inflateRawSync } from 'node:zlib';
import { parseScriptImage, parseScriptImageHeader, UIMAGE_HEADER_SIZE } from '../board/uimage.js';
import { parseHush, VAR_MARK, type ParseMode, type Pipe, type SimpleCommand } from './hush-parser.js';
import type { SparseMemory } from './memory.js';

/** Thrown by `reset`: the board restarts; nothing after it runs. */
export class BoardResetRequest extends Error {
  constructor() {
    super('reset requested by the script');
    this.name = 'BoardResetRequest';
  }
}

/** Thrown when the board is power-cycled or closed from outside while the shell runs. */
export class ShellAborted extends Error {
  constructor() {
    super('the board was reset or switched off');
    this.name = 'ShellAborted';
  }
}

export interface MmcDevice {
  /** Size in 512-byte blocks. */
  readonly blockCount: number;
  /** Reads whole blocks; returns fewer blocks than asked (or throws) on a failure. */
  read(block: number, count: number): Promise<Buffer>;
  /** Writes whole blocks; returns the number of blocks written. */
  write(block: number, data: Buffer): Promise<number>;
}

export interface UBootShellOptions {
  memory: SparseMemory;
  /** Initial environment (ethaddr, ipaddr, serverip, loadaddr, …). */
  env?: Record<string, string>;
  /** TFTP download; null means "File not found". */
  tftp(path: string, opts: { blksize: number; windowsize: number }): Promise<Buffer | null>;
  /** MMC devices by number (`mmc dev N`). */
  mmc?: Map<number, MmcDevice>;
  crcStore?: 'be32' | 'native64';
  /** Console output, one call per line. */
  print?(line: string): void;
  /** Aborts a running script (power cycle). */
  signal?: AbortSignal;
  /** Default load address when `loadaddr` is unset (CONFIG_SYS_LOAD_ADDR). */
  defaultLoadAddr?: number;
  /** The build has `unzip` (Debian's 64-bit Pi builds do, the 32-bit ones not); default true. */
  unzip?: boolean;
}

/** CMD_RET_USAGE: the command prints its usage and fails. */
const USAGE = -1;
const SIZE_STR = -2;
const SIZE_ERR = -1;

type Command = { maxArgs: number; usage: string; run: (argv: string[]) => Promise<number> | number };

export class UBootShell {
  readonly env = new Map<string, string>();
  /** Hush local variables (`name=value` without setenv). */
  readonly locals = new Map<string, string>();
  lastReturnCode = 0;
  private mmcCurrent = 0;
  private readonly commands: Map<string, Command>;

  constructor(private readonly o: UBootShellOptions) {
    for (const [k, val] of Object.entries(o.env ?? {})) this.env.set(k, val);
    this.commands = this.buildCommands();
  }

  get memory(): SparseMemory {
    return this.o.memory;
  }

  /** Runs text as `source` does: statement by statement; returns 0 or 1 like U-Boot. */
  runScript(text: string): Promise<number> {
    return this.runText(text, 'line');
  }

  /** Runs text as `run` does with a variable's value (newlines are separators). */
  runCommand(text: string): Promise<number> {
    return this.runText(text, 'whole');
  }

  // ---- hush execution ------------------------------------------------------------------

  private async runText(input: string, mode: ParseMode): Promise<number> {
    if (input.length === 0) return 0;
    // parse_string_outer appends a newline unless the first newline ends the text; it is what
    // lets a value end in `fi` (the word is finished by that newline).
    const firstNewline = input.indexOf('\n');
    const text = firstNewline < 0 || firstNewline < input.length - 1 ? input + '\n' : input;
    let code: number;
    let pos = 0;
    for (;;) {
      this.throwIfAborted();
      const parsed = parseHush(text, mode, pos);
      if (!parsed.list) {
        this.print(parsed.error ?? 'syntax error');
        return 1;
      }
      code = await this.runList(parsed.list);
      pos = parsed.next;
      if (mode !== 'line' || parsed.eof || pos >= text.length) break;
    }
    return code !== 0 ? 1 : 0;
  }

  /** U-Boot's run_list_real without loops. */
  private async runList(list: Pipe[]): Promise<number> {
    let rcode = 0;
    let flagSkip = true;
    let ifCode = 0;
    let nextIfCode = 0;
    let skipMode: string | null = null;
    for (const pipe of list) {
      const mode = pipe.rmode;
      if (mode === skipMode && flagSkip) {
        if (pipe.followup === 'seq') flagSkip = false;
        continue;
      }
      flagSkip = true;
      skipMode = null;
      if (mode === 'then' || mode === 'else') ifCode = nextIfCode;
      if (mode === 'then' && ifCode) continue;
      if (mode === 'else' && !ifCode) continue;
      if (mode === 'elif' && !ifCode) break;
      if (!pipe.command) continue;
      this.throwIfAborted();
      rcode =
        pipe.command.kind === 'group' ? await this.runList(pipe.command.list) : await this.runSimple(pipe.command);
      this.lastReturnCode = rcode === 0 ? 0 : 1;
      if (mode === 'if' || mode === 'elif') nextIfCode = rcode;
      if ((rcode === 0 && pipe.followup === 'or') || (rcode !== 0 && pipe.followup === 'and')) skipMode = mode;
    }
    return rcode;
  }

  private async runSimple(cmd: SimpleCommand): Promise<number> {
    const { argv } = cmd;
    let i = 0;
    while (i < argv.length && /^[A-Za-z][A-Za-z0-9_]*=/.test(argv[i]!)) i++;
    for (let j = 0; j < i; j++) {
      const assignment = this.expand(argv[j]!);
      const eq = assignment.indexOf('=');
      this.locals.set(assignment.slice(0, eq), assignment.slice(eq + 1));
    }
    if (i === argv.length) return 0;
    if (cmd.varRefs > 0) {
      const flat = argv.slice(i).map((w, k) => (cmd.quoted[i + k] ? `'${this.expand(w)}'` : this.expand(w)));
      await this.runText(flat.join(' ') + '\n', 'reparse');
      return this.lastReturnCode;
    }
    const words = argv.slice(i);
    if (words[0]!.includes(';')) {
      this.print(`Unknown command '${words[0]}' - try 'help' or use 'run' command`);
      return -1;
    }
    return this.process(words);
  }

  /** insert_var_value: substitutes references; if any, newlines in the result become blanks. */
  private expand(word: string): string {
    if (!word.includes(VAR_MARK)) return word;
    const pieces = word.split(VAR_MARK);
    let out = '';
    pieces.forEach((piece, k) => {
      out += k % 2 === 0 ? piece : (this.lookup(piece) ?? '');
    });
    return out.replaceAll('\n', ' ');
  }

  /** lookup_param: env first, then hush locals; `${x:-d}`, `${x:=d}`, `${x:+d}`; `$?`. */
  private lookup(ref: string): string | undefined {
    if (ref === '$?') return String(this.lastReturnCode);
    const sep = ref.indexOf(':');
    const name = sep < 0 ? ref : ref.slice(0, sep);
    const op = sep < 0 ? '' : ref[sep + 1];
    const fallback = sep < 0 ? undefined : ref.slice(sep + 2);
    const value = this.env.get(name) ?? this.locals.get(name);
    if (value === undefined || value === '') {
      if (op === '=' && fallback !== undefined) this.locals.set(name, fallback);
      return op === '-' || op === '=' || op === '+' ? fallback : undefined;
    }
    return op === '+' ? '' : value;
  }

  private async process(argv: string[]): Promise<number> {
    const name = argv[0]!;
    const command = this.findCommand(name);
    if (!command) {
      this.print(`Unknown command '${name}' - try 'help'`);
      return 1;
    }
    if (argv.length > command.maxArgs) return this.usage(command);
    let rc: number;
    try {
      rc = await command.run(argv);
    } catch (err) {
      if (err instanceof BoardResetRequest || err instanceof ShellAborted) throw err;
      // A real board would read or write whatever is there; the model refuses and says why.
      this.print(`sim: ${name}: ${(err as Error).message}`);
      return 1;
    }
    return rc === USAGE ? this.usage(command) : rc;
  }

  /** find_cmd: the part before '.', exact name or a unique prefix. */
  private findCommand(word: string): Command | undefined {
    const dot = word.indexOf('.');
    const base = dot < 0 ? word : word.slice(0, dot);
    if (!base) return undefined;
    const exact = this.commands.get(base);
    if (exact) return exact;
    const partial = [...this.commands.keys()].filter((k) => k.startsWith(base));
    return partial.length === 1 ? this.commands.get(partial[0]!) : undefined;
  }

  private usage(command: Command): number {
    this.print(`Usage:\n${command.usage}`);
    return 1;
  }

  private throwIfAborted(): void {
    if (this.o.signal?.aborted) throw new ShellAborted();
  }

  print(text: string): void {
    for (const line of text.split('\n')) this.o.print?.(line);
  }

  // ---- commands --------------------------------------------------------------------------

  private buildCommands(): Map<string, Command> {
    const c = new Map<string, Command>();
    const add = (name: string, maxArgs: number, usage: string, run: Command['run']) =>
      c.set(name, { maxArgs, usage, run });
    add('setenv', 64, 'setenv name value ...', (a) => this.setenv(a));
    add('printenv', 64, 'printenv [name ...]', (a) => this.printenv(a));
    add('echo', 64, 'echo [-n] [args..]', (a) => {
      const noNewline = a[1] === '-n';
      this.print(a.slice(noNewline ? 2 : 1).join(' '));
      return 0;
    });
    add('true', 64, 'true', () => 0);
    add('false', 64, 'false', () => 1);
    add('run', 64, 'run var [...]', (a) => this.run(a));
    // Only `env exists`: what stage 2 asks before its RAM probe (shell-local variables are not env).
    add('env', 3, 'env exists name', (a) =>
      a[1] === 'exists' && a.length === 3 ? (this.env.has(a[2]!) ? 0 : 1) : USAGE,
    );
    add('reset', 2, 'reset [-w]', () => {
      this.print('resetting ...');
      throw new BoardResetRequest();
    });
    add('sleep', 2, 'sleep N', (a) => this.sleep(a));
    add('source', 2, 'source [addr]', (a) => this.source(a));
    add('setexpr', 8, 'setexpr[.b, .w, .l, .q, .s] name [*]value1 <op> [*]value2\nsetexpr name [g]sub r s [t]', (a) =>
      this.setexpr(a),
    );
    add('itest', 4, 'itest[.b, .w, .l, .q, .s] [*]value1 <op> [*]value2', (a) => this.itest(a));
    add('crc32', 4, 'crc32 address count [addr]', (a) => this.crc32(a));
    add('mw', 4, 'mw [.b, .w, .l, .q] address value [count]', (a) => this.mw(a));
    add('mmc', 6, 'mmc dev [dev] | rescan | info | list | read addr blk# cnt | write addr blk# cnt', (a) =>
      this.mmc(a),
    );
    add('tftpboot', 3, 'tftpboot [loadAddress] [[hostIPaddr:]bootfilename]', (a) => this.tftpboot(a));
    add('dhcp', 3, 'dhcp', () => this.dhcp());
    if (this.o.unzip ?? true) add('unzip', 4, 'unzip srcaddr dstaddr [dstsize]', (a) => this.unzip(a));
    return c;
  }

  private setenv(a: string[]): number {
    if (a.length < 2) return USAGE;
    const name = a[1]!;
    if (name.includes('=')) {
      this.print(`## Error: illegal character '=' in variable name "${name}"`);
      return 1;
    }
    if (a.length === 2) this.env.delete(name);
    else this.env.set(name, a.slice(2).join(' '));
    return 0;
  }

  private printenv(a: string[]): number {
    if (a.length === 1) {
      for (const [k, val] of [...this.env].sort()) this.print(`${k}=${val}`);
      return 0;
    }
    let rc = 0;
    for (const name of a.slice(1)) {
      const value = this.env.get(name);
      if (value === undefined) {
        this.print(`## Error: "${name}" not defined`);
        rc = 1;
      } else this.print(`${name}=${value}`);
    }
    return rc;
  }

  private async run(a: string[]): Promise<number> {
    if (a.length < 2) return USAGE;
    for (const name of a.slice(1)) {
      const value = this.env.get(name);
      if (value === undefined) {
        this.print(`## Error: "${name}" not defined`);
        return 1;
      }
      if ((await this.runCommand(value)) !== 0) return 1;
    }
    return 0;
  }

  private async sleep(a: string[]): Promise<number> {
    if (a.length !== 2) return USAGE;
    const seconds = Number.parseFloat(a[1]!);
    if (!Number.isFinite(seconds) || seconds < 0) return USAGE;
    try {
      await delay(seconds * 1000, undefined, this.o.signal ? { signal: this.o.signal } : {});
    } catch {
      throw new ShellAborted();
    }
    return 0;
  }

  private loadAddr(): number {
    const env = this.env.get('loadaddr');
    return env !== undefined ? Number(hextoul(env) & 0xffff_ffff_ffffn) : (this.o.defaultLoadAddr ?? 0x100_0000);
  }

  private async source(a: string[]): Promise<number> {
    const addr = a.length > 1 ? Number(hextoul(a[1]!)) : this.loadAddr();
    this.print(`## Executing script at ${hex8(addr)}`);
    let script: string;
    try {
      const header = parseScriptImageHeader(this.memory.read(addr, UIMAGE_HEADER_SIZE));
      ({ script } = parseScriptImage(this.memory.read(addr, UIMAGE_HEADER_SIZE + header.dataSize)));
    } catch (err) {
      this.print(`## ${(err as Error).message}`);
      return 1;
    }
    return this.runScript(script);
  }

  /** Memory operand: `*addr` reads `width` bytes (little-endian); otherwise a hex literal. */
  private readOperand(s: string, width: number): bigint {
    if (!s.startsWith('*')) return hextoul(s);
    const addr = Number(hextoul(s.slice(1)));
    const bytes = width === 1 || width === 2 || width === 4 ? width : 8;
    const word = Buffer.alloc(8);
    this.memory.read(addr, bytes).copy(word);
    return word.readBigUInt64LE(0);
  }

  private readCString(addr: number): string {
    const bytes = this.memory.read(addr, Math.min(0x10000, this.memory.size - addr));
    const nul = bytes.indexOf(0);
    return bytes.subarray(0, nul < 0 ? bytes.length : nul).toString('latin1');
  }

  private setexpr(a: string[]): number {
    if (a.length < 3) return USAGE;
    const w = dataSize(a[0]!, 4);
    const name = a[1]!;
    if (w === SIZE_STR && !a[2]!.startsWith('*')) return 1;
    if (a.length === 4 || a.length > 6) return USAGE;
    if (a.length === 3) {
      if (w === SIZE_STR) this.env.set(name, this.readCString(Number(hextoul(a[2]!.slice(1)))));
      else this.env.set(name, this.readOperand(a[2]!, w).toString(16));
      return 0;
    }
    if (a[2] === 'gsub' || a[2] === 'sub') return this.regexSub(name, a[3]!, a[4], a[5], a[2] === 'gsub');
    if (a.length !== 5 || a[3]!.length !== 1) return USAGE;
    const op = a[3]!;
    if (w === SIZE_STR) {
      if (!a[4]!.startsWith('*')) return 1;
      if (op !== '+') {
        this.print('invalid op');
        return 1;
      }
      this.env.set(
        name,
        this.readCString(Number(hextoul(a[2]!.slice(1)))) + this.readCString(Number(hextoul(a[4]!.slice(1)))),
      );
      return 0;
    }
    const x = this.readOperand(a[2]!, w);
    const y = this.readOperand(a[4]!, w);
    let value: bigint;
    switch (op) {
      case '|':
        value = x | y;
        break;
      case '&':
        value = x & y;
        break;
      case '+':
        value = x + y;
        break;
      case '^':
        value = x ^ y;
        break;
      case '-':
        value = x - y;
        break;
      case '*':
        value = x * y;
        break;
      case '/':
      case '%':
        if (y === 0n) {
          this.print('sim: division by zero (a real U-Boot would crash)');
          return 1;
        }
        value = op === '/' ? x / y : x % y;
        break;
      default:
        this.print('invalid op');
        return 1;
    }
    this.env.set(name, BigInt.asUintN(64, value).toString(16));
    return 0;
  }

  /** `setexpr name [g]sub r s [t]`: U-Boot's SLRE patterns are a subset of JavaScript's. */
  private regexSub(
    name: string,
    pattern: string,
    replacement: string | undefined,
    input: string | undefined,
    global: boolean,
  ): number {
    if (replacement === undefined) return USAGE;
    let text = input;
    if (text === undefined) {
      text = this.env.get(name);
      if (text === undefined) {
        this.print(`## Error: variable "${name}" not defined`);
        return 1;
      }
    }
    let re: RegExp;
    try {
      re = new RegExp(pattern, global ? 'g' : '');
    } catch {
      this.print(`## Error: bad regular expression "${pattern}"`);
      return 1;
    }
    const js = replacement.replaceAll('$', '$$$$').replace(/\\(\d)/g, '$$$1');
    const result = text.replace(re, js);
    this.print(`${name}=${result}`);
    this.env.set(name, result);
    return 0;
  }

  private itest(a: string[]): number {
    if (a.length !== 4) return USAGE;
    const w = dataSize(a[0]!, 4);
    const ops: Record<string, (c: number) => boolean> = {
      '-lt': (c) => c < 0,
      '<': (c) => c < 0,
      '-gt': (c) => c > 0,
      '>': (c) => c > 0,
      '-eq': (c) => c === 0,
      '==': (c) => c === 0,
      '-ne': (c) => c !== 0,
      '!=': (c) => c !== 0,
      '<>': (c) => c !== 0,
      '-ge': (c) => c >= 0,
      '>=': (c) => c >= 0,
      '-le': (c) => c <= 0,
      '<=': (c) => c <= 0,
    };
    const test = ops[a[2]!];
    let truth = false;
    if (w !== 1 && w !== 2 && w !== 4 && w !== 8 && w !== SIZE_STR) {
      this.print('Invalid data width specifier');
    } else if (!test) {
      this.print(`Unknown operator '${a[2]}'`);
    } else if (w === SIZE_STR) {
      const l = this.itestString(a[1]!);
      const r = this.itestString(a[3]!);
      truth = test(l === r ? 0 : l < r ? -1 : 1);
    } else {
      const l = this.itestValue(a[1]!, w);
      const r = this.itestValue(a[3]!, w);
      truth = test(l === r ? 0 : l < r ? -1 : 1);
    }
    return truth ? 0 : 1;
  }

  /** evalexp: `*addr` reads memory; literals are masked to the width; compared as signed long. */
  private itestValue(s: string, w: number): bigint {
    const raw = s.startsWith('*') ? this.readOperand(s, w) : hextoul(s) & ((1n << BigInt(w * 8)) - 1n);
    return BigInt.asIntN(64, raw);
  }

  private itestString(s: string): string {
    if (s.startsWith('*')) return this.readCString(Number(hextoul(s.slice(1))));
    if (s.startsWith('${') && s.endsWith('}')) return this.env.get(s.slice(2, -1)) ?? '';
    return s;
  }

  private crc32(a: string[]): number {
    if (a.length < 3) return USAGE;
    const addr = Number(hextoul(a[1]!));
    const len = Number(hextoul(a[2]!));
    let crc: number;
    try {
      crc = this.memory.crc32(addr, len);
    } catch (err) {
      this.print(`sim: ${(err as Error).message}`);
      return 1;
    }
    const end = hex8(addr + len - 1);
    if ((this.o.crcStore ?? 'native64') === 'be32') {
      this.print(`crc32 for ${hex8(addr)} ... ${end} ==> ${hex8(crc)}`);
      if (a[3] !== undefined) {
        const out = Buffer.alloc(4);
        out.writeUInt32BE(crc);
        this.memory.write(Number(hextoul(a[3])), out);
      }
    } else {
      this.print(`CRC32 for ${hex8(addr)} ... ${end} ==> ${hex8(crc)}`);
      if (a[3] !== undefined) {
        const out = Buffer.alloc(8);
        out.writeBigUInt64LE(BigInt(crc));
        this.memory.write(Number(hextoul(a[3])), out);
      }
    }
    return 0;
  }

  /**
   * cmd/unzip.c: inflate the gzip stream at src (its length unknown: it ends where the stream does)
   * into dst, at most dstsize bytes; `filesize` := the inflated size. The gzip trailer is not
   * checked (lib/gunzip.c's zunzip stops at the deflate stream's end).
   */
  private unzip(a: string[]): number {
    if (a.length < 3) return USAGE;
    const src = Number(hextoul(a[1]!));
    const dst = Number(hextoul(a[2]!));
    const dstLen = a[3] !== undefined ? Number(hextoul(a[3])) : this.memory.size - dst;
    try {
      // Deflate never grows data by more than ~0.03% plus a few bytes: dstLen bounds the input read.
      const take = Math.min(this.memory.size - src, dstLen + (dstLen >> 10) + 1024);
      const input = this.memory.read(src, take);
      if (input[0] !== 0x1f || input[1] !== 0x8b || input[2] !== 8) {
        this.print('Error: Bad gzipped data');
        return 1;
      }
      const out = inflateRawSync(input.subarray(gzipHeaderLength(input)), { maxOutputLength: Math.max(1, dstLen) });
      this.memory.write(dst, out);
      this.print(`Uncompressed size: ${out.length} = 0x${out.length.toString(16).toUpperCase()}`);
      this.env.set('filesize', out.length.toString(16));
      return 0;
    } catch (err) {
      this.print(`Error: inflate() returned -3 (sim: ${(err as Error).message})`);
      return 1;
    }
  }

  private mw(a: string[]): number {
    if (a.length < 3) return USAGE;
    const size = dataSize(a[0]!, 4);
    if (size !== 1 && size !== 2 && size !== 4 && size !== 8) return USAGE;
    const addr = Number(hextoul(a[1]!));
    const value = hextoul(a[2]!);
    const count = a.length === 4 ? Number(hextoul(a[3]!)) : 1;
    const pattern = Buffer.alloc(8);
    pattern.writeBigUInt64LE(BigInt.asUintN(64, value));
    try {
      this.memory.fill(addr, count * size, pattern.subarray(0, size));
    } catch (err) {
      this.print(`sim: ${(err as Error).message}`);
      return 1;
    }
    return 0;
  }

  private async mmc(a: string[]): Promise<number> {
    if (a.length < 2) return USAGE;
    const sub = a[1]!;
    const devices = this.o.mmc ?? new Map<number, MmcDevice>();
    const device = (n: number) => {
      const d = devices.get(n);
      if (!d) this.print(`MMC Device ${n} not found`);
      return d;
    };
    switch (sub) {
      case 'dev': {
        if (a.length > 5) return USAGE;
        const n = a.length > 2 ? Number(dectoul(a[2]!)) : this.mmcCurrent;
        if (!device(n)) return 1;
        this.mmcCurrent = n;
        this.print(`switch to partitions #0, OK\nmmc${n} is current device`);
        return 0;
      }
      case 'rescan':
        return device(this.mmcCurrent) ? 0 : 1;
      case 'list':
        for (const n of devices.keys()) this.print(`mmc@sim: ${n}`);
        return 0;
      case 'info': {
        const d = device(this.mmcCurrent);
        if (!d) return 1;
        this.print(`Device: mmc@sim\nCapacity: ${((d.blockCount * 512) / 2 ** 30).toFixed(1)} GiB`);
        return 0;
      }
      case 'read':
      case 'write': {
        if (a.length !== 5) return USAGE;
        const addr = Number(hextoul(a[2]!) & 0xffff_ffffn);
        const blk = Number(hextoul(a[3]!) & 0xffff_ffffn);
        const cnt = Number(hextoul(a[4]!) & 0xffff_ffffn);
        const d = device(this.mmcCurrent);
        if (!d) return 1;
        this.print(`\nMMC ${sub}: dev # ${this.mmcCurrent}, block # ${blk}, count ${cnt} ... `);
        let n = 0;
        if (blk + cnt > d.blockCount) {
          this.print(`MMC: block number 0x${(blk + cnt).toString(16)} exceeds max(0x${d.blockCount.toString(16)})`);
        } else {
          try {
            if (sub === 'read') {
              const data = await d.read(blk, cnt);
              this.throwIfAborted();
              this.memory.write(addr, data.subarray(0, cnt * 512));
              n = Math.floor(data.length / 512);
            } else {
              n = await d.write(blk, this.memory.read(addr, cnt * 512));
            }
          } catch (err) {
            if (err instanceof ShellAborted) throw err;
            this.print(`sim: ${(err as Error).message}`);
            n = 0;
          }
        }
        this.throwIfAborted();
        this.print(`${n} blocks ${sub === 'read' ? 'read' : 'written'}: ${n === cnt ? 'OK' : 'ERROR'}`);
        return n === cnt ? 0 : 1;
      }
      default:
        return USAGE;
    }
  }

  private async tftpboot(a: string[]): Promise<number> {
    let addr = this.loadAddr();
    let file = this.env.get('bootfile') ?? '';
    if (a.length === 2) {
      const { value, rest } = hexPrefix(a[1]!);
      if (rest === '') addr = Number(value);
      else file = a[1]!;
    } else if (a.length === 3) {
      addr = Number(hextoul(a[1]!));
      file = a[2]!;
    }
    for (const required of ['ipaddr', 'serverip']) {
      if (!this.env.get(required)) {
        this.print(`*** ERROR: \`${required}' not set`);
        return 1;
      }
    }
    const colon = file.indexOf(':');
    const path = colon < 0 ? file : file.slice(colon + 1);
    if (!path) {
      this.print('*** ERROR: no boot file name (sim does not invent one)');
      return 1;
    }
    const blksize = Number(dectoul(this.env.get('tftpblocksize') ?? '1468'));
    const windowsize = Number(dectoul(this.env.get('tftpwindowsize') ?? '1'));
    this.print(
      `TFTP from server ${this.env.get('serverip')}; our IP address is ${this.env.get('ipaddr')}\n` +
        `Filename '${path}'.\nLoad address: 0x${addr.toString(16)}\nLoading: `,
    );
    let data: Buffer | null;
    try {
      data = await this.o.tftp(path, { blksize, windowsize });
    } catch (err) {
      this.throwIfAborted();
      this.print(`\nTFTP error: '${(err as Error).message}'\nRetry count exceeded; starting again`);
      return 1;
    }
    this.throwIfAborted();
    if (!data) {
      this.print("\nTFTP error: 'File not found' (1)\nNot retrying...");
      return 1;
    }
    try {
      this.memory.write(addr, data);
    } catch {
      this.print(`\nTFTP error: trying to overwrite reserved memory...`);
      return 1;
    }
    this.print(`done\nBytes transferred = ${data.length} (${data.length.toString(16)} hex)`);
    this.env.set('filesize', data.length.toString(16));
    this.env.set('fileaddr', addr.toString(16));
    return 0;
  }

  private dhcp(): number {
    // The simulated network has no DHCP server: keep the configured addresses, as `autoload no` would.
    if (!this.env.get('ipaddr')) {
      this.print('sim: dhcp needs ipaddr in the board environment');
      return 1;
    }
    this.print(`DHCP client bound to address ${this.env.get('ipaddr')}`);
    return 0;
  }
}

/** hextoul: optional 0x, hex digits up to the first other character, 0 if none. */
export function hextoul(s: string): bigint {
  return hexPrefix(s).value;
}

function hexPrefix(s: string): { value: bigint; rest: string } {
  let i = s[0] === '0' && (s[1] === 'x' || s[1] === 'X') ? 2 : 0;
  let value = 0n;
  for (; i < s.length; i++) {
    const d = Number.parseInt(s[i]!, 16);
    if (Number.isNaN(d)) break;
    value = BigInt.asUintN(64, value * 16n + BigInt(d));
  }
  return { value, rest: s.slice(i) };
}

/** dectoul: decimal unless the text starts with 0x. */
export function dectoul(s: string): bigint {
  if (s[0] === '0' && (s[1] === 'x' || s[1] === 'X')) return hextoul(s);
  const m = /^\d*/.exec(s)![0];
  return m ? BigInt(m) : 0n;
}

/** cmd_get_data_size: `.b .w .l .q .s` suffix of the command name. */
function dataSize(command: string, fallback: number): number {
  const dot = command.indexOf('.');
  if (dot < 0) return fallback;
  switch (command.slice(dot + 1, dot + 2)) {
    case 'b':
      return 1;
    case 'w':
      return 2;
    case 'l':
      return 4;
    case 'q':
      return 8;
    case 's':
      return SIZE_STR;
    default:
      return SIZE_ERR;
  }
}

/** lib/gunzip.c's gzip_parse_header: where the deflate stream begins. */
function gzipHeaderLength(src: Buffer): number {
  const flags = src[3]!;
  let i = 10;
  if (flags & 4) i = 12 + src[10]! + (src[11]! << 8);
  if (flags & 8) while (src[i++] !== 0 && i < src.length);
  if (flags & 0x10) while (src[i++] !== 0 && i < src.length);
  if (flags & 2) i += 2;
  return i;
}
