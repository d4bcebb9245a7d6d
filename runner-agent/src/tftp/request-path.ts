import { TftpAccessError } from './errors.js';

/**
 * Checks a requested file name before any resolver sees it, and normalises it: `a//b/./c` → `a/b/c`.
 * Refuses (TftpAccessError → error 2) what could escape the TFTP root or confuse a resolver:
 * empty names, absolute paths, `..` segments, backslashes (Windows-style traversal) and NUL.
 */
export function normaliseRequestPath(raw: string): string {
  if (raw === '') throw new TftpAccessError('empty file name');
  if (raw.startsWith('/')) throw new TftpAccessError(`absolute path refused: ${raw}`);
  if (raw.includes('\\')) throw new TftpAccessError(`backslash in file name refused: ${raw}`);
  if (raw.includes('\0')) throw new TftpAccessError('NUL in file name refused');
  const segments = raw.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.includes('..')) throw new TftpAccessError(`".." in file name refused: ${raw}`);
  if (segments.length === 0) throw new TftpAccessError(`file name names no file: ${raw}`);
  return segments.join('/');
}
