/**
 * The image's block map (bmaptool's `.bmap`, which Yocto writes beside a `.wic`): with it the agent
 * writes only the blocks the image's build says hold data, checked against the image first. The
 * action only finds and reads the file; the agent parses and checks it.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { CodedError } from '../protocol/errors.js';
import { BMAP_MAX_BYTES } from '../protocol/messages.js';
import { formatBytes } from '../protocol/units.js';
import { Inputs } from './constants.js';
import type { ResolvedImage } from './image.js';
import type { BmapSetting } from './settings.js';

export interface FoundBmap {
  path: string;
  text: string;
}

const COMPRESSED_SUFFIX = /\.(gz|xz|zst)$/;

/**
 * Where `auto` looks: `<image>.bmap`, then the name without its compression suffix
 * (`core-image.wic.bmap` beside `core-image.wic.xz`), as bmaptool itself does. A downloaded
 * image has no folder to look in.
 */
function candidates(image: ResolvedImage): string[] {
  if (image.downloaded) return [];
  const names = [`${image.path}.bmap`];
  if (COMPRESSED_SUFFIX.test(image.path)) names.push(`${image.path.replace(COMPRESSED_SUFFIX, '')}.bmap`);
  return names;
}

async function isFile(file: string): Promise<boolean> {
  return stat(file).then(
    (s) => s.isFile(),
    () => false,
  );
}

export async function findBmap(
  setting: BmapSetting,
  image: ResolvedImage,
  workspace: string,
): Promise<FoundBmap | undefined> {
  if (setting.kind === 'none') return undefined;
  let file: string | undefined;
  if (setting.kind === 'file') {
    file = path.resolve(workspace, setting.path);
    if (!(await isFile(file))) throw new CodedError('INPUT_INVALID', `${Inputs.bmap}: no file at ${setting.path}`);
  } else {
    for (const candidate of candidates(image)) {
      if (await isFile(candidate)) {
        file = candidate;
        break;
      }
    }
    if (!file) return undefined;
  }
  const size = (await stat(file)).size;
  if (size > BMAP_MAX_BYTES)
    throw new CodedError(
      'INPUT_INVALID',
      `${Inputs.bmap}: ${file} is ${formatBytes(size)}, over the ${formatBytes(BMAP_MAX_BYTES)} a block map may have`,
    );
  return { path: file, text: await readFile(file, 'utf8') };
}
