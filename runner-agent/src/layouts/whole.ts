/**
 * Layout `whole`: the image is written to the card exactly as stored, every part. The board must
 * already run stage 1 from somewhere the image does not overwrite (or the image carries its own).
 */
import type { Layout } from './layout.js';
import { stage2Flash } from './stage2-flash.js';

export const whole: Layout = (job, board) => stage2Flash(job, board, { layout: 'whole' });
