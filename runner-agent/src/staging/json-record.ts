/**
 * A small per-board record in `<stateDir>/boards/`, as JSON: written whole under a temporary name
 * and renamed, so a crash leaves the old record or the new one, never half of one.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';

/** The parsed record; undefined when there is none or it does not parse. */
export async function readJsonRecord(file: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}

export async function writeJsonRecord(dir: string, file: string, value: unknown): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  try {
    await writeFile(tmp, JSON.stringify(value, null, 2) + '\n', { mode: 0o600 });
    await rename(tmp, file);
  } finally {
    await rm(tmp, { force: true });
  }
}
