/**
 * The outcome of one run of the main step, put together from what the run got to: the agent's result
 * when the job ended, else the error that ended the run. Outputs, summary and annotation
 * (outputs.ts) are all written from it.
 */
import { codeOf, ErrorCodes, messageOf, type ErrorCode } from '../protocol/errors.js';
import { PHASES, type JobResult, type TargetInfo, type UploadDoneMessage } from '../protocol/messages.js';
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
  jobId?: string;
  upload?: UploadDoneMessage;
  /** Seconds per phase as the step log measured them. */
  timings: Partial<Record<StoryPhase, number>>;
  /** The phase the step log was in last. */
  lastPhase?: StoryPhase;
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
    ...(target !== undefined && { target }),
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
    ...(run.upload !== undefined && { uploadSkipped: run.upload.skipped }),
    timings: { ...run.timings, ...job?.timings },
  };
}
