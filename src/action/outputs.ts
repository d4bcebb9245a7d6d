/**
 * What a finished (or failed) job leaves behind: step outputs, a small job-summary table, and on
 * failure one titled error annotation naming the phase and the code.
 */
import * as core from '@actions/core';
import { messageOf, type ErrorCode } from '../protocol/errors.js';
import type { CardState, JobMethod, PartReport, TargetInfo } from '../protocol/messages.js';
import { Outputs, type OutputName } from './constants.js';
import { formatBytes } from '../protocol/units.js';
import { PHASE_TITLES, type StoryPhase } from './story.js';

export type ResultWord = 'success' | 'failure' | 'cancelled';

export interface JobOutcome {
  result: ResultWord;
  /** `OK` or the failure's code, from the one table in src/protocol/errors.ts. */
  code: ErrorCode;
  message: string;
  /** The phase that was running when the job failed. */
  phase?: StoryPhase;
  /** The `target` input as given. */
  targetSpec: string;
  /** What the job did with the image (the agent's result says; else what was asked). */
  method?: JobMethod;
  /** The target as the agent knows it, once leased. */
  target?: TargetInfo;
  /** The agent's name, once connected (an agent that does not say has none). */
  agent?: string;
  image?: { name: string; source: string; sha256: string; size: number; compression: string; imageSize?: number };
  jobId?: string;
  bytesWritten?: number;
  /** From the agent's result: what the board was to write and what travelled to it. */
  mapping?: { imageSize: number; mappedBytes: number; wireBytes: number };
  uploadSkipped?: boolean;
  timings: Partial<Record<StoryPhase, number>>;
  parts?: PartReport[];
  /** What the board's card holds: the agent's result says, or (`cardEstimated`) the action judged it when none came. */
  card?: CardState;
  cardEstimated?: boolean;
}

/** The summary's words for the card: the agent's word, or the action's estimate when no result came. */
function cardText(card: CardState, estimated: boolean): string {
  const words: Record<CardState, string> = {
    untouched: 'untouched: nothing was written',
    partial: `${estimated ? 'may be ' : ''}partly written: it may not boot until it is flashed again`,
    written: 'holds the image',
  };
  return estimated ? `${words[card]} (estimated from the last phase the action saw)` : words[card];
}

/** The summary's words for what the job did with the image. */
const METHOD_TEXT: Record<JobMethod, string> = {
  flash: 'flash: the image was written to the card',
  netboot: 'netboot: booted from the agent over the network (root over NBD), nothing written to the card',
};

/** The phases that make up "flashing": from staging the job to the verified card. */
const FLASH_PHASES: StoryPhase[] = ['stage', 'reset', 'transfer', 'verify'];

function seconds(value: number | undefined): string {
  return value === undefined ? '' : value.toFixed(1);
}

/** Every output's value; empty strings for what the job never got to. */
export function outputValues(outcome: JobOutcome): Record<OutputName, string> {
  const flashRan = FLASH_PHASES.some((p) => outcome.timings[p] !== undefined);
  const flashSeconds = FLASH_PHASES.reduce((sum, p) => sum + (outcome.timings[p] ?? 0), 0);
  return {
    [Outputs.result]: outcome.result,
    [Outputs.resultCode]: outcome.code,
    [Outputs.jobId]: outcome.jobId ?? '',
    [Outputs.targetName]: outcome.target?.name ?? '',
    [Outputs.targetIp]: outcome.target?.ip ?? '',
    [Outputs.targetMac]: outcome.target?.mac ?? '',
    [Outputs.board]: outcome.target?.name ?? '',
    [Outputs.agent]: outcome.agent ?? '',
    [Outputs.imageSha256]: outcome.image?.sha256 ?? '',
    [Outputs.bytesWritten]: outcome.bytesWritten === undefined ? '' : String(outcome.bytesWritten),
    [Outputs.flashSeconds]: flashRan ? seconds(flashSeconds) : '',
    [Outputs.bootSeconds]: seconds(outcome.timings.boot),
  };
}

export function setJobOutputs(
  outcome: JobOutcome,
  setOutput: (name: string, value: string) => void = core.setOutput,
): void {
  for (const [name, value] of Object.entries(outputValues(outcome))) setOutput(name, value);
}

/** The annotation's title names the phase and code, so the run's overview page says what broke. */
export function failureTitle(outcome: JobOutcome): string {
  const where = outcome.phase ? ` during ${outcome.phase}` : '';
  return `rpi-flash ${outcome.result === 'cancelled' ? 'cancelled' : 'failed'}${where}: ${outcome.code}`;
}

export function annotateFailure(
  outcome: JobOutcome,
  error: (message: string, properties: core.AnnotationProperties) => void = core.error,
): void {
  if (outcome.result === 'success') return;
  error(outcome.message, { title: failureTitle(outcome) });
}

function rate(bytes: number | undefined, secs: number | undefined): string {
  if (!bytes || !secs) return '';
  return `${(bytes / secs / 1e6).toFixed(1)} MB/s`;
}

/** Rows of the summary table: [label, value]. */
export function summaryRows(outcome: JobOutcome): [string, string][] {
  const rows: [string, string][] = [];
  const resultText =
    outcome.result === 'success'
      ? '✅ success'
      : `${outcome.result === 'cancelled' ? '⏹️' : '❌'} ${outcome.result} (${outcome.code})`;
  rows.push(['Result', resultText]);
  if (outcome.result !== 'success') rows.push(['Message', outcome.message]);
  const target = outcome.target;
  rows.push([
    'Target',
    target
      ? `${target.name} (${target.ip}, ${target.mac}${target.model ? `, ${target.model}` : ''})`
      : outcome.targetSpec,
  ]);
  if (outcome.agent) rows.push(['Agent', outcome.agent]);
  if (outcome.method) rows.push(['Method', METHOD_TEXT[outcome.method]]);
  if (outcome.jobId) rows.push(['Job', outcome.jobId]);
  const image = outcome.image;
  if (image) {
    const unpacked =
      image.imageSize !== undefined && image.compression !== 'none' ? `, ${formatBytes(image.imageSize)} unpacked` : '';
    rows.push(['Image', `${image.source} (${formatBytes(image.size)}, ${image.compression}${unpacked})`]);
    rows.push(['sha256', image.sha256]);
  }
  if (outcome.bytesWritten !== undefined)
    rows.push(['Bytes written', `${outcome.bytesWritten} (${formatBytes(outcome.bytesWritten)})`]);
  const mapping = outcome.mapping;
  if (mapping) {
    const share = mapping.imageSize > 0 ? ` (${((100 * mapping.mappedBytes) / mapping.imageSize).toFixed(1)} %)` : '';
    rows.push([
      'Mapped / image',
      `${formatBytes(mapping.mappedBytes)} of ${formatBytes(mapping.imageSize)}${share}: ` +
        'the rest was left as it was on the card',
    ]);
    rows.push(['Sent to the board', `${mapping.wireBytes} (${formatBytes(mapping.wireBytes)})`]);
  }
  if (outcome.card !== undefined && outcome.result !== 'success')
    rows.push(['Card', cardText(outcome.card, outcome.cardEstimated === true)]);
  for (const phase of Object.keys(PHASE_TITLES) as StoryPhase[]) {
    const secs = outcome.timings[phase];
    if (secs === undefined) continue;
    let extra = '';
    if (phase === 'upload')
      extra = outcome.uploadSkipped ? ' (skipped: the agent already had it)' : rate(image?.size, secs);
    if (phase === 'transfer') extra = rate(outcome.bytesWritten, secs);
    rows.push([PHASE_TITLES[phase], `${secs.toFixed(1)} s${extra && !extra.startsWith(' ') ? `, ${extra}` : extra}`]);
  }
  if (outcome.parts && outcome.parts.length > 0) {
    const ok = outcome.parts.filter((p) => p.status === 'ok').length;
    const retries = outcome.parts.reduce((n, p) => n + p.retries, 0);
    rows.push(['Parts', `${ok}/${outcome.parts.length} verified${retries > 0 ? `, ${retries} retries` : ''}`]);
  }
  return rows;
}

/**
 * Appends the job's table to the step summary. Best-effort: outside Actions (or with an unwritable
 * summary file) it logs why and returns false rather than failing a job that otherwise worked.
 */
export async function writeJobSummary(
  outcome: JobOutcome,
  summary: typeof core.summary = core.summary,
): Promise<boolean> {
  try {
    const heading = `rpi-flash: ${outcome.target?.name ?? outcome.targetSpec}`;
    await summary
      .addHeading(heading, 3)
      .addTable([
        [
          { data: 'Item', header: true },
          { data: 'Value', header: true },
        ],
        ...summaryRows(outcome).map(([label, value]) => [label, escapeHtml(value)]),
      ])
      .write();
    return true;
  } catch (err) {
    summary.emptyBuffer();
    core.info(`(job summary not written: ${messageOf(err)})`);
    return false;
  }
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!);
}
