/**
 * The TFTP window each board's U-Boot does best with, picked from what its own jobs measured
 * (`flash.tftpWindowSize: "auto"`). A window is the board's network card's business as much as the
 * server's: under QEMU a window of 8 moved parts 2–5× faster than lock-step, but a NIC that cannot
 * buffer a window loses blocks and U-Boot waits out a timeout per loss (seconds), so a window is
 * worth using only where it was measured to pay.
 *
 * Each job tries one window for all its parts. While a candidate has never been measured on the
 * board, the next job tries it (in WINDOW_CANDIDATES' order, lock-step first, so the first job runs
 * at U-Boot's own setting); then every job takes the fastest measured one. A job's rate is the
 * bytes of its part downloads that completed over the time all its part downloads took, failed ones
 * included: losses and retries pull a window's figure down. Each new figure is averaged with the
 * board's earlier ones for that window (half weight each), so a board that slows down is re-ranked.
 *
 * Kept per target in `<stateDir>/boards/<name>.tftp.json`; delete it to have a board measured
 * again (after changing its network adapter, say).
 */
import path from 'node:path';
import { readJsonRecord, writeJsonRecord } from './json-record.js';

/** The windows tried, in order. 16 is where QEMU's figures stopped improving; U-Boot's default is 1. */
export const WINDOW_CANDIDATES = [1, 4, 8, 16] as const;

/** Only figures from downloads this long count: a short part's time is mostly its request's round trip. */
export const MIN_MEASURED_BYTES = 1024 * 1024;

export interface WindowRate {
  /** The averaged download rate, MB/s of wire bytes. */
  mbps: number;
  /** Jobs that measured it. */
  jobs: number;
  /** The last of them, and when (ISO 8601). */
  job: string;
  seen: string;
}

/** What a board's jobs measured, by window. */
export type WindowRates = Partial<Record<number, WindowRate>>;

export interface WindowChoice {
  window: number;
  /** For the job's log: why this window, and what the others measured. */
  reason: string;
}

const describe = (rates: WindowRates) =>
  WINDOW_CANDIDATES.map((w) => `${w}: ${rates[w] ? `${rates[w].mbps.toFixed(1)} MB/s` : 'not measured'}`).join(', ');

/** The window a board's next job asks for. */
export function chooseWindow(rates: WindowRates): WindowChoice {
  const untried = WINDOW_CANDIDATES.find((w) => rates[w] === undefined);
  if (untried !== undefined)
    return { window: untried, reason: `measuring window ${untried} on this board (${describe(rates)})` };
  let best: number = WINDOW_CANDIDATES[0];
  for (const w of WINDOW_CANDIDATES) if (rates[w]!.mbps > rates[best]!.mbps) best = w;
  return { window: best, reason: `the fastest measured on this board (${describe(rates)})` };
}

/** One job's figure folded into the board's record: averaged with the earlier ones, half weight each. */
export function addMeasurement(
  rates: WindowRates,
  m: { window: number; mbps: number; job: string; seen: string },
): WindowRates {
  const earlier = rates[m.window];
  const mbps = earlier ? (earlier.mbps + m.mbps) / 2 : m.mbps;
  return { ...rates, [m.window]: { mbps, jobs: (earlier?.jobs ?? 0) + 1, job: m.job, seen: m.seen } };
}

/** The rate of one job's part downloads: completed bytes over the time all of them took. */
export function jobRate(t: { completedBytes: number; ms: number }): number | undefined {
  if (t.completedBytes < MIN_MEASURED_BYTES || t.ms <= 0) return undefined;
  return t.completedBytes / 1e6 / (t.ms / 1000);
}

export class WindowRatesStore {
  constructor(private readonly dir: string) {}

  private file(target: string): string {
    return path.join(this.dir, `${encodeURIComponent(target)}.tftp.json`);
  }

  /** The board's record; empty when it has none or it does not parse (then it is measured again). */
  async read(target: string): Promise<WindowRates> {
    const raw = await readJsonRecord(this.file(target));
    const rates: WindowRates = {};
    if (raw === undefined || typeof raw !== 'object' || raw === null) return rates;
    for (const w of WINDOW_CANDIDATES) {
      const r = (raw as Record<string, Partial<WindowRate> | undefined>)[String(w)];
      if (r && typeof r.mbps === 'number' && Number.isFinite(r.mbps) && r.mbps >= 0)
        rates[w] = { mbps: r.mbps, jobs: Number(r.jobs) || 1, job: String(r.job ?? ''), seen: String(r.seen ?? '') };
    }
    return rates;
  }

  record(target: string, rates: WindowRates): Promise<void> {
    return writeJsonRecord(this.dir, this.file(target), rates);
  }
}
