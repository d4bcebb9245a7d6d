/**
 * Re-records test/fixtures/uboot-commands-hush-probe.expected: runs the probe script on the real
 * test U-Boot (2023.01, qemu_arm64 build from scripts/build-test-uboot.sh) under QEMU and keeps
 * the `P:` lines it prints. hush-probe.test.ts then holds the simulated shell to that output.
 *
 *   npx tsx test/sim/record-hush-probe.ts [path/to/u-boot.bin]   (default: RPI_FLASH_TEST_UBOOT
 *   or the cached build). Uses QEMU's own TFTP (slirp) to load the probe; no network outside QEMU.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url));
const ubootBin =
  process.argv[2] ??
  process.env.RPI_FLASH_TEST_UBOOT ??
  execFileSync(
    'bash',
    [fileURLToPath(new URL('../../scripts/build-test-uboot.sh', import.meta.url)), '--cached-only'],
    { encoding: 'utf8' },
  ).trim();

const work = mkdtempSync(path.join(tmpdir(), 'hush-probe-'));
try {
  const probe = readFileSync(path.join(fixtures, 'uboot-commands-hush-probe.txt'), 'utf8');
  writeFileSync(path.join(work, 'probe.scr'), buildScriptImage(probe, { name: 'hush probe' }));
  writeFileSync(path.join(work, 'sd.img'), '');
  truncateSync(path.join(work, 'sd.img'), 16 * 1024 * 1024);
  const env = {
    bootdelay: '0',
    ipaddr: '10.0.2.15',
    netmask: '255.255.255.0',
    serverip: '10.0.2.2',
    stdin: 'serial',
    stdout: 'serial',
    stderr: 'serial',
    bootcmd: 'tftpboot 0x40200000 probe.scr && source 0x40200000; poweroff',
  };
  writeFileSync(
    path.join(work, 'env.txt'),
    Object.entries(env)
      .map(([k, v]) => `${k}=${v}\n`)
      .join(''),
  );
  execFileSync('mkenvimage', ['-s', '0x40000', '-o', path.join(work, 'env.img'), path.join(work, 'env.txt')]);
  truncateSync(path.join(work, 'env.img'), 64 * 1024 * 1024);
  const args = [
    '-M',
    'virt',
    '-cpu',
    'cortex-a57',
    '-m',
    '1G',
    '-nographic',
    '-no-reboot',
    '-bios',
    ubootBin,
    '-netdev',
    `user,id=n0,tftp=${work}`,
    '-device',
    'virtio-net-device,netdev=n0',
    '-drive',
    `if=pflash,format=raw,unit=1,file=${path.join(work, 'env.img')}`,
  ];
  const output = await new Promise<string>((resolve, reject) => {
    const child = spawn('qemu-system-aarch64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
  const lines = output.split(/\r?\n/).filter((l) => l.startsWith('P:'));
  if (!lines.includes('P:end'))
    throw new Error(`the probe did not finish on the real U-Boot; console:\n${output.slice(-3000)}`);
  writeFileSync(path.join(fixtures, 'uboot-commands-hush-probe.expected'), lines.join('\n') + '\n');
  console.log(`recorded ${lines.length} lines from ${ubootBin}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
