/**
 * Resolves the `image` input to one readable file, with everything the upload declares up front:
 * compression, size, sha256 and (when cheap) the decompressed size. A path or a glob matching
 * exactly one file is used in place — the user's file is only read, never moved or modified; an
 * http(s) URL is downloaded into a private temp folder that `cleanup()` removes.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { CodedError, codeOf, messageOf } from '../protocol/errors.js';
import { formatBytes } from '../protocol/units.js';
import type { Compression } from '../protocol/messages.js';
import { detectCompression, MAGIC_LENGTH } from '../protocol/compression.js';
import { decompressedSize } from './compression.js';
import { Inputs } from './constants.js';
import { globFiles, hasGlobMagic } from './glob.js';

export interface ResolvedImage {
  /** The file whose bytes are uploaded. */
  path: string;
  /** A short name for logs and the summary: the file name, or the URL's last path segment. */
  name: string;
  /** Where it came from: the path relative to the workspace, or the URL without its query string. */
  source: string;
  downloaded: boolean;
  compression: Compression;
  /** Bytes on the wire (the file as it is, compressed or not). */
  size: number;
  /** sha256 (lower-case hex) of the file as it is. */
  sha256: string;
  /** Size after decompression, when the file records it exactly. */
  imageSize?: number;
  /** Removes what resolving created (a downloaded copy); safe to call twice. */
  cleanup(): Promise<void>;
}

export type Downloader = (url: string, dest: string) => Promise<string>;

export interface ResolveOptions {
  /** Base for relative paths and globs. */
  workspace: string;
  /** Where a downloaded image goes (a fresh folder inside it); RUNNER_TEMP on GitHub. */
  tempDir?: string;
  /** Fetches a URL to a file; `@actions/tool-cache`'s `downloadTool` in the action. */
  download?: Downloader;
  /** Progress lines for the step log. */
  log?: (line: string) => void;
}

const MAX_LISTED_MATCHES = 20;

/** A problem with the image the user can act on; the message starts with the input's name. */
function imageError(message: string): CodedError {
  return new CodedError('IMAGE_INVALID', `${Inputs.image}: ${message}`);
}

/** Every failure is IMAGE_INVALID: the ones foreseen name the input, others keep their own message. */
export async function resolveImage(spec: string, options: ResolveOptions): Promise<ResolvedImage> {
  try {
    const log = options.log ?? (() => {});
    if (/^https?:\/\//i.test(spec)) return await resolveUrl(spec, options, log);
    const file = await locateFile(spec, options.workspace);
    const source = path.relative(options.workspace, file) || file;
    return await describe(file, path.basename(file), source, false, async () => {}, log);
  } catch (err) {
    throw codeOf(err) === 'IMAGE_INVALID' ? err : new CodedError('IMAGE_INVALID', messageOf(err), { cause: err });
  }
}

async function locateFile(spec: string, workspace: string): Promise<string> {
  if (!hasGlobMagic(spec)) return path.resolve(workspace, spec);
  const matches = await globFiles(spec, workspace);
  if (matches.length === 1) return matches[0]!;
  if (matches.length === 0) throw imageError(`no file matches "${spec}" (searched from ${workspace})`);
  const listed = matches.slice(0, MAX_LISTED_MATCHES).map((m) => `  ${path.relative(workspace, m) || m}`);
  if (matches.length > MAX_LISTED_MATCHES) listed.push(`  … and ${matches.length - MAX_LISTED_MATCHES} more`);
  throw imageError(`"${spec}" matches ${matches.length} files; make it match exactly one:\n${listed.join('\n')}`);
}

/** The URL without query or fragment: signed URLs carry secrets there, and logs are public. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    const hidden = u.search !== '' || u.hash !== '' ? '?…' : '';
    u.username = '';
    u.password = '';
    u.search = '';
    u.hash = '';
    return u.toString() + hidden;
  } catch {
    return '<invalid URL>';
  }
}

async function resolveUrl(url: string, options: ResolveOptions, log: (line: string) => void): Promise<ResolvedImage> {
  if (!options.download) throw imageError('downloading URLs is not available here');
  const shown = redactUrl(url);
  const name = decodeURIComponent(new URL(url).pathname.split('/').pop() ?? '') || 'image';
  const dir = await mkdtemp(path.join(options.tempDir ?? tmpdir(), 'rpi-flash-image-'));
  const cleanup = () => rm(dir, { recursive: true, force: true });
  try {
    log(`Downloading ${shown}`);
    const started = Date.now();
    let file: string;
    try {
      file = await options.download(url, path.join(dir, 'download'));
    } catch (err) {
      throw imageError(`download of ${shown} failed: ${messageOf(err)}`);
    }
    const { size } = await stat(file);
    log(`Downloaded ${formatBytes(size)} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return await describe(file, name, shown, true, cleanup, log);
  } catch (err) {
    await cleanup();
    throw err;
  }
}

async function describe(
  file: string,
  name: string,
  source: string,
  downloaded: boolean,
  cleanup: () => Promise<void>,
  log: (line: string) => void,
): Promise<ResolvedImage> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'is a directory'
          : code === 'EACCES'
            ? 'not readable (permission denied)'
            : String(code ?? err);
    throw imageError(`${source}: ${why}`);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw imageError(`${source}: not a regular file`);
    if (info.size === 0) throw imageError(`${source}: the file is empty (0 bytes)`);
    const head = Buffer.alloc(MAGIC_LENGTH);
    await handle.read(head, 0, MAGIC_LENGTH, 0);
    let detected;
    try {
      detected = detectCompression(head, name);
    } catch (err) {
      throw imageError(messageOf(err));
    }
    if (detected.note) log(detected.note);
    const imageSize = await decompressedSize(handle, info.size, detected.compression);
    const started = Date.now();
    const sha256 = await hashFile(file);
    const seconds = (Date.now() - started) / 1000;
    log(`sha256 ${sha256} (${formatBytes(info.size)} hashed in ${seconds.toFixed(1)} s)`);
    return {
      path: file,
      name,
      source,
      downloaded,
      compression: detected.compression,
      size: info.size,
      sha256,
      ...(imageSize !== undefined && { imageSize }),
      cleanup,
    };
  } finally {
    await handle.close();
  }
}

export async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file, { highWaterMark: 1024 * 1024 }), hash);
  return hash.digest('hex');
}
