/**
 * The action's main step: inputs → image → connect → lease → upload → flash → outputs.
 *
 * Everything here throws; `src/index.ts` owns the one handler that fails the step. A job failure is
 * reported here (outputs, summary, a titled annotation) and then thrown as `ReportedFailure` so the
 * handler does not annotate it twice. Keeping the connection through outages is `agent-link.ts`'s
 * job, the waits that give way to an abort are `waits.ts`'s, and the outcome is put together in
 * `outcome.ts`.
 */
import * as core from '@actions/core';
import { downloadTool } from '@actions/tool-cache';
import { connectAgent } from '../protocol/client.js';
import { CodedError, codeOf, messageOf } from '../protocol/errors.js';
import type { AgentMessage, FlashRequest, JobResult, UploadDoneMessage } from '../protocol/messages.js';
import { AgentLink, type Connect } from './agent-link.js';
import { State } from './constants.js';
import { findBmap, type FoundBmap } from './bmap.js';
import { resolveImage, type Downloader, type ResolvedImage } from './image.js';
import { cardAsSeenSentence, outcomeOfError, outcomeOfResult, type RunRecord } from './outcome.js';
import { annotateFailure, setJobOutputs, writeJobSummary, type JobOutcome } from './outputs.js';
import { parseSettings, type ActionSettings, type GetInput } from './settings.js';
import { JobStory, type StoryWriter } from './story.js';
import { abortAfter, delay, withTimer } from './waits.js';

/** The outside world, swappable in tests. */
export interface RunDeps {
  getInput: GetInput;
  connect: Connect;
  download: Downloader;
  writer: StoryWriter;
  clock: () => number;
  env: NodeJS.ProcessEnv;
  saveState: (name: string, value: string) => void;
  /** Where SIGINT/SIGTERM arrive; `process` in the action. */
  signals: Pick<NodeJS.Process, 'once' | 'removeListener'>;
  /** Ends the process when a cancel takes too long; `process.exit` in the action. */
  exit: (code: number) => void;
}

export const coreWriter: StoryWriter = {
  startGroup: (title) => core.startGroup(title),
  endGroup: () => core.endGroup(),
  info: (line) => core.info(line),
  debug: (line) => core.debug(line),
};

export function defaultDeps(): RunDeps {
  return {
    getInput: (name) => core.getInput(name),
    connect: connectAgent,
    download: (url, dest) => downloadTool(url, dest),
    writer: coreWriter,
    clock: Date.now,
    env: process.env,
    saveState: (name, value) => core.saveState(name, value),
    signals: process,
    exit: (code) => process.exit(code),
  };
}

/** A failure already reported (outputs, summary, annotation): the top-level handler only sets the exit code. */
export class ReportedFailure extends Error {
  constructor(readonly outcome: JobOutcome) {
    super(outcome.message);
    this.name = 'ReportedFailure';
  }
}

/** After SIGINT/SIGTERM the runner kills the step within ~10 s; cancel on the agent well before. */
export const CANCEL_GRACE_MS = 5_000;
/** How long a cancel may wait for the agent's answer. */
const CANCEL_ANSWER_MS = 3_000;
/** Waits between upload attempts while another connection uploads the same image. */
const UPLOAD_BUSY_DELAYS_MS = [1_000, 2_000, 4_000, 8_000, 15_000];

export async function run(overrides: Partial<RunDeps> = {}): Promise<void> {
  const deps = { ...defaultDeps(), ...overrides };
  const job = new FlashRun(deps);
  const outcome = await job.execute();
  setJobOutputs(outcome);
  await writeJobSummary(outcome);
  if (outcome.result !== 'success') {
    annotateFailure(outcome);
    throw new ReportedFailure(outcome);
  }
}

/** One run of the main step; holds what cleanup, cancel and the outcome need. */
class FlashRun {
  private readonly story: JobStory;
  private settings?: ActionSettings;
  private image?: ResolvedImage;
  private bmap?: FoundBmap;
  private link?: AgentLink;
  private jobId?: string;
  private upload?: UploadDoneMessage;
  private lastResult?: JobResult;
  /** Aborts whatever is awaited: a signal, the queue timeout or the job timeout. */
  private readonly abort = new AbortController();
  private cancelledBySignal = false;
  /** The agent was already asked to cancel (signal, job-timeout): the failure path does not ask again. */
  private cancelAsked = false;
  /** A signal's cancel on the agent, until it was answered (or gave up): the connection stays open for it. */
  private cancelling?: Promise<void>;
  /** The agent no longer holds the lease (JOB_LOST): there is nothing left to cancel. */
  private leaseLost = false;

  constructor(private readonly d: RunDeps) {
    this.story = new JobStory({ writer: d.writer, clock: d.clock });
  }

  async execute(): Promise<JobOutcome> {
    const onSignal = (signal: NodeJS.Signals) => this.onSignal(signal);
    this.d.signals.once('SIGINT', onSignal);
    this.d.signals.once('SIGTERM', onSignal);
    try {
      const result = await this.flow();
      return outcomeOfResult(this.record(), result);
    } catch (err) {
      // A signal's cancel stops the upload at once, so the upload may fail before the cancel is answered.
      await this.cancelling;
      if (this.link?.leased && !this.lastResult && !this.cancelAsked && !this.leaseLost)
        await this.cancelOnAgent(`the action failed: ${messageOf(err)}`);
      const why: unknown = this.cancelledBySignal ? (this.abort.signal.reason ?? err) : err;
      return outcomeOfError(this.record(), why, this.cancelledBySignal);
    } finally {
      this.d.signals.removeListener('SIGINT', onSignal);
      this.d.signals.removeListener('SIGTERM', onSignal);
      this.story.close();
      await this.cancelling;
      this.link?.close();
      await this.image?.cleanup();
    }
  }

  private async flow(): Promise<JobResult> {
    const settings = parseSettings(this.d.getInput, { env: this.d.env, registerSecret: (s) => core.setSecret(s) });
    this.settings = settings;
    const image = await core.group('Resolve the image', () => this.resolveImage(settings));
    this.d.saveState(State.agentUrl, settings.agentUrl.toString());
    this.d.saveState(State.target, settings.target);

    const link = new AgentLink({
      settings,
      connect: this.d.connect,
      signal: this.abort.signal,
      onEvent: (m) => this.onEvent(m),
      log: (line) => this.story.line(line),
    });
    this.link = link;
    this.story.phaseStart('connect');
    await link.connect();
    this.story.phaseEnd('connect');
    await this.leaseTarget(link, settings);

    // From the lease on, the whole job has one deadline.
    const stopJobTimer = abortAfter(
      this.abort,
      settings.jobTimeoutMs,
      () =>
        new CodedError('JOB_TIMEOUT', `the job did not finish within job-timeout (${settings.jobTimeoutMs / 1000} s)`),
    );
    try {
      this.upload = await this.uploadImage(link, image);
      return await this.flashImage(link, settings, image);
    } catch (err) {
      if (codeOf(this.abort.signal.reason) === 'JOB_TIMEOUT' && !this.lastResult) {
        this.cancelAsked = true;
        await this.cancelOnAgent('job-timeout passed');
      }
      throw err;
    } finally {
      stopJobTimer();
    }
  }

  private async resolveImage(settings: ActionSettings): Promise<ResolvedImage> {
    this.image = await resolveImage(settings.image, {
      workspace: settings.workspace,
      tempDir: this.d.env.RUNNER_TEMP || undefined,
      download: this.d.download,
      log: (line) => this.story.line(line),
    });
    const image = this.image;
    this.story.line(`Image ${image.source}: ${image.compression}, ${image.size} bytes, sha256 ${image.sha256}`);
    this.bmap = await findBmap(settings.bmap, image, settings.workspace);
    if (this.bmap)
      this.story.line(
        `Block map ${this.bmap.path}: the agent writes only the blocks it maps, once it has checked them`,
      );
    else if (settings.bmap.kind === 'auto')
      this.story.line('No block map beside the image: the agent leaves out the all-zero runs it finds');
    return image;
  }

  private async leaseTarget(link: AgentLink, settings: ActionSettings): Promise<void> {
    this.story.phaseStart('queue');
    this.story.line(`Leasing ${settings.target} as "${settings.holder}"`);
    const stopQueueTimer = abortAfter(
      this.abort,
      settings.queueTimeoutMs,
      () =>
        new CodedError(
          'QUEUE_TIMEOUT',
          `${settings.target} stayed busy past queue-timeout (${settings.queueTimeoutMs / 1000} s)`,
        ),
    );
    try {
      const leased = await link.lease();
      this.d.saveState(State.lease, leased.lease);
      const t = leased.target;
      this.story.line(`Leased ${t.name} (${t.ip}, ${t.mac}${t.model ? `, ${t.model}` : ''})`);
    } finally {
      stopQueueTimer();
    }
    this.story.phaseEnd('queue');
  }

  private async uploadImage(link: AgentLink, image: ResolvedImage): Promise<UploadDoneMessage> {
    this.story.phaseStart('upload');
    let busyRetries = 0;
    // A retry after a resume needs nothing special: the agent says from which offset to go on.
    const upload = await link.run(async (conn) => {
      for (;;) {
        try {
          return await conn.upload({
            path: image.path,
            sha256: image.sha256,
            size: image.size,
            compression: image.compression,
            ...(image.imageSize !== undefined && { imageSize: image.imageSize }),
            name: image.name,
            onProgress: (received, total) => this.story.progress('upload', received, total),
          });
        } catch (err) {
          if (codeOf(err) !== 'UPLOAD_IN_PROGRESS') throw err;
          // Another job (e.g. the next matrix leg) is uploading the same image. When it is done the
          // agent holds the image and this upload is skipped; if it is abandoned, this one resumes
          // from its bytes. job-timeout bounds the wait.
          const wait = UPLOAD_BUSY_DELAYS_MS[Math.min(busyRetries++, UPLOAD_BUSY_DELAYS_MS.length - 1)]!;
          this.story.line(`Another connection is uploading this image to the agent; trying again in ${wait / 1000} s`);
          await delay(wait, this.abort.signal);
        }
      }
    });
    if (upload.skipped) this.story.line('The agent already holds this image: nothing to upload');
    this.story.phaseEnd('upload');
    return upload;
  }

  private async flashImage(link: AgentLink, settings: ActionSettings, image: ResolvedImage): Promise<JobResult> {
    const timeouts: NonNullable<FlashRequest['timeouts']> = {
      ...(settings.boardTimeoutSeconds !== undefined && { boardShow: settings.boardTimeoutSeconds }),
      ...(settings.bootTimeoutSeconds !== undefined && { boot: settings.bootTimeoutSeconds }),
    };
    const request = {
      sha256: image.sha256,
      ...(settings.bootCheck !== undefined && { bootCheck: settings.bootCheck }),
      ...(this.bmap && { bmap: this.bmap.text }),
      ...(settings.writeZeros !== undefined && { writeZeros: settings.writeZeros }),
      // Absent for `flash`, so an agent from before network boot still takes the request.
      ...(settings.method !== 'flash' && { method: settings.method }),
      ...(Object.keys(timeouts).length > 0 && { timeouts }),
    };
    try {
      const result = await this.runFlash(link, request);
      if (settings.method !== 'flash' && result.method === undefined)
        this.d.writer.info(
          `the agent does not know method ${settings.method} (it is older than network boot): ` +
            'it flashed the card instead',
        );
      return result;
    } catch (err) {
      // The lease could not be taken back: the agent restarted (its leases are gone) or the grace
      // period passed. Either way the job is lost, and what the card holds is the last thing seen.
      if (codeOf(err) !== 'LEASE_LOST' || this.lastResult) throw err;
      this.leaseLost = true;
      this.d.saveState(State.lease, '');
      throw new CodedError(
        'JOB_LOST',
        'the job is lost: the agent no longer holds its lease (it restarted, or the connection was down past ' +
          `the lease's grace period); ${cardAsSeenSentence(this.story.lastPhase, settings.method)}`,
        { cause: err },
      );
    }
  }

  private runFlash(link: AgentLink, request: Omit<FlashRequest, 'type' | 'id'>): Promise<JobResult> {
    return link.run(async (conn, retry) => {
      // A result that arrived on its own (the job ended while the connection was down) wins.
      if (this.lastResult) return this.lastResult;
      // After a resume nobody knows whether the first flash reached the agent. Sending it again
      // settles it: a job starts only if none runs on this lease; a running one answers `job-running`
      // and then this request with its result.
      if (retry)
        this.story.line('Asking the agent for the job again (it starts one only if the first request never arrived)');
      try {
        return await conn.flash(request);
      } catch (err) {
        if (this.lastResult) return this.lastResult;
        throw err;
      }
    });
  }

  private onEvent(message: AgentMessage): void {
    if ('job' in message && typeof message.job === 'string' && message.job !== this.jobId) {
      this.jobId = message.job;
      this.d.saveState(State.job, message.job);
    }
    switch (message.type) {
      case 'queued':
      case 'log':
      case 'phase':
      case 'progress':
        this.story.handle(message);
        break;
      case 'job-running':
        this.story.line('The agent is still running the job: waiting for its result');
        break;
      case 'result':
        this.lastResult = message;
        // The agent ended the lease with the result: nothing is left for the post step to cancel.
        this.d.saveState(State.lease, '');
        break;
      case 'error':
        if (message.re === undefined) this.story.line(`agent: ${message.code}: ${message.message}`);
        break;
    }
  }

  /** Asks the agent to cancel this lease's job; bounded, never throws (a failing cancel is only logged). */
  private async cancelOnAgent(reason: string): Promise<void> {
    const conn = this.link?.session;
    const leased = this.link?.leased;
    if (!conn || conn.isClosed || !leased) return;
    try {
      await withTimer(
        conn.cancel({ reason }),
        CANCEL_ANSWER_MS,
        () => new Error(`no answer within ${CANCEL_ANSWER_MS / 1000} s`),
      );
      this.d.saveState(State.lease, '');
      this.story.line(`Cancelled on the agent (lease ${leased.lease})`);
    } catch (err) {
      this.story.line(`Could not cancel on the agent: ${messageOf(err)} (the post step tries again)`);
    }
  }

  private onSignal(signal: NodeJS.Signals): void {
    if (this.cancelledBySignal) return;
    this.cancelledBySignal = true;
    this.story.line(`${signal} received: cancelling the job`);
    // A hard stop in case something hangs; unref'd so a clean finish is not delayed by it.
    setTimeout(() => this.d.exit(1), CANCEL_GRACE_MS).unref();
    this.cancelAsked = true;
    // The cancel stops an upload before it sends (protocol client): no chunk goes after it.
    this.cancelling = this.cancelOnAgent(`${signal} on the runner`).finally(() =>
      this.abort.abort(new CodedError('CANCELLED', `cancelled by ${signal}`)),
    );
  }

  /** What the run got to, for the outcome. */
  private record(): RunRecord {
    return {
      targetSpec: this.settings?.target ?? this.d.getInput('target'),
      image: this.image,
      target: this.link?.leased?.target,
      agent: this.link?.agentName,
      jobId: this.jobId,
      upload: this.upload,
      timings: this.story.timings(),
      lastPhase: this.story.lastPhase,
      ...(this.settings && { method: this.settings.method }),
    };
  }
}
