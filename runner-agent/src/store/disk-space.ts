/**
 * Free disk space and what to say when it runs out. The free-space probe is the OS boundary, so
 * the store takes it as an option and tests can stand in a small disk.
 */
import fs from 'node:fs/promises';
import { CodedError } from '../../../src/protocol/errors.js';

/** Bytes an unprivileged process may still write on the file system holding `dir`. */
export type FreeSpaceProbe = (dir: string) => Promise<number>;

export const statfsFreeBytes: FreeSpaceProbe = async (dir) => {
  const stats = await fs.statfs(dir);
  return stats.bavail * stats.bsize;
};

export function isDiskFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** A disk-full error as NO_SPACE naming the directory; other errors pass through unchanged. */
export function asNoSpace(err: unknown, dir: string, doing: string): unknown {
  if (!isDiskFull(err)) return err;
  return new CodedError('NO_SPACE', `the disk holding ${dir} filled up while ${doing}: ${(err as Error).message}`);
}
