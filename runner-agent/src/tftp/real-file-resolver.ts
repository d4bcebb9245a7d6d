/**
 * A resolver serving regular files under a directory, read-only. The agent serves virtual files;
 * this one is for benches, tests, and comparing with other TFTP servers.
 */
import { open, realpath } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { TftpAccessError } from './errors.js';
import type { TftpFile, TftpRequest, TftpResolver } from './server.js';

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export function realFileResolver(root: string): TftpResolver {
  let realRoot: Promise<string> | undefined;
  return {
    async resolveRead(req: TftpRequest): Promise<TftpFile | null> {
      realRoot ??= realpath(root);
      const base = await realRoot;
      let real: string;
      try {
        real = await realpath(join(base, req.path));
      } catch (err) {
        if (isMissing(err)) return null;
        throw err;
      }
      // The request path is already free of "..", but a symlink inside the root may point out of it.
      if (real !== base && !real.startsWith(base + sep))
        throw new TftpAccessError(`${req.path} leads outside the TFTP root`);
      const handle = await open(real, 'r');
      try {
        const stats = await handle.stat();
        if (!stats.isFile()) throw new TftpAccessError(`${req.path} is not a regular file`);
        return {
          size: stats.size,
          async read(position: number, length: number): Promise<Buffer> {
            const buf = Buffer.allocUnsafe(length);
            let got = 0;
            while (got < length) {
              const { bytesRead } = await handle.read(buf, got, length - got, position + got);
              if (bytesRead === 0) break;
              got += bytesRead;
            }
            return got === length ? buf : buf.subarray(0, got);
          },
          close: () => handle.close(),
        };
      } catch (err) {
        await handle.close();
        throw err;
      }
    },
  };
}
