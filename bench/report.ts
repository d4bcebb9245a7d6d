/**
 * What the QEMU benches share to read their options and print their figures: `--name=value`
 * options, the load average beside each run (the figures are noisy on a busy machine) and tables
 * with right-aligned columns.
 */
import { loadavg } from 'node:os';

/** The value of `--name=value` (or '' for a bare `--name`), undefined when absent. */
export function option(name: string): string | undefined {
  const arg = process.argv.find((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  return arg === undefined ? undefined : arg.slice(name.length + 3);
}

/** A positive number option (a whole one when `integer`), or `fallback` when absent. */
export function numberOption(name: string, fallback: number, integer = false): number {
  const raw = option(name);
  const n = raw === undefined ? fallback : Number(raw);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n)))
    throw new Error(`--${name} must be a positive ${integer ? 'whole ' : ''}number, got ${raw}`);
  return n;
}

/** The 1, 5 and 15 minute load averages. */
export const loadAverage = (): string =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');

/** Prints rows (the first is the heading) with every column right-aligned to its widest cell. */
export function printColumns(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  for (const row of rows) console.log(row.map((cell, i) => cell.padStart(widths[i]!)).join('  '));
}
