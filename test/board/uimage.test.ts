import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  buildScriptImage,
  parseScriptImage,
  parseScriptImageHeader,
  UIMAGE_HEADER_SIZE,
} from '../../runner-agent/src/board/uimage.js';

const SCRIPT = "echo hello\nsetenv x 'a b'; run x || echo failed\n# a comment\nreset\n";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'uimage-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function mkimage(script: string, name: string, epoch: number): Buffer {
  const src = path.join(dir, 'script.txt');
  const out = path.join(dir, 'mk.scr');
  writeFileSync(src, script);
  execFileSync('mkimage', ['-A', 'arm', '-O', 'linux', '-T', 'script', '-C', 'none', '-n', name, '-d', src, out], {
    env: { ...process.env, SOURCE_DATE_EPOCH: String(epoch) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return readFileSync(out);
}

function mkimageList(image: Buffer): string {
  const file = path.join(dir, 'ours.scr');
  writeFileSync(file, image);
  return execFileSync('mkimage', ['-l', file], { encoding: 'utf8' });
}

describe('buildScriptImage', () => {
  it('is byte for byte what mkimage writes for the same script, name and time', () => {
    const epoch = 1_700_000_000;
    const ours = buildScriptImage(SCRIPT, { name: 'rpi-flash test', timestamp: epoch });
    expect(ours.equals(mkimage(SCRIPT, 'rpi-flash test', epoch))).toBe(true);
  });

  it('matches mkimage for a name longer than 32 bytes (truncated, no terminator)', () => {
    const name = 'a-name-that-is-longer-than-thirty-two-bytes';
    const ours = buildScriptImage('true\n', { name, timestamp: 5 });
    expect(ours.equals(mkimage('true\n', name, 5))).toBe(true);
    expect(parseScriptImage(ours).name).toBe(name.slice(0, 32));
  });

  it('is listed by mkimage -l as a script with our name and size', () => {
    const image = buildScriptImage(SCRIPT, { name: 'rpi-flash job42' });
    const listing = mkimageList(image);
    expect(listing).toMatch(/Image Name:\s+rpi-flash job42/);
    expect(listing).toMatch(/Image Type:\s+ARM Linux Script \(uncompressed\)/);
    expect(listing).toContain(`Data Size:    ${SCRIPT.length + 8} Bytes`);
    expect(listing).toMatch(new RegExp(`Image 0:\\s+${SCRIPT.length} Bytes`));
  });
});

describe('parseScriptImage', () => {
  it('reads back an image made by the real mkimage', () => {
    const parsed = parseScriptImage(mkimage(SCRIPT, 'from mkimage', 1234));
    expect(parsed).toEqual({ name: 'from mkimage', script: SCRIPT });
  });

  it('round-trips our own images', () => {
    expect(parseScriptImage(buildScriptImage(SCRIPT, { name: 'x' })).script).toBe(SCRIPT);
  });

  it('rejects a bad magic number', () => {
    const image = buildScriptImage(SCRIPT);
    image[0] = 0;
    expect(() => parseScriptImage(image)).toThrow(/bad magic 0x00051956/);
  });

  it('rejects a damaged header', () => {
    const image = buildScriptImage(SCRIPT, { name: 'x' });
    image[40]! ^= 1; // inside the name
    expect(() => parseScriptImage(image)).toThrow(/header CRC mismatch/);
  });

  it('rejects damaged data', () => {
    const image = buildScriptImage(SCRIPT);
    image[UIMAGE_HEADER_SIZE + 10]! ^= 1;
    expect(() => parseScriptImage(image)).toThrow(/data CRC mismatch/);
  });

  it('rejects a truncated image and a lone header', () => {
    const image = buildScriptImage(SCRIPT);
    expect(() => parseScriptImage(image.subarray(0, image.length - 1))).toThrow(/truncated/);
    expect(() => parseScriptImage(image.subarray(0, 20))).toThrow(/too short/);
  });

  it('rejects an image that is not a script', () => {
    const src = path.join(dir, 'kernel');
    const out = path.join(dir, 'kernel.img');
    writeFileSync(src, Buffer.alloc(100, 7));
    execFileSync(
      'mkimage',
      ['-A', 'arm', '-O', 'linux', '-T', 'kernel', '-C', 'none', '-a', '0', '-e', '0', '-n', 'k', '-d', src, out],
      { stdio: 'ignore' },
    );
    expect(() => parseScriptImage(readFileSync(out))).toThrow(/not a script image \(type 2/);
  });

  it('exposes the header fields', () => {
    const h = parseScriptImageHeader(buildScriptImage('true\n', { name: 'n', timestamp: 77 }));
    expect(h).toMatchObject({ name: 'n', timestamp: 77, dataSize: 13, os: 5, arch: 2, type: 6, comp: 0 });
  });
});
