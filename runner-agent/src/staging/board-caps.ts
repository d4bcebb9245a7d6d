/**
 * What a board's U-Boot can do, as the board itself showed it: kept per target in
 * `<stateDir>/boards/<name>.caps.json` (json-record.ts: a crash leaves the old record or the new
 * one). Today one capability: `unzip`, which lets parts travel gzip'd (layouts/stage2-flash.ts).
 * The agent never guesses it: the model's Debian build must have the command (`modelHasUnzip`)
 * and the board must have inflated the stage-2 script's probe stream (beacon `caps-unzip`);
 * delete the file to have a board probed again (after changing its U-Boot).
 */
import path from 'node:path';
import { readJsonRecord, writeJsonRecord } from './json-record.js';
// Which models' builds have unzip is the model table's (image/models.ts); re-exported for stage 2.
export { modelHasUnzip } from '../image/models.js';

export interface BoardCaps {
  /** The board's U-Boot inflated the probe (true), or was asked and did not (false). */
  unzip: boolean;
  /** When the board showed it (ISO 8601), and under which job. */
  seen: string;
  job: string;
}

export class BoardCapsStore {
  constructor(private readonly dir: string) {}

  private file(target: string): string {
    // Target names are path-safe already (targets/database.ts); encode anyway: this is a path.
    return path.join(this.dir, `${encodeURIComponent(target)}.caps.json`);
  }

  /** The target's record; undefined when it has none or it does not parse (then it is probed again). */
  async read(target: string): Promise<BoardCaps | undefined> {
    const raw = (await readJsonRecord(this.file(target))) as Partial<BoardCaps> | null | undefined;
    if (typeof raw?.unzip !== 'boolean') return undefined;
    return { unzip: raw.unzip, seen: String(raw.seen ?? ''), job: String(raw.job ?? '') };
  }

  record(target: string, caps: BoardCaps): Promise<void> {
    return writeJsonRecord(this.dir, this.file(target), caps);
  }
}
