/**
 * Turns a console's byte stream into the lines a person reads and a boot check matches.
 *
 * What a "line" is, given what boards actually print:
 * - `\n`, `\r\n` and a lone `\r` each end a line. U-Boot and Linux print `\r\n`; progress output
 *   redraws with a bare `\r`; some programs print `\n\r`, and a tty's `onlcr` turns `\r\n` into
 *   `\r\r\n`. So a run of line-end characters ends one line, or as many as it holds `\n`: none
 *   of those forms invents blank lines, and a real blank line (`\r\n\r\n`) is kept.
 * - A chunk boundary may fall anywhere, also between `\r` and `\n` or inside a UTF-8 sequence:
 *   the splitter carries both across chunks.
 * - Text that never gets a line end — a login prompt `pi login: `, U-Boot's `=> ` — would never
 *   become a line. The owner calls `flush()` when the console has been quiet for a moment (or the
 *   connection ends) and the partial text becomes a line of its own; anything printed later on
 *   the same screen line starts a new line.
 * - Lines are cut at `maxLineChars`, so line noise at a wrong baud rate cannot grow one line forever.
 * - ANSI escape sequences (colours, cursor moves) and other control characters except tab are
 *   removed from lines: a pattern such as `login:` must match whatever colour the prompt has, and
 *   the job log should not carry cursor movements. The raw bytes are kept elsewhere (capture.ts).
 * - Bytes that are not UTF-8 (a wrong baud rate) become U+FFFD, as TextDecoder does.
 */
import { StringDecoder } from 'node:string_decoder';

export const DEFAULT_MAX_LINE_CHARS = 4096;

// CSI (ESC [ … final byte), OSC (ESC ] … BEL or ESC \), the single-byte CSI (0x9b), and the
// other escapes (ESC, intermediate bytes such as `(`, one final character), then every other C0
// control but tab, and DEL.
const ANSI_PATTERN =
  // eslint-disable-next-line no-control-regex -- escape sequences start with ESC and OSC ends with BEL
  /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x9b[0-?]*[ -/]*[@-~]|\x1b[ -/]+[0-~]|\x1b./g;
// eslint-disable-next-line no-control-regex -- its job is to remove control characters
const CONTROL_PATTERN = /[\x00-\x08\x0a-\x1f\x7f]/g;

/** A line as people read it: escape sequences and control characters (except tab) removed. */
export function cleanConsoleText(text: string): string {
  return text.replace(ANSI_PATTERN, '').replace(CONTROL_PATTERN, '');
}

export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8');
  private partial = '';
  /**
   * The run of line-end characters (`\r`, `\n`) being read, which may span chunks. A run ends
   * max(1, number of `\n` in it) lines when text preceded it, else as many lines as it holds `\n`
   * (blank lines); `\r\n`, `\n\r` and `\r\r\n` thus end one line, `\r\n\r\n` two.
   */
  private run: { afterText: boolean; newlines: number; ended: number } | undefined;
  private readonly maxLineChars: number;

  constructor(
    private readonly emit: (line: string) => void,
    options: { maxLineChars?: number } = {},
  ) {
    this.maxLineChars = options.maxLineChars ?? DEFAULT_MAX_LINE_CHARS;
  }

  /** Whether text is waiting for a line end (the owner's cue to arm its quiet-time flush). */
  get hasPartial(): boolean {
    return this.partial.length > 0;
  }

  push(chunk: Buffer): void {
    const text = this.decoder.write(chunk);
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 0x0a && c !== 0x0d) continue;
      if (i > start) {
        this.partial += text.slice(start, i);
        this.run = undefined;
      }
      start = i + 1;
      const run = (this.run ??= { afterText: this.partial.length > 0, newlines: 0, ended: 0 });
      if (c === 0x0a) run.newlines++;
      const due = run.afterText ? Math.max(1, run.newlines) : run.newlines;
      while (run.ended < due) {
        run.ended++;
        this.emitLine(this.partial);
        this.partial = '';
      }
    }
    if (start < text.length) {
      this.partial += text.slice(start);
      this.run = undefined;
    }
    while (this.partial.length >= this.maxLineChars) {
      this.emit(cleanConsoleText(this.partial.slice(0, this.maxLineChars)));
      this.partial = this.partial.slice(this.maxLineChars);
    }
  }

  /** Ends the pending partial line, if any (quiet console, lost connection, close). */
  flush(): void {
    this.partial += this.decoder.end();
    if (this.partial.length === 0) return;
    this.emitLine(this.partial);
    this.partial = '';
    // The line is over: the `\r\n` that may still follow it ends nothing more.
    this.run = { afterText: true, newlines: 0, ended: 1 };
  }

  private emitLine(line: string): void {
    for (let at = 0; at === 0 || at < line.length; at += this.maxLineChars) {
      this.emit(cleanConsoleText(line.slice(at, at + this.maxLineChars)));
    }
  }
}
