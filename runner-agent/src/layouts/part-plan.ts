/**
 * Which parts of an image a board writes, and their CRCs as served: shared by every layout that
 * writes a card part by part (stage2-flash.ts for U-Boot boards, ota.ts for running systems), so
 * both write the same byte ranges with the same checks.
 *
 * By default only the image's mapped ranges (store/mapped-ranges.ts), with the layout's patches
 * added to them: the card keeps what lies outside, as bmaptool leaves it. With `flash.writeZeros`,
 * every byte, and the stored CRCs serve.
 */
import { formatBytes } from '../../../src/protocol/units.js';
import { planMappedParts, planParts, type PartPlan } from '../board/stage2-script.js';
import type { ImageView } from '../staging/image-view.js';
import type { LayoutJob } from './layout.js';

export async function planImageWrites(
  job: LayoutJob,
  view: ImageView,
  partSize: number,
  log: (message: string) => void,
): Promise<{ plan: PartPlan[]; crcs: number[] }> {
  const { image, config } = job;
  if (config.flash.writeZeros) {
    const plan = planParts(image.imageSize, partSize);
    const stored = await job.storedPartCrcs(partSize);
    if (plan.length !== stored.length)
      throw new Error(`stored part CRCs (${stored.length}) do not match the plan (${plan.length} parts)`);
    return { plan, crcs: await view.servedPartCrcs(plan, stored) };
  }
  const mapped = await job.mappedRanges();
  const patched = view.patches.map((p) => ({ offset: p.offset, length: p.data.length }));
  const plan = planMappedParts([...mapped, ...patched], image.imageSize, partSize);
  const bytes = plan.reduce((sum, p) => sum + p.size, 0);
  log(
    `mapped: ${formatBytes(bytes)} of the ${formatBytes(image.imageSize)} image in ${plan.length} part(s); ` +
      'the card keeps what lies outside them (flash.writeZeros writes every byte)',
  );
  return { plan, crcs: await view.partCrcs(plan) };
}
