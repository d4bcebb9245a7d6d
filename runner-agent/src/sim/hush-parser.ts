/**
 * A parser for the subset of U-Boot 2023.01's hush shell (common/cli_hush.c) that our scripts
 * use, modelled on its behaviour rather than on POSIX sh, because scripts must run on the real
 * thing:
 * - `'…'` is literal (even `$`); `"…"` keeps `$` expansion but makes `; & | #` and blanks plain.
 * - `$name`, `${name}` and `$?` become references that are expanded when the command runs, not
 *   when it is parsed. A command holding any reference is flattened back to text after expansion
 *   and parsed again with `; $ & |` plain (see uboot-shell.ts) — values are split on blanks.
 * - `;`, newline, `&&` and `||` separate commands; a single `&` or `|` is a syntax error.
 * - `#` at the start of a word starts a comment.
 * - `if/then/elif/else/fi` build a group whose commands carry the reserved word they follow;
 *   loops (`for/while/until`) exist in U-Boot but are rejected here: our scripts avoid them.
 * - Backslash makes the next character literal.
 * Words are kept in U-Boot's internal form: a variable reference is `\x03name\x03`.
 */

export const VAR_MARK = '\u0003';

export type ReservedMode = 'none' | 'if' | 'then' | 'elif' | 'else' | 'fi';
export type Followup = 'seq' | 'and' | 'or';

export interface SimpleCommand {
  kind: 'simple';
  /** Words in internal form (variable references marked with VAR_MARK). */
  argv: string[];
  /** Per word: was any part of it quoted (U-Boot's argv_nonnull; quoted words survive re-parsing whole). */
  quoted: boolean[];
  /** Number of variable references in the command (U-Boot's child->sp). */
  varRefs: number;
}

export interface GroupCommand {
  kind: 'group';
  list: Pipe[];
}

/** One command and how it joins the next one. U-Boot keeps empty pipes too; so do we. */
export interface Pipe {
  rmode: ReservedMode;
  followup: Followup;
  command: SimpleCommand | GroupCommand | null;
}

export class HushSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HushSyntaxError';
  }
}

/**
 * - `line`: one top-level statement, ending at an unquoted newline outside `if…fi` (`source`, the console).
 * - `whole`: everything up to the end, newlines are separators (`run` of a variable).
 * - `reparse`: one command after variable expansion: `; $ & |` are plain, no reserved words.
 */
export type ParseMode = 'line' | 'whole' | 'reparse';

const RESERVED: Record<string, { mode: ReservedMode; follows: ReservedMode[]; start?: boolean; end?: boolean }> = {
  if: { mode: 'if', follows: [], start: true },
  then: { mode: 'then', follows: ['if', 'elif'] },
  elif: { mode: 'elif', follows: ['then'] },
  else: { mode: 'else', follows: ['then'] },
  fi: { mode: 'fi', follows: ['then', 'else'], end: true },
};
const LOOP_WORDS = new Set(['for', 'while', 'until', 'do', 'done', 'in']);

interface Context {
  pipes: Pipe[];
  command: SimpleCommand | GroupCommand | null;
  mode: ReservedMode;
  /** The reserved word that opened the current step (null at top level). */
  last: ReservedMode | null;
  outer: Context | null;
}

function newContext(outer: Context | null): Context {
  return { pipes: [], command: null, mode: 'none', last: null, outer };
}

class Word {
  text = '';
  quoted = false;
  inDoubleQuotes = false;

  /** U-Boot escapes `* ? [ \` inside double quotes (later stripped with every other backslash). */
  add(ch: string): void {
    if (this.inDoubleQuotes && '*?[\\'.includes(ch)) this.text += '\\';
    this.text += ch;
  }
}

export interface ParseResult {
  /** The parsed statement, or null when the statement had a syntax error (`error` says which). */
  list: Pipe[] | null;
  error?: string;
  /** Where the next statement starts. */
  next: number;
  /** True when the input is used up. */
  eof: boolean;
}

/** Parses one statement (mode `line`) or everything (`whole`, `reparse`) starting at `start`. */
export function parseHush(text: string, mode: ParseMode, start = 0): ParseResult {
  let pos = start;
  let ctx = newContext(null);
  const word = new Word();
  const reparse = mode === 'reparse';
  const endTrigger = mode === 'whole' ? null : '\n';

  const fail = (message: string): never => {
    throw new HushSyntaxError(message);
  };

  const doneWord = () => {
    if (word.text.length === 0 && !word.quoted) return;
    if (ctx.command?.kind === 'group') fail('syntax error: words after "fi"');
    const raw = word.text;
    const quoted = word.quoted;
    word.text = '';
    word.quoted = false;
    if (!ctx.command && !reparse) {
      if (LOOP_WORDS.has(raw)) fail(`"${raw}" loops are not supported by the simulated shell`);
      const r = RESERVED[raw];
      if (r) {
        if (r.start) {
          const inner = newContext(ctx);
          ctx = inner;
        } else if (ctx.last === null || !r.follows.includes(ctx.last)) {
          fail(`syntax error: unexpected "${raw}"`);
        }
        ctx.mode = r.mode;
        ctx.last = r.mode;
        if (r.end) {
          donePipe('seq');
          const outer = ctx.outer!;
          outer.command = { kind: 'group', list: ctx.pipes };
          ctx = outer;
        }
        return;
      }
    }
    let cmd = ctx.command;
    if (!cmd) cmd = ctx.command = { kind: 'simple', argv: [], quoted: [], varRefs: 0 };
    if (cmd.kind !== 'simple') return fail('syntax error');
    cmd.argv.push(stripBackslashes(raw));
    cmd.quoted.push(quoted);
  };

  const donePipe = (followup: Followup) => {
    ctx.pipes.push({ rmode: ctx.mode, followup, command: ctx.command });
    ctx.command = null;
  };

  const countVar = () => {
    if (!ctx.command) ctx.command = { kind: 'simple', argv: [], quoted: [], varRefs: 0 };
    if (ctx.command.kind === 'simple') ctx.command.varRefs++;
  };

  const handleDollar = () => {
    const ch = text[pos];
    if (ch !== undefined && /[A-Za-z]/.test(ch)) {
      let name = '';
      while (pos < text.length && /[A-Za-z0-9_]/.test(text[pos]!)) name += text[pos++];
      word.text += VAR_MARK + name + VAR_MARK;
      countVar();
    } else if (ch === '?') {
      pos++;
      word.text += VAR_MARK + '$?' + VAR_MARK;
      countVar();
    } else if (ch === '{') {
      pos++;
      const close = text.indexOf('}', pos);
      if (close < 0) fail('syntax error: "${" without "}"');
      word.text += VAR_MARK + text.slice(pos, close) + VAR_MARK;
      pos = close + 1;
      countVar();
    } else {
      word.add('$');
    }
  };

  try {
    while (pos < text.length) {
      const ch = text[pos++]!;
      const blank = ch === ' ' || ch === '\t' || ch === '\n';
      const special = reparse ? ch === '#' : ';&|#'.includes(ch);
      const alwaysSpecial = reparse ? '\\\'"'.includes(ch) : '\\$\'"'.includes(ch);
      if (!blank && !special && !alwaysSpecial) {
        word.add(ch);
        continue;
      }
      if ((blank || special) && word.inDoubleQuotes) {
        word.add(ch);
        continue;
      }
      if (blank) {
        doneWord();
        if (ch === '\n') donePipe('seq');
      }
      if (ch === endTrigger && !word.inDoubleQuotes && ctx.mode === 'none' && ctx.outer === null) {
        return finish(ctx, word, pos, text, false);
      }
      if (blank) continue;
      switch (ch) {
        case '#':
          if (word.text.length === 0 && !word.inDoubleQuotes) {
            while (pos < text.length && text[pos] !== '\n') pos++;
          } else word.add(ch);
          break;
        case '\\':
          if (pos >= text.length) fail('syntax error: backslash at the end');
          word.add('\\');
          word.add(text[pos++]!);
          break;
        case '$':
          handleDollar();
          break;
        case "'": {
          word.quoted = true;
          const close = text.indexOf("'", pos);
          if (close < 0) fail('syntax error: unterminated single quote');
          word.text += text.slice(pos, close);
          pos = close + 1;
          break;
        }
        case '"':
          word.quoted = true;
          word.inDoubleQuotes = !word.inDoubleQuotes;
          break;
        case ';':
          doneWord();
          donePipe('seq');
          break;
        case '&':
        case '|':
          doneWord();
          if (text[pos] === ch) {
            pos++;
            donePipe(ch === '&' ? 'and' : 'or');
          } else fail(`syntax error: single "${ch}" (U-Boot has no pipes or background jobs)`);
          break;
      }
    }
    return finish(ctx, word, pos, text, true);
  } catch (err) {
    if (!(err instanceof HushSyntaxError)) throw err;
    // U-Boot 2023.01 clears its input pointer after a syntax error (parse_stream_outer sets
    // inp->p = NULL), so what follows in a script is not run reliably: drop all of it.
    return { list: null, error: err.message, next: text.length, eof: true };
  }

  function finish(c: Context, w: Word, at: number, src: string, eof: boolean): ParseResult {
    if (c.outer !== null) throw new HushSyntaxError(`syntax error: "${c.last}" without "fi"`);
    if (w.inDoubleQuotes) throw new HushSyntaxError('syntax error: unterminated double quote');
    doneWord();
    donePipe('seq');
    return { list: c.pipes, next: at, eof: eof || at >= src.length };
  }
}

/** U-Boot removes every backslash and keeps the character after it. */
function stripBackslashes(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\') i++;
    if (i < s.length) out += s[i];
  }
  return out;
}

/** Every simple command in a parsed list, groups included (for static checks of scripts). */
export function* simpleCommands(list: Pipe[]): Generator<SimpleCommand> {
  for (const pipe of list) {
    if (pipe.command?.kind === 'simple') yield pipe.command;
    else if (pipe.command?.kind === 'group') yield* simpleCommands(pipe.command.list);
  }
}
