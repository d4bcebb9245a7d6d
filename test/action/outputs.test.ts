import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as core from '@actions/core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  annotateFailure,
  failureTitle,
  outputValues,
  setJobOutputs,
  summaryRows,
  writeJobSummary,
  type JobOutcome,
} from '../../src/action/outputs.js';
import { cardAsSeen, cardAsSeenSentence, outcomeOfError, outcomeOfResult } from '../../src/action/outcome.js';
import type { StoryPhase } from '../../src/action/story.js';

const success: JobOutcome = {
  result: 'success',
  code: 'OK',
  message: 'flashed and booted',
  targetSpec: 'pi4-03',
  target: { name: 'pi4-03', ip: '10.0.0.43', mac: 'dc:a6:32:01:02:03', model: 'Pi 4B' },
  agent: 'lab-a',
  image: {
    name: 'sdcard.img.xz',
    source: 'out/sdcard.img.xz',
    sha256: 'ab'.repeat(32),
    size: 300 * 1024 * 1024,
    compression: 'xz',
    imageSize: 2 * 1024 ** 3,
  },
  jobId: 'k3x9qa',
  bytesWritten: 2 * 1024 ** 3,
  uploadSkipped: false,
  timings: { connect: 0.2, queue: 0, upload: 3, stage: 0.5, reset: 1, transfer: 40, verify: 2.5, boot: 18.25 },
  parts: [
    { part: 1, offset: 0, size: 1024 ** 3, crc32: '1', status: 'ok', retries: 0 },
    { part: 2, offset: 1024 ** 3, size: 1024 ** 3, crc32: '2', status: 'ok', retries: 1 },
  ],
};

const failure: JobOutcome = {
  result: 'failure',
  code: 'BOARD_NO_SHOW',
  message: 'the board never fetched its flash script',
  phase: 'transfer',
  targetSpec: 'pi4-03',
  timings: { connect: 0.1 },
};

/** Parses GitHub's `name<<delimiter` file-command format back into name → value. */
function readOutputFile(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = readFileSync(file, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^([^<]+)<<(.+)$/.exec(lines[i]!);
    if (!m) continue;
    const value: string[] = [];
    while (lines[++i] !== m[2]) value.push(lines[i]!);
    out[m[1]!] = value.join('\n');
  }
  return out;
}

describe('outputs', () => {
  let dir: string;
  const saved = { out: process.env.GITHUB_OUTPUT, summary: process.env.GITHUB_STEP_SUMMARY };
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'outputs-'));
    // core.summary remembers the summary path after first use: one file for this whole test file.
    process.env.GITHUB_STEP_SUMMARY = path.join(dir, 'summary.md');
  });
  beforeEach(() => {
    process.env.GITHUB_OUTPUT = path.join(dir, 'output');
    writeFileSync(process.env.GITHUB_OUTPUT, '');
    writeFileSync(process.env.GITHUB_STEP_SUMMARY!, '');
  });
  afterEach(() => vi.restoreAllMocks());
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
    for (const [key, value] of [
      ['GITHUB_OUTPUT', saved.out],
      ['GITHUB_STEP_SUMMARY', saved.summary],
    ] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  });

  it('writes every output to GITHUB_OUTPUT', () => {
    setJobOutputs(success);
    expect(readOutputFile(process.env.GITHUB_OUTPUT!)).toEqual({
      result: 'success',
      'result-code': 'OK',
      'job-id': 'k3x9qa',
      'target-name': 'pi4-03',
      'target-ip': '10.0.0.43',
      'target-mac': 'dc:a6:32:01:02:03',
      board: 'pi4-03',
      agent: 'lab-a',
      'image-sha256': 'ab'.repeat(32),
      'bytes-written': String(2 * 1024 ** 3),
      'flash-seconds': '44.0',
      'boot-seconds': '18.3',
    });
  });

  it('leaves what the job never reached empty', () => {
    expect(outputValues(failure)).toMatchObject({
      result: 'failure',
      'result-code': 'BOARD_NO_SHOW',
      'target-ip': '',
      board: '',
      'bytes-written': '',
      'flash-seconds': '',
      'boot-seconds': '',
    });
  });

  it('writes a summary table with timings and rates to GITHUB_STEP_SUMMARY', async () => {
    expect(await writeJobSummary(success)).toBe(true);
    const html = readFileSync(process.env.GITHUB_STEP_SUMMARY!, 'utf8');
    expect(html).toContain('<h3>rpi-flash: pi4-03</h3>');
    expect(html).toContain('<tr><td>Result</td><td>✅ success</td></tr>');
    expect(html).toContain('<td>pi4-03 (10.0.0.43, dc:a6:32:01:02:03, Pi 4B)</td>');
    expect(html).toContain(`<td>${'ab'.repeat(32)}</td>`);
    expect(html).toContain('<td>Upload the image</td><td>3.0 s, 104.9 MB/s</td>');
    expect(html).toContain('<td>Transfer and write (board)</td><td>40.0 s, 53.7 MB/s</td>');
    expect(html).toContain('<td>Parts</td><td>2/2 verified, 1 retries</td>');
    expect(html).toContain('out/sdcard.img.xz (300.0 MiB, xz, 2.0 GiB unpacked)');
  });

  it('escapes what the agent said before putting it in HTML', () => {
    const rows = summaryRows({ ...failure, message: '<script>x</script>' });
    expect(rows).toContainEqual(['Message', '<script>x</script>']);
  });

  it('does not fail when there is no summary file', async () => {
    // A fresh Summary (the shared one caches the path it checked first), pointed at a missing file.
    const fresh = new (core.summary.constructor as new () => typeof core.summary)();
    const written: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation(
      (chunk: string | Uint8Array) => written.push(String(chunk)) > 0,
    );
    const savedPath = process.env.GITHUB_STEP_SUMMARY;
    process.env.GITHUB_STEP_SUMMARY = path.join(dir, 'missing', 'summary.md');
    try {
      expect(await writeJobSummary(success, fresh)).toBe(false);
    } finally {
      process.env.GITHUB_STEP_SUMMARY = savedPath;
    }
    expect(written.join('')).toContain('(job summary not written: Unable to access summary file');
    expect(fresh.stringify()).toBe(''); // the half-built table is dropped, not left for a later write
  });

  it('annotates a failure with a title naming the phase and the code', () => {
    const calls: [string, core.AnnotationProperties][] = [];
    annotateFailure(failure, (message, props) => calls.push([message, props]));
    annotateFailure(success, (message, props) => calls.push([message, props]));
    expect(calls).toEqual([
      ['the board never fetched its flash script', { title: 'rpi-flash failed during transfer: BOARD_NO_SHOW' }],
    ]);
    expect(failureTitle({ ...failure, result: 'cancelled', code: 'CANCELLED', phase: 'upload' })).toBe(
      'rpi-flash cancelled during upload: CANCELLED',
    );
  });
});

describe('the card in the outcome', () => {
  const run = { targetSpec: 'pi4-03', timings: {} };

  it('is judged from the last phase the action saw when no result came: nothing written before the transfer', () => {
    expect(['connect', 'queue', 'upload', undefined].map((p) => cardAsSeen(p as StoryPhase | undefined))).toEqual([
      undefined,
      undefined,
      undefined,
      undefined,
    ]);
    expect((['stage', 'reset', 'transfer', 'verify', 'boot'] as const).map((p) => cardAsSeen(p))).toEqual([
      'untouched',
      'untouched',
      'partial',
      'written',
      'written',
    ]);
    // A network boot writes no card, whatever phase it was in.
    expect((['stage', 'reset', 'transfer', 'verify', 'boot'] as const).map((p) => cardAsSeen(p, 'netboot'))).toEqual([
      'untouched',
      'untouched',
      'untouched',
      'untouched',
      'untouched',
    ]);
    expect(cardAsSeenSentence('transfer')).toBe(
      "the board's card may be partly written (the job was in transfer when the action last heard from the agent): " +
        'it may not boot until it is flashed again',
    );
  });

  it("takes the agent's word when its result came, else the estimate, and the summary says which", () => {
    const lost = outcomeOfError({ ...run, lastPhase: 'transfer' }, new Error('gone'), false);
    expect(lost).toMatchObject({ card: 'partial', cardEstimated: true });
    expect(summaryRows(lost)).toContainEqual([
      'Card',
      'may be partly written: it may not boot until it is flashed again (estimated from the last phase the action saw)',
    ]);
    const early = outcomeOfError({ ...run, lastPhase: 'upload' }, new Error('no space'), false);
    expect(early.card).toBeUndefined();
    expect(summaryRows(early).map(([label]) => label)).not.toContain('Card');

    const result = {
      ok: false,
      code: 'BOARD_TIMEOUT' as const,
      message: 'quiet',
      job: 'j',
      target: { name: 'pi4-03', mac: 'dc:a6:32:01:02:03', ip: '10.0.0.43' },
      sha256: 'ab'.repeat(32),
      bytesWritten: 0,
      card: 'untouched' as const,
      timings: { transfer: 1 },
      parts: [],
    };
    const failed = outcomeOfResult({ ...run, lastPhase: 'transfer' }, result);
    expect(failed).toMatchObject({ card: 'untouched' });
    expect(failed.cardEstimated).toBeUndefined();
    expect(summaryRows(failed)).toContainEqual(['Card', 'untouched: nothing was written']);
    expect(summaryRows(outcomeOfResult(run, { ...result, ok: true, code: 'OK', card: 'written' }))).not.toContainEqual(
      expect.arrayContaining(['Card']),
    );
  });

  it("says which method ran: the agent's result names it, else the run's input; a lost netboot wrote no card", () => {
    const result = {
      ok: true,
      code: 'OK' as const,
      message: 'booted',
      job: 'j',
      target: { name: 'pi4-03', mac: 'dc:a6:32:01:02:03', ip: '10.0.0.43' },
      sha256: 'ab'.repeat(32),
      method: 'netboot' as const,
      bytesWritten: 0,
      card: 'untouched' as const,
      timings: { boot: 9 },
      parts: [],
    };
    expect(summaryRows(outcomeOfResult({ ...run, method: 'flash' }, result))).toContainEqual([
      'Method',
      'netboot: booted from the agent over the network (root over NBD), nothing written to the card',
    ]);
    const lost = outcomeOfError({ ...run, method: 'netboot', lastPhase: 'boot' }, new Error('gone'), false);
    expect(lost).toMatchObject({ method: 'netboot', card: 'untouched', cardEstimated: true });
    expect(cardAsSeenSentence('boot', 'netboot')).toBe(
      "nothing was written to the board's card (a network boot writes none)",
    );
    expect(summaryRows(outcomeOfError(run, new Error('x'), false)).map(([label]) => label)).not.toContain('Method');
  });
});
