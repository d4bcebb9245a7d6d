/**
 * What the seed-card QEMU tests share: the gate for the U-Boot build with `tftpput`
 * (bash scripts/build-test-uboot.sh --variant tftpput) — skipped on a developer machine without
 * it, built in CI, like qemuTestGate — and the seed card's script as a script image.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { qemuAvailable } from '../qemu/qemu-board.js';
import { BUILD_TIMEOUT_MS, inCi } from '../qemu/test-uboot.js';

const execFileAsync = promisify(execFile);
const BUILD_SCRIPT = fileURLToPath(new URL('../../scripts/build-test-uboot.sh', import.meta.url));
export const SEED_CARD_SCRIPT = fileURLToPath(new URL('../qemu/seed-card.cmd', import.meta.url));

export interface TftpputGate {
  run: boolean;
  title: string;
  ubootBin(): Promise<string>;
}

export async function tftpputUbootGate(name: string): Promise<TftpputGate> {
  const tools = await qemuAvailable();
  const cached = tools.ok
    ? await execFileAsync('bash', [BUILD_SCRIPT, '--cached-only', '--variant', 'tftpput']).then(
        (r) => r.stdout.trim(),
        () => undefined,
      )
    : undefined;
  const run = cached !== undefined || inCi;
  const why = tools.ok ? 'build it with: bash scripts/build-test-uboot.sh --variant tftpput' : tools.reason;
  return {
    run,
    title: run ? name : `${name} (skipped: ${why})`,
    async ubootBin() {
      if (cached) return cached;
      if (!tools.ok) throw new Error(`CI needs QEMU for the U-Boot tests: ${tools.reason}`);
      const { stdout } = await execFileAsync('bash', [BUILD_SCRIPT, '--variant', 'tftpput'], {
        timeout: BUILD_TIMEOUT_MS,
        maxBuffer: 64 * 1024 * 1024,
      });
      return stdout.trim();
    },
  };
}

/** test/qemu/seed-card.cmd as a legacy script image (what the card's U-Boot `source`s). */
export async function writeSeedCardScript(file: string): Promise<void> {
  await execFileAsync('mkimage', [
    '-A',
    'arm64',
    '-O',
    'linux',
    '-T',
    'script',
    '-C',
    'none',
    '-n',
    'seed card',
    '-d',
    SEED_CARD_SCRIPT,
    file,
  ]);
}
