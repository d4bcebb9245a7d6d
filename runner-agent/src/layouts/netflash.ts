/**
 * Layout `netflash`: flash a board whose card is blank, corrupt or missing, with no first card made
 * by hand. The board's own firmware boots from the network (its boot order includes it; a card
 * with nothing bootable falls through to it by itself), and the agent serves it what the `inject`
 * layout would write: the image's boot partition with U-Boot for the board's model, stage 1 and
 * the env file laid over it, `config.txt` pointing at U-Boot. U-Boot's distro boot finds no system
 * on the card and asks DHCP and TFTP for `boot.scr.uimg` (stage 1, served at the root to the
 * board's address); stage 1 fetches the job's `flash.scr` and stage 2 writes the card as usual —
 * the same injected image, so the flashed board stays flashable over the network after it boots.
 *
 * The firmware files are the patched view's (staging/image-view.ts): nothing is extracted or copied,
 * and they are withdrawn with the job's other files when the board is done.
 */
import { STAGE1_FILE } from '../image/inject.js';
import { BootPartition, firmwareFiles } from '../netboot/boot-folder.js';
import { injectionPatches, modelOf, readLabFile } from './inject.js';
import type { Layout } from './layout.js';
import { stage2Flash } from './stage2-flash.js';

/** What U-Boot's distro boot fetches over DHCP/TFTP (`boot_script_dhcp` in Debian's Pi builds). */
export const DISTRO_DHCP_SCRIPT = 'boot.scr.uimg';

export const netflash: Layout = (job, board) =>
  stage2Flash(job, board, {
    layout: 'netflash',
    patches: () => injectionPatches(job),
    firmware: async (view) => {
      const model = modelOf(job);
      const stage1 = await readLabFile(job.config.uboot.bootScr, 'the stage-1 script', model);
      const partition = await BootPartition.read(view);
      board.log('info', `netflash: serving the injected boot partition (${STAGE1_FILE} also as ${DISTRO_DHCP_SCRIPT})`);
      return firmwareFiles(job.target, partition, { overrides: { [DISTRO_DHCP_SCRIPT]: stage1 } });
    },
  });
