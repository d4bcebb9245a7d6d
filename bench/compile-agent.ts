/**
 * Compiles one entry of the repository and what it imports into `out` (tsc, the repository's
 * settings) for a bench that runs the agent as a lab does: compiled JavaScript, not through tsx's
 * loader, and not into build/, which others' work may be using. Returns the entry's .js path.
 */
import { execFile } from 'node:child_process';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const REPO = path.resolve(import.meta.dirname, '..');

/** `entry` is relative to the repository, e.g. `runner-agent/src/cli.ts`. */
export async function compileAgent(out: string, entry: string): Promise<string> {
  const config = path.join(out, 'tsconfig.json');
  await mkdir(out, { recursive: true });
  await writeFile(
    config,
    JSON.stringify({
      extends: path.join(REPO, 'tsconfig.json'),
      compilerOptions: { outDir: out, rootDir: REPO, noEmit: false, sourceMap: false, incremental: false },
      include: [],
      files: [path.join(REPO, entry)],
    }),
  );
  // Type errors elsewhere in the tree (someone's work in progress) do not stop the emit.
  await promisify(execFile)(path.join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', config]).catch(() => undefined);
  // ES modules, and the repository's dependencies, as in the checkout.
  await writeFile(path.join(out, 'package.json'), JSON.stringify({ type: 'module' }));
  await symlink(path.join(REPO, 'node_modules'), path.join(out, 'node_modules'));
  return path.join(out, entry.replace(/\.ts$/, '.js'));
}
