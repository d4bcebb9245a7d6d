/**
 * Layout `inject` (the default): the image is written with U-Boot for the target's model, stage 1
 * (`boot.scr`) and an env file carried into its boot partition, so the board stays flashable over
 * the network after it boots the new system. The changes are patches over the stored image
 * (image/inject.ts plans them); nothing is copied.
 */
import { readFile } from 'node:fs/promises';
import { CodedError } from '../../../src/protocol/errors.js';
import type { Patch } from '../image/disk.js';
import { planInjection } from '../image/inject.js';
import { debianUbootPath, getPiModel, type PiModel } from '../image/models.js';
import type { Layout, LayoutJob } from './layout.js';
import { stage2Flash } from './stage2-flash.js';

export const inject: Layout = (job, board) =>
  stage2Flash(job, board, { layout: 'inject', patches: () => injectionPatches(job) });

/** U-Boot for the target's model, stage 1 and an env file, as patches to the image's boot partition. */
export async function injectionPatches(job: LayoutJob): Promise<Patch[]> {
  const { uboot } = job.config;
  const model = modelOf(job);
  const ubootPath = uboot.binaries[model.name] ?? debianUbootPath(model);
  const [ubootBin, bootScr] = await Promise.all([
    readLabFile(ubootPath, `the U-Boot build for ${model.name}`, model),
    readLabFile(uboot.bootScr, 'the stage-1 script', model),
  ]);
  const result = await planInjection(job.image.path, job.image.imageSize, { ubootBin, bootScr, model });
  return result.patches;
}

export function modelOf(job: LayoutJob): PiModel {
  const name = (job.target.model ?? job.config.uboot.defaultModel).toLowerCase();
  try {
    return getPiModel(name);
  } catch (err) {
    const why = (err as Error).message;
    throw new CodedError('LAB_MISCONFIGURED', `${job.target.name}: ${why} (set the model column, or use layout whole)`);
  }
}

export async function readLabFile(file: string, what: string, model: PiModel): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new CodedError(
      'LAB_MISCONFIGURED',
      `cannot read ${what} ${file}: ${why} (install Debian's u-boot-rpi or set ` +
        `uboot.binaries.${model.name} / uboot.bootScr in the config)`,
    );
  }
}
