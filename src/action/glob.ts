/**
 * A small glob for the `image` input: `*`, `?`, `[abc]`/`[!abc]` within one path segment, and
 * `**` for any number of directories. Enough to pick one build output (`out/*.img.xz`,
 * `build/**\/sdcard.img`) without a new dependency. As in shells, wildcards do not match names
 * starting with a dot unless the pattern segment does.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

export function hasGlobMagic(pattern: string): boolean {
  return /[*?[]/.test(pattern);
}

/** Regular files matching `pattern` (relative to `cwd` unless absolute), as absolute paths, sorted. */
export async function globFiles(pattern: string, cwd: string): Promise<string[]> {
  const absolute = path.isAbsolute(pattern);
  const segments = pattern.split(/[\\/]+/).filter((s) => s !== '' && s !== '.');
  // Everything before the first wildcard segment is a plain directory to start from.
  let base = absolute ? path.parse(path.resolve(pattern)).root : cwd;
  while (segments.length > 0 && !hasGlobMagic(segments[0]!)) base = path.join(base, segments.shift()!);
  const found = new Set<string>();
  await walk(base, segments, found);
  return [...found].sort();
}

async function walk(dir: string, segments: string[], found: Set<string>): Promise<void> {
  if (segments.length === 0) {
    if ((await statOrUndefined(dir))?.isFile()) found.add(dir);
    return;
  }
  const [segment, ...rest] = segments as [string, ...string[]];
  if (segment === '**') {
    await walk(dir, rest, found); // `**` matches zero directories…
    for (const entry of await listDir(dir)) {
      // …or any number; symlinked directories are not followed, so a link loop cannot hang us.
      if (entry.isDirectory() && !entry.name.startsWith('.')) await walk(path.join(dir, entry.name), segments, found);
    }
    return;
  }
  if (!hasGlobMagic(segment)) {
    await walk(path.join(dir, segment), rest, found);
    return;
  }
  const matcher = segmentRegExp(segment);
  for (const entry of await listDir(dir)) {
    if (matcher.test(entry.name)) await walk(path.join(dir, entry.name), rest, found);
  }
}

/** One path segment's pattern as an anchored regular expression. */
export function segmentRegExp(segment: string): RegExp {
  let source = segment.startsWith('.') ? '' : '(?!\\.)';
  for (let i = 0; i < segment.length; i++) {
    const c = segment[i]!;
    if (c === '*') source += '[^/]*';
    else if (c === '?') source += '[^/]';
    else if (c === '[') {
      const close = segment.indexOf(']', i + 2);
      if (close === -1) {
        source += '\\[';
        continue;
      }
      let body = segment.slice(i + 1, close);
      const negate = body.startsWith('!') || body.startsWith('^');
      if (negate) body = body.slice(1);
      source += `[${negate ? '^' : ''}${body.replace(/[\\\]^]/g, '\\$&')}]`;
      i = close;
    } else source += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  return new RegExp(`^${source}$`);
}

async function listDir(dir: string) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
}

async function statOrUndefined(file: string) {
  try {
    return await stat(file);
  } catch {
    return undefined;
  }
}
