/**
 * The in-place update's reports (layout `ota`): the RAM system on the board reads beacons as
 * stage 2 does (beacons.ts: `<macdir>/<job>/<secret>/<message>` over TFTP), with stage 2's part
 * messages and these of its own, for the switch into RAM:
 *   stopped                           every other process is stopped (the board's sshd too);
 *                                     the pivot comes next. Keeps the quiet timer from counting
 *                                     the kill and the pivot as one silence
 *   switched-ro | switched-frozen     the board runs from RAM; its old root is read-only and
 *                                     detached (ro), or could not be remounted and is frozen
 *                                     (fsfreeze: it writes nothing more); writing may begin
 *   switch-failed-<step>              the switch failed before anything was written (step: pivot,
 *                                     remount); the board reboots into its untouched old system
 * The script generator builds them with `otaBeaconText`, the agent parses with `parseOtaBeacon`.
 */
import { parseBeacon, type Beacon } from './beacons.js';

export type SwitchStep = 'pivot' | 'remount';

export type OtaBeacon =
  | Extract<Beacon, { kind: 'start' | 'part-retry' | 'part-ok' | 'part-failed' | 'done' }>
  | { kind: 'stopped' }
  | { kind: 'switched'; oldRoot: 'ro' | 'frozen' }
  | { kind: 'switch-failed'; step: SwitchStep };

export const otaBeaconText = {
  stopped: () => 'stopped',
  switched: (oldRoot: 'ro' | 'frozen') => `switched-${oldRoot}`,
  switchFailed: (step: SwitchStep) => `switch-failed-${step}`,
};

const OTA_KINDS = new Set(['start', 'part-retry', 'part-ok', 'part-failed', 'done']);

/** The report a message names, or null for anything outside the OTA grammar. */
export function parseOtaBeacon(message: string): OtaBeacon | null {
  if (message === 'stopped') return { kind: 'stopped' };
  const switched = /^switched-(ro|frozen)$/.exec(message);
  if (switched) return { kind: 'switched', oldRoot: switched[1] as 'ro' | 'frozen' };
  const failed = /^switch-failed-(pivot|remount)$/.exec(message);
  if (failed) return { kind: 'switch-failed', step: failed[1] as SwitchStep };
  const b = parseBeacon(message);
  return b && OTA_KINDS.has(b.kind) ? (b as OtaBeacon) : null;
}
