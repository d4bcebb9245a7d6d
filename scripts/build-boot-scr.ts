/**
 * Builds stage 1's script image `uboot/boot.scr` from `uboot/boot.cmd` (`npm run build:uboot`).
 *
 * The image is what `mkimage -A arm -O linux -T script -C none -n 'rpi-flash stage 1' -d boot.cmd`
 * writes, made by the agent's own `buildScriptImage`, with a fixed timestamp so the committed file
 * is reproducible: a test rebuilds it and fails when boot.cmd changed without a rebuild.
 *
 * Usage: tsx scripts/build-boot-scr.ts [--check]   (--check: exit 1 when boot.scr is stale)
 */
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { buildScriptImage } from '../runner-agent/src/board/uimage.js';

export const STAGE1_CMD = fileURLToPath(new URL('../uboot/boot.cmd', import.meta.url));
export const STAGE1_SCR = fileURLToPath(new URL('../uboot/boot.scr', import.meta.url));
export const STAGE1_IMAGE_NAME = 'rpi-flash stage 1';
/** ih_time of the committed image: fixed, so the bytes depend on boot.cmd alone. */
export const STAGE1_TIMESTAMP = 0;

/** The script image of a stage-1 source text. */
export function buildStage1Image(source: string): Buffer {
  return buildScriptImage(source, { name: STAGE1_IMAGE_NAME, timestamp: STAGE1_TIMESTAMP });
}

/** Whether uboot/boot.scr is exactly what uboot/boot.cmd builds. */
export function stage1ImageInSync(): boolean {
  if (!existsSync(STAGE1_SCR)) return false;
  return readFileSync(STAGE1_SCR).equals(buildStage1Image(readFileSync(STAGE1_CMD, 'utf8')));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv.includes('--check')) {
    if (!stage1ImageInSync()) {
      console.error('uboot/boot.scr is stale: run npm run build:uboot and commit it');
      process.exit(1);
    }
    console.log('uboot/boot.scr is in sync with uboot/boot.cmd');
  } else {
    const image = buildStage1Image(readFileSync(STAGE1_CMD, 'utf8'));
    writeFileSync(STAGE1_SCR, image);
    console.log(`wrote uboot/boot.scr (${image.length} bytes)`);
  }
}
