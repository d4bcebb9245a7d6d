/**
 * The layouts the agent knows, by the name the targets database's `layout` column (and the
 * config's `defaultLayout`) gives. Adding a layout is one file in this folder and one line here.
 */
import { inject } from './inject.js';
import type { Layout } from './layout.js';
import { netboot } from './netboot.js';
import { netflash } from './netflash.js';
import { ota } from './ota.js';
import { seed } from './seed.js';
import { whole } from './whole.js';

export type LayoutRegistry = Readonly<Record<string, Layout>>;

/** The layout a job with `method: netboot` runs, whatever its target's own layout. */
export const NETBOOT_LAYOUT = 'netboot';

export const builtinLayouts: LayoutRegistry = {
  inject,
  whole,
  seed,
  netflash,
  [NETBOOT_LAYOUT]: netboot,
  ota,
};
