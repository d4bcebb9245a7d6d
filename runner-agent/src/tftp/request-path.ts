import { TftpAccessError } from './errors.js';
import { clientText } from './log-text.js';

/** Longer names are refused: no file the agent serves has one, and a name is held for the transfer. */
export const MAX_REQUEST_PATH = 1024;

/**
 * Checks a requested file name before any resolver sees it, and normalises it: `a//b/./c` → `a/b/c`.
 * Refuses (TftpAccessError → error 2) what could escape the TFTP root or confuse a resolver:
 * empty or over-long names, absolute paths, `..` segments, backslashes (Windows-style traversal)
 * and NUL. The messages quote the name clipped (they reach the log and the client).
 */
export function normaliseRequestPath(raw: string): string {
  const name = () => clientText(raw);
  if (raw === '') throw new TftpAccessError('empty file name');
  if (raw.length > MAX_REQUEST_PATH)
    throw new TftpAccessError(`file name of ${raw.length} bytes refused (at most ${MAX_REQUEST_PATH}): ${name()}`);
  if (raw.startsWith('/')) throw new TftpAccessError(`absolute path refused: ${name()}`);
  if (raw.includes('\\')) throw new TftpAccessError(`backslash in file name refused: ${name()}`);
  if (raw.includes('\0')) throw new TftpAccessError('NUL in file name refused');
  const segments = raw.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.includes('..')) throw new TftpAccessError(`".." in file name refused: ${name()}`);
  if (segments.length === 0) throw new TftpAccessError(`file name names no file: ${name()}`);
  return segments.join('/');
}
