/**
 * Finding the test U-Boot and QEMU for the tests of test/qemu (DESIGN §5 step 3).
 *
 * In CI (`CI` set) a missing QEMU or U-Boot is a failure: `.ci/run` installs and builds them, and
 * a silently skipped rung would hide a broken flash path. On a developer machine the tests skip
 * and say how to get them.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, beforeEach } from 'vitest';
import { killAllQemuBoards, qemuAvailable } from './qemu-board.js';

const execFileAsync = promisify(execFile);

export const BUILD_SCRIPT = fileURLToPath(new URL('../../scripts/build-test-uboot.sh', import.meta.url));
export const HOW_TO_BUILD = 'bash scripts/build-test-uboot.sh';
/** A full build from source: about 1–3 minutes on 2 busy cores. */
export const BUILD_TIMEOUT_MS = 15 * 60_000;

export type TestUboot = { ok: true; ubootBin: string } | { ok: false; reason: string };

export const inCi = Boolean(process.env.CI);

/**
 * The U-Boot the script has built, without building (`--cached-only`). `RPI_FLASH_TEST_UBOOT`
 * names a u-boot.bin to use instead.
 */
export async function findTestUboot(): Promise<TestUboot> {
  const tools = await qemuAvailable();
  if (!tools.ok) return tools;
  if (process.env.RPI_FLASH_TEST_UBOOT) return { ok: true, ubootBin: process.env.RPI_FLASH_TEST_UBOOT };
  try {
    const { stdout } = await execFileAsync('bash', [BUILD_SCRIPT, '--cached-only']);
    return { ok: true, ubootBin: stdout.trim() };
  } catch {
    return { ok: false, reason: `the test U-Boot is not built; build it with: ${HOW_TO_BUILD}` };
  }
}

/** Runs the build script (a no-op when the build is cached) and returns the path of u-boot.bin. */
export async function buildTestUboot(): Promise<string> {
  try {
    const { stdout } = await execFileAsync('bash', [BUILD_SCRIPT], {
      timeout: BUILD_TIMEOUT_MS,
      maxBuffer: 64 * 1024 * 1024,
    });
    return stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${HOW_TO_BUILD} failed: ${e.message}\n${(e.stderr ?? '').slice(-4000)}`, { cause: err });
  }
}

/**
 * How a test file of test/qemu gates itself: `run` false means skip (developer machine without
 * QEMU or the build), with `title` saying why and how to fix it; `ubootBin()` (for beforeAll, with
 * BUILD_TIMEOUT_MS) returns the build, building it in CI and failing there if QEMU is missing.
 */
export async function qemuTestGate(
  name: string,
): Promise<{ run: boolean; title: string; ubootBin(): Promise<string> }> {
  const found = await findTestUboot();
  const run = found.ok || inCi;
  return {
    run,
    title: run || found.ok ? name : `${name} (skipped: ${found.reason})`,
    async ubootBin() {
      if (found.ok) return found.ubootBin;
      const tools = await qemuAvailable();
      if (!tools.ok) throw new Error(`CI needs QEMU for the U-Boot tests: ${tools.reason}`);
      return buildTestUboot();
    },
  };
}

/**
 * The hooks every real-U-Boot test file needs, registered inside its `describe`: the test U-Boot
 * built or reused once, a fresh work folder per test (`prepare` may fill it), and no QEMU left
 * running and no folder left behind after each test.
 */
export function useQemuWorkspace(
  gate: { ubootBin(): Promise<string> },
  o: { prefix: string; prepare?: (workDir: string) => Promise<void> },
): { readonly ubootBin: string; readonly workDir: string } {
  const state = { ubootBin: '', workDir: '' };
  beforeAll(async () => {
    state.ubootBin = await gate.ubootBin();
  }, BUILD_TIMEOUT_MS);
  beforeEach(async () => {
    state.workDir = await mkdtemp(join(tmpdir(), o.prefix));
    await o.prepare?.(state.workDir);
  });
  afterEach(async () => {
    await killAllQemuBoards();
    await rm(state.workDir, { recursive: true, force: true });
  });
  return state;
}
