import { describe, expect, it } from 'vitest';
import { JobStory, type StoryWriter } from '../../src/action/story.js';

/** Records what the story writes, in the runner's own syntax, and drives a fake clock. */
function harness(options: { stepPercent?: number; intervalMs?: number } = {}) {
  const lines: string[] = [];
  let now = 1_000_000;
  const writer: StoryWriter = {
    startGroup: (t) => lines.push(`::group::${t}`),
    endGroup: () => lines.push('::endgroup::'),
    info: (l) => lines.push(l),
    debug: (l) => lines.push(`::debug::${l}`),
  };
  const story = new JobStory({
    writer,
    clock: () => now,
    ...(options.stepPercent !== undefined && { progressStepPercent: options.stepPercent }),
    ...(options.intervalMs !== undefined && { progressIntervalMs: options.intervalMs }),
  });
  return { story, lines, advance: (ms: number) => (now += ms) };
}

const MiB = 1024 * 1024;

describe('JobStory', () => {
  it('opens one group per phase, closing the previous one, and records durations', () => {
    const { story, lines, advance } = harness();
    story.phaseStart('connect');
    advance(1500);
    story.phaseEnd('connect');
    story.handle({ type: 'phase', re: 'r1', job: 'j1', phase: 'stage', state: 'start' });
    advance(200);
    story.handle({ type: 'phase', re: 'r1', job: 'j1', phase: 'reset', state: 'start' }); // no end for stage
    story.handle({ type: 'phase', re: 'r1', job: 'j1', phase: 'reset', state: 'start' }); // repeated: ignored
    story.handle({ type: 'phase', re: 'r1', job: 'j1', phase: 'reset', state: 'end', seconds: 3.25 });
    story.close();
    expect(lines).toEqual([
      '::group::Connect to the agent',
      'connect finished in 1.5 s',
      '::endgroup::',
      '::group::Stage the job',
      'stage finished in 0.2 s',
      '::endgroup::',
      '::group::Reset the board',
      'reset finished in 3.3 s',
      '::endgroup::',
    ]);
    expect(story.timings()).toEqual({ connect: 1.5, stage: 0.2, reset: 3.25 });
    expect(story.lastPhase).toBe('reset');
    expect(story.currentPhase).toBeUndefined();
  });

  it('close() ends an open group exactly once', () => {
    const { story, lines } = harness();
    story.phaseStart('transfer');
    story.close();
    story.close();
    expect(lines.filter((l) => l === '::endgroup::')).toHaveLength(1);
  });

  it('prints progress at each 10 % step, not for every event', () => {
    const { story, lines, advance } = harness();
    story.phaseStart('upload');
    const total = 100 * MiB;
    for (let done = 0; done <= total; done += MiB) {
      advance(10); // 1 MiB per 10 ms = 104.9 MB/s
      story.progress('upload', done, total);
    }
    const progress = lines.filter((l) => l.startsWith('upload:'));
    expect(progress).toHaveLength(11); // 0 %, 10 %, … 100 %
    expect(progress[0]).toBe('upload: 0 % (0 B of 100.0 MiB)');
    expect(progress[5]).toBe('upload: 50 % (50.0 MiB of 100.0 MiB) at 104.9 MB/s');
    expect(progress[10]).toBe('upload: 100 % (100.0 MiB of 100.0 MiB) at 104.9 MB/s');
    // After completion nothing more is printed for the same run.
    story.progress('upload', total, total);
    expect(lines.filter((l) => l.startsWith('upload:'))).toHaveLength(11);
  });

  it('prints slow progress every 10 s even inside one step, and unknown totals by time only', () => {
    const { story, lines, advance } = harness();
    story.progress('transfer', 0, 1000 * MiB);
    for (let i = 1; i <= 30; i++) {
      advance(1000);
      story.progress('transfer', i * MiB, 1000 * MiB); // 3 % in 30 s: no step crossed
    }
    expect(lines.filter((l) => l.startsWith('transfer:'))).toHaveLength(4); // at 0, 10, 20, 30 s
    story.progress('boot', 0);
    advance(5000);
    story.progress('boot', 1);
    advance(5000);
    story.progress('boot', 2);
    expect(lines.filter((l) => l.startsWith('boot:'))).toEqual(['boot: 0 B', 'boot: 2 B at 0.0 MB/s']);
  });

  it('starts over when the count goes back (a resumed upload, or the next part)', () => {
    const { story, lines, advance } = harness();
    story.progress('upload', 60 * MiB, 100 * MiB);
    advance(1000);
    story.progress('upload', 10 * MiB, 100 * MiB);
    story.progress('transfer', 0, 10 * MiB, 1, 2);
    story.progress('transfer', 10 * MiB, 10 * MiB, 1, 2);
    story.progress('transfer', 0, 10 * MiB, 2, 2);
    expect(lines).toEqual([
      'upload: 60 % (60.0 MiB of 100.0 MiB)',
      'upload: 10 % (10.0 MiB of 100.0 MiB)',
      'transfer: part 1/2: 0 % (0 B of 10.0 MiB)',
      'transfer: part 1/2: 100 % (10.0 MiB of 10.0 MiB)',
      'transfer: part 2/2: 0 % (0 B of 10.0 MiB)',
    ]);
  });

  it('shows the queue position when it changes, inside the queue group', () => {
    const { story, lines } = harness();
    story.handle({ type: 'queued', position: 2, holder: 'org/other run 7' });
    story.handle({ type: 'queued', position: 2, holder: 'org/other run 7' });
    story.handle({ type: 'queued', position: 1, holder: 'org/other run 7' });
    expect(lines).toEqual([
      '::group::Wait for the target',
      'Target busy: position 2 in line (held by org/other run 7)',
      'Target busy: position 1 in line (held by org/other run 7)',
    ]);
  });

  it('prints agent and board log lines by source and level', () => {
    const { story, lines } = harness();
    const log = (source: 'agent' | 'board' | 'console', level: 'debug' | 'info' | 'warn' | 'error', message: string) =>
      story.handle({ type: 'log', re: 'r', job: 'j', source, level, message, time: 0 });
    log('agent', 'info', 'staged 3 parts');
    log('board', 'warn', 'part 2 crc mismatch, retrying');
    log('console', 'debug', 'U-Boot 2023.01');
    log('agent', 'error', 'board stopped');
    expect(lines).toEqual([
      'staged 3 parts',
      'warn: [board] part 2 crc mismatch, retrying',
      '::debug::[console] U-Boot 2023.01',
      'error: board stopped',
    ]);
  });
});
