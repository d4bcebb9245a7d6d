/**
 * How text a TFTP client chose (file names, its error messages) appears in a log line or in an
 * error packet we send: clipped, so a 64 KiB name is not a 64 KiB log line, and with every byte
 * outside printable ASCII spelled out, so a name cannot carry terminal escapes or fake log lines.
 * What it returns is printable ASCII, so passing it through again only clips it.
 */

/** Characters of client text kept in a log line; the rest is counted, not shown. */
export const CLIENT_TEXT_MAX = 160;

export function clientText(text: string, max = CLIENT_TEXT_MAX): string {
  const shown = text.length > max ? text.slice(0, max) : text;
  const escaped = shown.replace(/[^\x20-\x7e]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
  return text.length > max ? `${escaped}... (${text.length} characters)` : escaped;
}
