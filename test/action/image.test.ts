import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { downloadTool } from '@actions/tool-cache';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { detectCompression } from '../../src/protocol/compression.js';
import { globFiles, segmentRegExp } from '../../src/action/glob.js';
import { redactUrl, resolveImage } from '../../src/action/image.js';

let ws: string;
let temp: string;
beforeEach(() => {
  ws = mkdtempSync(path.join(tmpdir(), 'image-ws-'));
  temp = mkdtempSync(path.join(tmpdir(), 'image-temp-'));
});
afterEach(() => {
  rmSync(ws, { recursive: true, force: true });
  rmSync(temp, { recursive: true, force: true });
});

/** A disk-like image: random blocks between runs of zeros, so compressors have work and ratios are realistic. */
function diskImage(size: number): Buffer {
  const data = Buffer.alloc(size);
  for (let at = 0; at < size; at += 64 * 1024) randomBytes(Math.min(16 * 1024, size - at)).copy(data, at);
  return data;
}

function put(rel: string, data: Buffer | string): string {
  const file = path.join(ws, rel);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, data);
  return file;
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const resolve = (spec: string) =>
  resolveImage(spec, { workspace: ws, tempDir: temp, download: (url, dest) => downloadTool(url, dest) });

describe('glob', () => {
  it('translates segment patterns like a shell', () => {
    expect(segmentRegExp('*.img').test('a.img')).toBe(true);
    expect(segmentRegExp('*.img').test('.hidden.img')).toBe(false);
    expect(segmentRegExp('.*.img').test('.hidden.img')).toBe(true);
    expect(segmentRegExp('v?.img').test('v1.img')).toBe(true);
    expect(segmentRegExp('v[0-2].img').test('v3.img')).toBe(false);
    expect(segmentRegExp('v[!0-2].img').test('v3.img')).toBe(true);
    expect(segmentRegExp('a+b(1).img').test('a+b(1).img')).toBe(true);
  });

  it('walks ** through directories and returns sorted absolute files only', async () => {
    put('out/a/sdcard.img', 'x');
    put('out/b/c/sdcard.img', 'x');
    put('out/sdcard.img', 'x');
    mkdirSync(path.join(ws, 'out/dir.img'));
    expect(await globFiles('out/**/sdcard.img', ws)).toEqual(
      ['out/a/sdcard.img', 'out/b/c/sdcard.img', 'out/sdcard.img'].map((r) => path.join(ws, r)),
    );
    expect(await globFiles('out/*.img', ws)).toEqual([path.join(ws, 'out/sdcard.img')]);
    expect(await globFiles(path.join(ws, 'out/*/sdcard.img'), '/nonexistent')).toEqual([
      path.join(ws, 'out/a/sdcard.img'),
    ]);
  });
});

describe('resolveImage: locating the file', () => {
  it('uses a glob that matches exactly one file, in place and unmodified', async () => {
    const data = diskImage(300_000);
    const file = put('out/build-17/sdcard.img', data);
    const before = statSync(file);
    const image = await resolve('out/*/sdcard.img');
    expect(image.path).toBe(file);
    expect(image.source).toBe('out/build-17/sdcard.img');
    expect(image.sha256).toBe(sha256(data));
    expect(image.size).toBe(data.length);
    expect(image.compression).toBe('none');
    expect(image.imageSize).toBe(data.length);
    await image.cleanup();
    expect(readFileSync(file).equals(data)).toBe(true);
    expect(statSync(file).mtimeMs).toBe(before.mtimeMs);
  });

  it('names the pattern and the folder when nothing matches', async () => {
    await expect(resolve('out/*.img.xz')).rejects.toThrow(
      `image: no file matches "out/*.img.xz" (searched from ${ws})`,
    );
  });

  it('lists what matched when several files match', async () => {
    put('out/a.img', 'x');
    put('out/b.img', 'y');
    const err = await resolve('out/*.img').catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toBe(
      'image: "out/*.img" matches 2 files; make it match exactly one:\n  out/a.img\n  out/b.img',
    );
  });

  it('refuses a missing file, a directory and an empty file', async () => {
    await expect(resolve('missing.img')).rejects.toThrow('image: missing.img: no such file');
    // Coded as the step reports it, from the image module itself.
    await expect(resolve('missing.img')).rejects.toMatchObject({ code: 'IMAGE_INVALID' });
    mkdirSync(path.join(ws, 'dir.img'));
    await expect(resolve('dir.img')).rejects.toThrow(/image: dir\.img: (is a directory|not a regular file)/);
    put('empty.img', '');
    await expect(resolve('empty.img')).rejects.toThrow('image: empty.img: the file is empty (0 bytes)');
  });

  // Root reads anything, so as root (a CI container) the check runs in a child dropped to nobody.
  it('refuses an unreadable file', async () => {
    const file = put('locked.img', 'x');
    execFileSync('chmod', ['000', file]);
    if (process.getuid?.() !== 0) {
      await expect(resolve('locked.img')).rejects.toThrow('image: locked.img: not readable');
      return;
    }
    execFileSync('chown', ['-R', '65534:65534', ws, temp]);
    const module = path.resolve('src/action/image.ts');
    const options = `{ workspace: ${JSON.stringify(ws)}, tempDir: ${JSON.stringify(temp)}, download: async () => '' }`;
    const script = `import { resolveImage } from ${JSON.stringify(module)};
resolveImage('locked.img', ${options})
  .then(() => console.log('resolved'), (err) => console.log(err.code + ': ' + err.message));`;
    const out = execFileSync(
      'setpriv',
      [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        process.execPath,
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        script,
      ],
      { encoding: 'utf8' },
    );
    expect(out.trim()).toMatch(/^IMAGE_INVALID: image: locked\.img: not readable/);
  });
});

describe('resolveImage: compression', () => {
  const data = diskImage(1_500_000);

  it.each([
    ['gzip', ['-c'], '.gz', 'gz'],
    ['xz', ['-c', '-T1'], '.xz', 'xz'],
    ['zstd', ['-c', '-q'], '.zst', 'zst'],
  ] as const)('detects %s from the content and reads its decompressed size', async (tool, args, ext, compression) => {
    put('sdcard.img', data);
    const packed = execFileSync(tool, [...args, path.join(ws, 'sdcard.img')], { maxBuffer: 64 << 20 });
    put(`sdcard.img${ext}`, packed);
    const image = await resolve(`sdcard.img${ext}`);
    expect(image.compression).toBe(compression);
    expect(image.size).toBe(packed.length);
    expect(image.sha256).toBe(sha256(packed));
    // gzip's trailer is only trusted when the file is too small to have wrapped 2^32.
    expect(image.imageSize).toBe(compression === 'gz' && packed.length * 1032 >= 2 ** 32 ? undefined : data.length);
  });

  it('sums the sizes of concatenated xz streams and zstd frames', async () => {
    const a = data.subarray(0, 700_000);
    const b = data.subarray(700_000);
    const xz = (buf: Buffer) => execFileSync('xz', ['-c', '-T1'], { input: buf });
    const zst = (buf: Buffer) => execFileSync('zstd', ['-c', '-q'], { input: buf });
    put('multi.img.xz', Buffer.concat([xz(a), Buffer.alloc(8), xz(b)])); // 8 bytes of stream padding between
    expect((await resolve('multi.img.xz')).imageSize).toBe(data.length);
    // zstd reading a pipe does not record the content size: the size is then unknown, not guessed.
    put('pipe.img.zst', zst(a));
    const fromPipe = await resolve('pipe.img.zst');
    expect(fromPipe.compression).toBe('zst');
    expect(fromPipe.imageSize).toBeUndefined();
    put('a.bin', a);
    put('b.bin', b);
    const framed = Buffer.concat([
      execFileSync('zstd', ['-c', '-q', path.join(ws, 'a.bin')]),
      execFileSync('zstd', ['-c', '-q', path.join(ws, 'b.bin')]),
    ]);
    put('frames.img.zst', framed);
    expect((await resolve('frames.img.zst')).imageSize).toBe(data.length);
  });

  it('trusts the gzip trailer for a small file', async () => {
    const small = Buffer.alloc(100_000, 7);
    put('small.img.gz', gzipSync(small));
    expect((await resolve('small.img.gz')).imageSize).toBe(small.length);
  });

  it('accepts compressed content under a neutral name, with a note', () => {
    expect(detectCompression(gzipSync(Buffer.from('x')), 'sdcard.img')).toEqual({
      compression: 'gz',
      note: 'sdcard.img is gzip-compressed although its name does not say so',
    });
  });

  it('refuses a name that promises a compression the content does not have', async () => {
    put('sdcard.img.xz', '<html>502 Bad Gateway</html>');
    await expect(resolve('sdcard.img.xz')).rejects.toThrow(
      'image: sdcard.img.xz: the name says xz but the content is not compressed (first bytes: 3c 68 74 6d 6c 3e); ' +
        'is the file truncated or not the image?',
    );
    put('other.img.zst', gzipSync(Buffer.from('x')));
    await expect(resolve('other.img.zst')).rejects.toThrow('the name says zstd but the content is gzip data');
  });

  it('refuses compression formats the agent cannot decompress', async () => {
    put('sdcard.img.bz2', Buffer.from('BZh91AY&SY'));
    await expect(resolve('sdcard.img.bz2')).rejects.toThrow(
      'image: sdcard.img.bz2 is bzip2-compressed; supported images are raw, .gz, .xz or .zst',
    );
    put('sdcard.zip', Buffer.from([0x50, 0x4b, 0x03, 0x04, 0, 0]));
    await expect(resolve('sdcard.zip')).rejects.toThrow('sdcard.zip is zip-compressed');
    put('sdcard.img.lzma', Buffer.from([0x5d, 0, 0, 0x80, 0, 0]));
    await expect(resolve('sdcard.img.lzma')).rejects.toThrow(
      'image: sdcard.img.lzma: lzma compression is not supported',
    );
  });
});

describe('resolveImage: URLs', () => {
  let server: Server | undefined;
  let requests: string[] = [];
  afterEach(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
    requests = [];
  });

  async function serve(files: Record<string, Buffer>): Promise<string> {
    server = createServer((req, res) => {
      requests.push(req.url ?? '');
      const body = files[new URL(req.url ?? '/', 'http://x').pathname];
      if (!body) {
        res.writeHead(404).end('not found');
        return;
      }
      res.writeHead(200, { 'content-length': body.length }).end(body);
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  it('downloads into a private temp folder, names it by the URL, and cleanup removes it', async () => {
    const packed = execFileSync('xz', ['-c', '-T1'], { input: diskImage(400_000) });
    const base = await serve({ '/builds/sdcard.img.xz': packed });
    const image = await resolve(`${base}/builds/sdcard.img.xz?token=abc`);
    expect(requests).toEqual(['/builds/sdcard.img.xz?token=abc']);
    expect(image.downloaded).toBe(true);
    expect(image.name).toBe('sdcard.img.xz');
    expect(image.source).toBe(`${base}/builds/sdcard.img.xz?…`);
    expect(image.compression).toBe('xz');
    expect(image.sha256).toBe(sha256(packed));
    expect(image.imageSize).toBe(400_000);
    expect(path.dirname(path.dirname(image.path))).toBe(temp);
    await image.cleanup();
    expect(readdirSync(temp)).toEqual([]);
  });

  it('names the URL (without its query) when the download fails, and leaves no temp folder', async () => {
    const base = await serve({});
    await expect(resolve(`${base}/missing.img?sig=secret`)).rejects.toThrow(
      `image: download of ${base}/missing.img?… failed: Unexpected HTTP response: 404`,
    );
    expect(readdirSync(temp)).toEqual([]);
  });

  it('checks the downloaded content against the URL name', async () => {
    const base = await serve({ '/sdcard.img.gz': Buffer.from('<html>login</html>') });
    await expect(resolve(`${base}/sdcard.img.gz`)).rejects.toThrow(
      'image: sdcard.img.gz: the name says gzip but the content is not compressed',
    );
    expect(readdirSync(temp)).toEqual([]);
  });

  it('redacts credentials and queries', () => {
    expect(redactUrl('https://u:p@host/a.img?x=1#f')).toBe('https://host/a.img?…');
    expect(redactUrl('https://host/a.img')).toBe('https://host/a.img');
  });
});
