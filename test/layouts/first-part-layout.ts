/**
 * A layout written the way docs/architecture.md says to add one: this file and one registry line
 * (in the test, a registry that adds it to the built-in ones). It has the board write only the
 * image's first part — the smallest change to what a layout decides that still runs every phase.
 */
import type { Layout } from '../../runner-agent/src/layouts/layout.js';
import { stage2Flash } from '../../runner-agent/src/layouts/stage2-flash.js';

export const firstPart: Layout = (job, board) =>
  stage2Flash(job, board, { layout: 'first-part', selectParts: (plan) => plan.slice(0, 1) });
