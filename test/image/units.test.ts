/** The pure pieces of the injection: patches as a stream, the overlay, 8.3 aliases, config text. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  applyPatchesToBuffer,
  BufferImageReader,
  createPatchTransform,
  SectorOverlay,
  type Patch,
} from '../../runner-agent/src/image/disk.js';
import { makeShortName, needsLongName, shortNameChecksum } from '../../runner-agent/src/image/fat.js';
import { restoreConfigText, rewriteConfigText } from '../../runner-agent/src/image/boot-config.js';
import { formatEnvFile, identifyKernel } from '../../runner-agent/src/image/inject.js';
import { gzipSync } from 'node:zlib';

describe('patches', () => {
  it('a patched stream equals the patched buffer, whatever the chunk boundaries', async () => {
    const image = randomBytes(64 * 1024 + 77);
    const patches: Patch[] = [
      { offset: 0, data: randomBytes(10) },
      { offset: 4095, data: randomBytes(3000) },
      { offset: 20_000, data: randomBytes(1) },
      { offset: image.length - 5, data: randomBytes(5) },
    ];
    for (const chunkSize of [1, 7, 512, 4096, 100_000]) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < image.length; at += chunkSize) chunks.push(image.subarray(at, at + chunkSize));
      const out: Buffer[] = [];
      await new Promise<void>((resolve, reject) => {
        Readable.from(chunks)
          .pipe(createPatchTransform(patches))
          .on('data', (d: Buffer) => out.push(d))
          .on('end', resolve)
          .on('error', reject);
      });
      expect(Buffer.concat(out).equals(applyPatchesToBuffer(image, patches)), `chunks of ${chunkSize}`).toBe(true);
    }
    // The source buffer is never written through.
    expect(image.subarray(0, 10).equals(patches[0]!.data)).toBe(false);
  });

  it('the overlay reads its own writes and coalesces adjacent sectors into one patch', async () => {
    const image = randomBytes(16 * 512);
    const overlay = new SectorOverlay(new BufferImageReader(image));
    const a = Buffer.alloc(1024, 1);
    const b = Buffer.alloc(512, 2);
    const c = Buffer.alloc(512, 3);
    overlay.write(1024, a);
    overlay.write(2048, b); // adjacent to a
    overlay.write(4096, c);
    expect((await overlay.read(1000, 100)).equals(Buffer.concat([image.subarray(1000, 1024), a.subarray(0, 76)]))).toBe(
      true,
    );
    const patches = overlay.patches();
    expect(patches.map((p) => [p.offset, p.data.length])).toEqual([
      [1024, 1536],
      [4096, 512],
    ]);
    expect(() => overlay.write(100, Buffer.alloc(512))).toThrow(/whole 512-byte sectors/);
  });
});

describe('8.3 aliases and long names', () => {
  it('needs a long name unless the name is already upper-case 8.3', () => {
    expect(needsLongName('BOOT.SCR')).toBe(false);
    expect(needsLongName('KERNEL8.IMG')).toBe(false);
    expect(needsLongName('boot.scr')).toBe(true);
    expect(needsLongName('u-boot.bin')).toBe(true);
    expect(needsLongName('rpi-flash.env')).toBe(true);
    expect(needsLongName('A.B.C')).toBe(true);
  });

  it('makes unique aliases with numeric tails as Windows and Linux do', () => {
    const s = (name: string, existing: string[] = []) =>
      makeShortName(name, new Set(existing)).short11.toString('latin1');
    expect(s('boot.scr')).toBe('BOOT    SCR');
    expect(s('u-boot.bin')).toBe('U-BOOT  BIN');
    expect(s('rpi-flash.env')).toBe('RPI-FL~1ENV');
    expect(s('rpi-flash.env', ['RPI-FL~1.ENV'])).toBe('RPI-FL~2ENV');
    expect(s('boot.scr', ['BOOT.SCR'])).toBe('BOOT~1  SCR');
    expect(s('my file+x.config')).toBe('MYFILE~1CON');
  });

  it('checksums the alias as the long-name entries carry it', () => {
    // Sum over "BOOT    SCR" with the rotate-right-and-add rule, computed by hand once.
    let sum = 0;
    for (const b of Buffer.from('BOOT    SCR', 'latin1')) sum = (((sum & 1) << 7) + (sum >> 1) + b) & 0xff;
    expect(shortNameChecksum(Buffer.from('BOOT    SCR', 'latin1'))).toBe(sum);
    expect(shortNameChecksum(Buffer.from('BOOT    SCR', 'latin1'))).not.toBe(
      shortNameChecksum(Buffer.from('BOOT    SCS', 'latin1')),
    );
  });
});

describe('config text', () => {
  it('rewrite then restore gives the original back, CRLF kept', () => {
    const original = 'a=1\r\nkernel=k.img\r\n[pi4]\r\ninitramfs x followkernel\r\nramfsfile=y\r\n';
    const rewritten = rewriteConfigText(original, {
      appendBlock: { arm64: true, enableUart: false, envName: 'e.env' },
    });
    expect(rewritten).toContain('\r\n#rpi-flash: kernel=k.img\r\n');
    expect(rewritten).toContain('\r\nkernel=u-boot.bin\r\narm_64bit=1\r\n# <<< rpi-flash\r\n');
    expect(rewritten).not.toContain('enable_uart');
    expect(rewritten.split('\r\n').every((l) => !l.includes('\n'))).toBe(true);
    expect(restoreConfigText(rewritten)).toEqual({ text: original, wasInjected: true });
    expect(restoreConfigText(original)).toEqual({ text: original, wasInjected: false });
  });
});

describe('env file and kernels', () => {
  it('writes env import -t text with backslashes escaped', () => {
    expect(formatEnvFile({ a: '1', b: 'x\\y z=w' })).toBe(
      '# rpi-flash: how stage 1 boots this image (read by U-Boot with env import -t)\na=1\nb=x\\\\y z=w\n',
    );
    expect(() => formatEnvFile({ a: 'x\ny' })).toThrow(/line break/);
  });

  it('recognises arm64 Images, zImages and gzip-compressed Images by their headers', () => {
    const image = randomBytes(4096);
    image.writeUInt32LE(0x644d5241, 56);
    const zimage = randomBytes(4096);
    zimage.writeUInt32LE(0x016f2818, 0x24);
    expect(identifyKernel(image)).toMatchObject({ arm64: true, compression: 'none' });
    expect(identifyKernel(zimage)).toMatchObject({ arm64: false, compression: 'none' });
    // Only the head of a big gzip'd kernel is read: it must still be recognised.
    const big = Buffer.concat([image, randomBytes(1024 * 1024)]);
    expect(identifyKernel(gzipSync(big).subarray(0, 64 * 1024))).toMatchObject({
      arm64: true,
      compression: 'gzip',
      format: 'gzip-compressed arm64 Image',
    });
    expect(identifyKernel(Buffer.from('not a kernel at all, just text'.repeat(10)))).toMatchObject({
      arm64: undefined,
    });
  });
});
