/**
 * Streaming decompression of an upload while it is stored.
 *
 * `.gz` uses Node's zlib. Node 20 has neither xz nor zstd in zlib, so `.xz` and `.zst` go through
 * Debian's own tools (`xz -dc`, `zstd -dc`) in a child process. Measured on this machine on a
 * 256 MiB image (MB/s of decompressed output): `xz -dc` 230–317 vs lzma-native 124–141 and the
 * WebAssembly xz-decompress 144; `zstd -dc` 490–685 vs zstd-napi 418–709 and pure-JS fzstd 207–282.
 * The tools are as fast or faster than any npm package and add no dependency; the lab server is
 * Debian / Raspberry Pi OS, where they are one `apt-get install` away. A missing tool is reported
 * before the upload starts, naming the Debian package (see `checkDecompressor`).
 *
 * Memory stays bounded: input is written with backpressure (the caller waits for `write()`), the
 * output is piped with backpressure into the caller's sinks, and the child's pipes are the only
 * other buffers.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { CodedError } from '../../../src/protocol/errors.js';
import type { Compression } from '../../../src/protocol/messages.js';
import { isDiskFull } from './disk-space.js';

export type CompressedFormat = Exclude<Compression, 'none'>;

/** Commands used for the formats Node cannot decompress itself; tests point these elsewhere. */
export interface DecompressTools {
  xz?: string;
  zstd?: string;
}

interface ToolSpec {
  command: string;
  args: string[];
  debianPackage: string;
}

function toolFor(format: 'xz' | 'zst', tools: DecompressTools): ToolSpec {
  // `-T0`: xz ≥ 5.4 decompresses multi-block files (what `xz -T0` writes) on every core; on a Pi the
  // single-threaded rate is below the network rate, so this matters there more than here.
  if (format === 'xz') return { command: tools.xz ?? 'xz', args: ['-dc', '-T0'], debianPackage: 'xz-utils' };
  return { command: tools.zstd ?? 'zstd', args: ['-dcq'], debianPackage: 'zstd' };
}

const toolChecks = new Map<string, Promise<string | null>>();

/** Resolves to null when the command runs, else to why not. Cached per command for the process. */
function probe(command: string): Promise<string | null> {
  let check = toolChecks.get(command);
  if (!check) {
    check = new Promise((resolve) => {
      const child = spawn(command, ['--version'], { stdio: 'ignore' });
      child.once('error', (err) => resolve(err.message));
      child.once('close', (code) => resolve(code === 0 ? null : `\`${command} --version\` exited with ${code}`));
    });
    toolChecks.set(command, check);
    // A tool installed while the agent runs should be found by the next upload.
    void check.then((problem) => problem && toolChecks.delete(command));
  }
  return check;
}

/**
 * Throws CodedError UNSUPPORTED_COMPRESSION when this agent cannot decompress `format`: called
 * before an upload is accepted, so the client learns it before sending a byte.
 */
export async function checkDecompressor(format: CompressedFormat, tools: DecompressTools = {}): Promise<void> {
  if (format === 'gz') return;
  const tool = toolFor(format, tools);
  const problem = await probe(tool.command);
  if (problem) {
    throw new CodedError(
      'UNSUPPORTED_COMPRESSION',
      `this agent cannot decompress .${format} images: the \`${tool.command}\` command is missing ` +
        `(install the Debian package ${tool.debianPackage}): ${problem}`,
    );
  }
}

/** Feed compressed bytes in, the decompressed bytes flow into the sinks given at creation. */
export interface Decompressor {
  /** Resolves when the next chunk may be written; rejects once decompression has failed. */
  write(chunk: Buffer): Promise<void>;
  /** No more input: resolves when every decompressed byte has reached the sinks. */
  end(): Promise<void>;
  /**
   * Stop now (kills the child, destroys the streams); pending calls reject. Resolves once the
   * child has exited and the output pipeline has settled, so the caller may remove its files.
   */
  abort(): Promise<void>;
}

const STDERR_KEEP = 2048;
/** Compressed bytes that may wait in front of the decompressor before write() holds the caller back. */
const INPUT_SLACK = 4 * 1024 * 1024;

/**
 * Starts a decompressor whose output is piped through `sinks` (transforms then a final writable).
 * Errors thrown by the sinks as CodedError (e.g. NO_SPACE) keep their code; anything else is
 * DECOMPRESS_FAILED with the decompressor's own message.
 */
export function createDecompressor(
  format: CompressedFormat,
  sinks: [...NodeJS.ReadWriteStream[], NodeJS.WritableStream],
  tools: DecompressTools = {},
): Decompressor {
  let input: Writable;
  let output: Readable;
  let child: ChildProcessByStdio<Writable, Readable, Readable> | undefined;
  let exited: Promise<void>;
  let describe: string;

  if (format === 'gz') {
    const gunzip = zlib.createGunzip();
    input = gunzip;
    output = gunzip;
    exited = Promise.resolve();
    describe = 'gunzip';
  } else {
    const tool = toolFor(format, tools);
    describe = `${tool.command} ${tool.args.join(' ')}`;
    const proc = spawn(tool.command, tool.args, { stdio: ['pipe', 'pipe', 'pipe'] });
    child = proc;
    input = proc.stdin;
    output = proc.stdout;
    let stderr = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (text: string) => {
      stderr = (stderr + text).slice(-STDERR_KEEP);
    });
    exited = new Promise<void>((resolve, reject) => {
      proc.once('error', (err) => reject(new Error(`cannot run ${describe}: ${err.message}`)));
      proc.once('close', (code, signal) => {
        if (code === 0) resolve();
        else {
          const why = stderr.trim() || (signal ? `killed by ${signal}` : `exit code ${code}`);
          reject(new Error(why));
        }
      });
    });
  }

  let failure: CodedError | undefined;
  let rejectFailed: (err: CodedError) => void = () => {};
  const failed = new Promise<never>((_, reject) => {
    rejectFailed = reject;
  });
  failed.catch(() => {}); // observed through `failure`; never an unhandled rejection
  const fail = (err: unknown): void => {
    if (failure) return;
    const message = err instanceof Error ? err.message : String(err);
    failure =
      err instanceof CodedError
        ? err
        : isDiskFull(err)
          ? new CodedError('NO_SPACE', `the disk filled up while storing the decompressed image: ${message}`)
          : new CodedError('DECOMPRESS_FAILED', `${describe} failed: ${message}`);
    rejectFailed(failure);
  };

  // The child closing its stdin early (it failed) gives EPIPE here: the exit status says why.
  input.on('error', (err) => {
    if (!child) fail(err);
  });
  const piped = pipeline(output, ...(sinks as [NodeJS.WritableStream])).catch(fail);
  const exitedOk = exited.catch(fail);
  const settled = Promise.allSettled([piped, exitedOk]).then(() => {});
  const done = settled.then(() => {
    if (failure) throw failure;
  });
  done.catch(() => {});

  return {
    async write(chunk) {
      if (failure) throw failure;
      input.write(chunk);
      // Waiting for 'drain' (an empty buffer) after every chunk would leave the decompressor idle
      // while the next chunk arrives; a few chunks of slack keep it busy and memory still bounded.
      if (input.writableLength <= INPUT_SLACK) return;
      await Promise.race([new Promise<void>((resolve) => input.once('drain', resolve)), failed]);
    },
    async end() {
      if (failure) throw failure;
      input.end();
      await done;
    },
    abort() {
      fail(new CodedError('DECOMPRESS_FAILED', `${describe} was stopped`));
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      input.destroy();
      output.destroy();
      return settled;
    },
  };
}
