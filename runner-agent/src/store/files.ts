/**
 * The file-system steps both halves of the store need: whether a file is there (and how long),
 * and fsync. A rename is only durable once its directory is synced too, hence `syncDir`.
 */
import fs from 'node:fs/promises';

/** The file's size, or null when it does not exist. */
export async function fileSize(file: string): Promise<number | null> {
  try {
    return (await fs.stat(file)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function fsyncPath(target: string, flags: 'r' | 'r+'): Promise<void> {
  const handle = await fs.open(target, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export const syncFile = (file: string): Promise<void> => fsyncPath(file, 'r+');

/** Makes a rename in `dir` durable. */
export const syncDir = (dir: string): Promise<void> => fsyncPath(dir, 'r');
