/**
 * The outcome of one run of the main step, put together from what the run got to: the agent's result
 * when the job ended, else the error that ended the run. Outputs, summary and annotation
 * (outputs.ts) are all written from it.
 */
import { codeOf, ErrorCodes, messageOf, type ErrorCode } from '../protocol/errors.js';
import {
  PHASES,
  type CardState,
  type JobMethod,
  type JobResult,
  type TargetInfo,
  type UploadDoneMessage,
} from '../protocol/messages.js';
import type { ResolvedImage } from './image.js';
import type { JobOutcome, ResultWord } from './outputs.js';
import type { StoryPhase } from './story.js';

/** What the run knew when it ended. */
export interface RunRecord {
  /** The `target` input as given. */
  targetSpec: string;
  image?: ResolvedImage;
  /** The target as the agent named it in the lease. */
  target?: TargetInfo;
  /** The agent's name (welcome, leased). */
  agent?: string;
  jobId?: string;
  upload?: UploadDoneMessage;
  /** Seconds per phase as the step log measured them. */
  timings: Partial<Record<StoryPhase, number>>;
  /** The phase the step log was in last. */
  lastPhase?: StoryPhase;
  /** What the job was asked to do with the image (the `method` input), once the inputs were read. */
  method?: JobMethod;
}

/**
 * What the board's card may hold when the agent's result never came, judged from the last phase the
 * action saw: nothing is written before the transfer; from its start the card may hold part of the
 * image; once the board reported every part written and read back (verify, boot) it holds the image.
 * Undefined when the job had not begun (no phase of the agent's was seen). A network boot never
 * writes the card, whatever phase it reached.
 */
export function cardAsSeen(lastPhase: StoryPhase | undefined, method?: JobMethod): CardState | undefined {
  if (method === 'netboot' && lastPhase !== undefined) return 'untouched';
  switch (lastPhase) {
    case 'stage':
    case 'reset':
      return 'untouched';
    case 'transfer':
      return 'partial';
    case 'verify':
    case 'boot':
      return 'written';
    default:
      return undefined;
  }
}

/** A failure message's words about the card, when the action judged it (`cardAsSeen`) rather than the agent. */
export function cardAsSeenSentence(lastPhase: StoryPhase | undefined, method?: JobMethod): string {
  if (method === 'netboot') return "nothing was written to the board's card (a network boot writes none)";
  const seen = lastPhase ? `the job was in ${lastPhase} when the action last heard from the agent` : '';
  switch (cardAsSeen(lastPhase)) {
    case 'partial':
      return `the board's card may be partly written (${seen}): it may not boot until it is flashed again`;
    case 'written':
      return `the board had written and read back every part (${seen}), but the job did not finish its checks`;
    case 'untouched':
      return `nothing was written to the board's card (${seen}, before the transfer)`;
    default:
      return "nothing was written to the board's card (the job had not begun)";
  }
}

export function outcomeOfResult(run: RunRecord, result: JobResult): JobOutcome {
  const word = result.ok ? 'success' : result.code === 'CANCELLED' ? 'cancelled' : 'failure';
  return assemble(run, word, result.code, result.message, result);
}

/**
 * The run ended with `err`, before the agent's result. A lost connection is reported as the action's
 * CONNECT_FAILED: CONNECTION_LOST is the protocol client's signal to resume, not a result code
 * users look up.
 */
export function outcomeOfError(run: RunRecord, err: unknown, cancelledBySignal: boolean): JobOutcome {
  const code = cancelledBySignal ? 'CANCELLED' : codeOf(err) === 'CONNECTION_LOST' ? 'CONNECT_FAILED' : codeOf(err);
  return assemble(run, code === 'CANCELLED' ? 'cancelled' : 'failure', code, messageOf(err));
}

/** The agent's word on the card when its result came; else, for a failed job that had begun, the action's estimate. */
function cardOf(run: RunRecord, result: ResultWord, job?: JobResult): Pick<JobOutcome, 'card' | 'cardEstimated'> {
  if (job) return { card: job.card };
  const seen = result === 'success' ? undefined : cardAsSeen(run.lastPhase, run.method);
  return seen === undefined ? {} : { card: seen, cardEstimated: true };
}

function assemble(run: RunRecord, result: ResultWord, code: ErrorCode, message: string, job?: JobResult): JobOutcome {
  const { image } = run;
  const target = job?.target ?? run.target;
  const jobId = job?.job ?? run.jobId;
  // Where it failed: the last phase the agent timed (events may have been lost in an outage), else the log's.
  const agentPhases = job ? PHASES.filter((p) => job.timings[p] !== undefined) : [];
  const failedPhase = result === 'success' ? undefined : (agentPhases[agentPhases.length - 1] ?? run.lastPhase);
  return {
    result,
    code,
    // A code from a newer agent has no meaning here; the code itself is the best there is.
    message: message || ErrorCodes[code] || code,
    ...(failedPhase !== undefined && { phase: failedPhase }),
    targetSpec: run.targetSpec,
    ...((job?.method ?? run.method) !== undefined && { method: job?.method ?? run.method }),
    ...(target !== undefined && { target }),
    ...(run.agent !== undefined && { agent: run.agent }),
    ...(image !== undefined && {
      image: {
        name: image.name,
        source: image.source,
        sha256: image.sha256,
        size: image.size,
        compression: image.compression,
        ...(image.imageSize !== undefined && { imageSize: image.imageSize }),
      },
    }),
    ...(jobId !== undefined && { jobId }),
    ...(job !== undefined && { bytesWritten: job.bytesWritten, parts: job.parts }),
    ...(job?.imageSize !== undefined &&
      job.mappedBytes !== undefined &&
      job.wireBytes !== undefined && {
        mapping: { imageSize: job.imageSize, mappedBytes: job.mappedBytes, wireBytes: job.wireBytes },
      }),
    ...cardOf(run, result, job),
    ...(run.upload !== undefined && { uploadSkipped: run.upload.skipped }),
    timings: { ...run.timings, ...job?.timings },
  };
}
