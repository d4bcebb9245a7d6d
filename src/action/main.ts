/**
 * The action's main step: inputs → image → connect → lease → upload → flash → outputs.
 *
 * Everything here throws; `src/index.ts` owns the one handler that fails the step. A job failure is
 * reported here (outputs, summary, a titled annotation) and then thrown as `ReportedFailure` so the
 * handler does not annotate it twice.
 */
import * as core from '@actions/core';
import { downloadTool } from '@actions/tool-cache';
import { ConnectionLostError, connectAgent, type ConnectOptions, type UploadOptions } from '../protocol/client.js';
import {
  PHASES,
  type AgentMessage,
  type FlashRequest,
  type JobResult,
  type LeasedMessage,
  type UploadDoneMessage,
} from '../protocol/messages.js';
import { State } from './constants.js';
import { resolveImage, type Downloader, type ResolvedImage } from './image.js';
import {
  ActionCodes,
  annotateFailure,
  setJobOutputs,
  writeJobSummary,
  type JobOutcome,
  type ResultWord,
} from './outputs.js';
import { InputError, parseSettings, type ActionSettings, type GetInput } from './settings.js';
import { JobStory, type StoryWriter } from './story.js';

/** What the action needs from a connection (the protocol client's `AgentConnection`). */
export interface AgentSession {
  readonly closed: boolean;
  lease(target: string, o?: { holder?: string; lease?: string }): Promise<LeasedMessage>;
  upload(o: UploadOptions): Promise<UploadDoneMessage>;
  flash(o: Omit<FlashRequest, 'type' | 'id'>): Promise<JobResult>;
  cancel(o?: { lease?: string; reason?: string }): Promise<void>;
  close(): void;
}

export type Connect = (o: ConnectOptions) => Promise<AgentSession>;

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

/** A failure with a result code of the action's own (see `ActionCodes`) or the agent's. */
class CodedError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** After SIGINT/SIGTERM the runner kills the step within ~10 s; cancel on the agent well before. */
export const CANCEL_GRACE_MS = 5_000;
/** How long a cancel may wait for the agent's answer. */
const CANCEL_ANSWER_MS = 3_000;
const RECONNECT_DELAYS_MS = [1_000, 2_000, 4_000, 8_000, 8_000];
/** Waits between upload attempts while another connection uploads the same image. */
const UPLOAD_BUSY_DELAYS_MS = [1_000, 2_000, 4_000, 8_000, 15_000];
/** How often a wait for the job's result checks that the connection is still up. */
const RESULT_POLL_MS = 250;

function codeOf(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' && /^[A-Z_]+$/.test(code) ? code : 'INTERNAL';
}

function messageOf(err: unknown): string {
  return `${(err as Error)?.message ?? err}`;
}

function isConnectionLost(err: unknown): boolean {
  return codeOf(err) === 'CONNECTION_LOST';
}

/** The agent refuses a second upload of a sha256 while another client's is in progress. */
function isUploadInProgressElsewhere(err: unknown): boolean {
  return codeOf(err) === 'UPLOAD_IN_PROGRESS';
}

/** Resolves or rejects with `promise`, or rejects with the signal's reason as soon as it aborts. */
function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

function delay(ms: number, signal: AbortSignal): Promise<void> {
  return unlessAborted(new Promise<void>((resolve) => setTimeout(resolve, ms).unref()), signal);
}

function withTimer<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

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

/** One run of the main step; holds the connection and state that cleanup and cancel need. */
class FlashRun {
  private readonly story: JobStory;
  private settings?: ActionSettings;
  private image?: ResolvedImage;
  private conn?: AgentSession;
  private leased?: LeasedMessage;
  private jobId?: string;
  private upload?: UploadDoneMessage;
  private lastResult?: JobResult;
  private resultArrived?: () => void;
  /** Aborts whatever is awaited: a signal, the queue timeout or the job timeout. */
  private readonly abort = new AbortController();
  private cancelledBySignal = false;

  constructor(private readonly d: RunDeps) {
    this.story = new JobStory({ writer: d.writer, clock: d.clock });
  }

  async execute(): Promise<JobOutcome> {
    const onSignal = (signal: NodeJS.Signals) => this.onSignal(signal);
    this.d.signals.once('SIGINT', onSignal);
    this.d.signals.once('SIGTERM', onSignal);
    try {
      const result = await this.flow();
      return this.outcome(
        result.ok ? 'success' : result.code === 'CANCELLED' ? 'cancelled' : 'failure',
        result.code,
        result.message,
        result,
      );
    } catch (err) {
      // A lost connection is reported as the action's CONNECT_FAILED: CONNECTION_LOST is the
      // protocol client's internal signal to retry, not a result code users look up.
      const code = this.cancelledBySignal
        ? 'CANCELLED'
        : codeOf(err) === 'CONNECTION_LOST'
          ? 'CONNECT_FAILED'
          : codeOf(err);
      const result: ResultWord = this.cancelledBySignal || code === 'CANCELLED' ? 'cancelled' : 'failure';
      if (this.leased && !this.lastResult && !this.abortedForCancel)
        await this.cancelOnAgent(`the action failed: ${messageOf(err)}`);
      return this.outcome(result, code, messageOf(err));
    } finally {
      this.d.signals.removeListener('SIGINT', onSignal);
      this.d.signals.removeListener('SIGTERM', onSignal);
      this.story.close();
      this.conn?.close();
      await this.image?.cleanup();
    }
  }

  private abortedForCancel = false;

  private async flow(): Promise<JobResult> {
    let settings: ActionSettings;
    try {
      settings = parseSettings(this.d.getInput, { env: this.d.env, registerSecret: (s) => core.setSecret(s) });
    } catch (err) {
      if (err instanceof InputError) throw new CodedError('INPUT_INVALID', err.message);
      throw err;
    }
    this.settings = settings;

    this.image = await core.group('Resolve the image', async () => {
      try {
        return await resolveImage(settings.image, {
          workspace: settings.workspace,
          tempDir: this.d.env.RUNNER_TEMP || undefined,
          download: this.d.download,
          log: (line) => this.story.line(line),
        });
      } catch (err) {
        throw new CodedError('IMAGE_INVALID', messageOf(err));
      }
    });
    const image = this.image;
    this.story.line(`Image ${image.source}: ${image.compression}, ${image.size} bytes, sha256 ${image.sha256}`);

    this.d.saveState(State.agentUrl, settings.agentUrl.toString());
    this.d.saveState(State.target, settings.target);

    await this.connect(false);
    await this.leaseTarget();

    // From the lease on, the whole job has one deadline.
    const jobTimer = setTimeout(
      () =>
        this.abort.abort(
          new CodedError(
            'JOB_TIMEOUT',
            `the job did not finish within job-timeout (${settings.jobTimeoutMs / 1000} s)`,
          ),
        ),
      settings.jobTimeoutMs,
    );
    try {
      await this.uploadImage();
      return await this.flashImage();
    } catch (err) {
      if (this.abort.signal.aborted && codeOf(this.abort.signal.reason) === 'JOB_TIMEOUT' && !this.lastResult) {
        this.abortedForCancel = true;
        await this.cancelOnAgent('job-timeout passed');
      }
      throw err;
    } finally {
      clearTimeout(jobTimer);
    }
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
      case 'result': {
        const { type: _t, re: _r, ...result } = message;
        this.lastResult = result;
        // The agent ended the lease with the result: nothing is left for the post step to cancel.
        this.d.saveState(State.lease, '');
        this.resultArrived?.();
        break;
      }
      case 'error':
        if (message.re === undefined) this.story.line(`agent: ${message.code}: ${message.message}`);
        break;
    }
  }

  private async connect(reconnecting: boolean): Promise<void> {
    const settings = this.settings!;
    // A reconnect happens inside another phase (upload, transfer…): it stays in that phase's group.
    if (!reconnecting) this.story.phaseStart('connect');
    const url = settings.agentUrl.toString();
    const attempt = this.d.connect({
      url,
      token: settings.token,
      ...(settings.caCert !== undefined && { ca: settings.caCert }),
      client: `rpi-flash-action (${settings.holder})`,
      connectTimeoutMs: settings.connectTimeoutMs,
      onEvent: (m) => this.onEvent(m),
    });
    try {
      this.conn = await unlessAborted(
        withTimer(
          attempt,
          settings.connectTimeoutMs,
          () =>
            new CodedError(
              'CONNECT_FAILED',
              `no answer from the agent at ${url} within connect-timeout (${settings.connectTimeoutMs / 1000} s)`,
            ),
        ),
        this.abort.signal,
      );
    } catch (err) {
      attempt.then(
        (late) => late.close(),
        () => {},
      );
      if (reconnecting) throw err;
      const code = codeOf(err);
      throw new CodedError(code === 'CONNECTION_LOST' || code === 'INTERNAL' ? 'CONNECT_FAILED' : code, messageOf(err));
    }
    this.story.line(`Connected to ${url}${reconnecting ? ' again' : ''}`);
    if (!reconnecting) this.story.phaseEnd('connect');
  }

  private async leaseTarget(): Promise<void> {
    const settings = this.settings!;
    this.story.phaseStart('queue');
    this.story.line(`Leasing ${settings.target} as "${settings.holder}"`);
    const leasing = this.conn!.lease(settings.target, { holder: settings.holder });
    leasing.catch(() => {});
    const queueTimer = setTimeout(
      () =>
        this.abort.abort(
          new CodedError(
            'QUEUE_TIMEOUT',
            `${settings.target} stayed busy past queue-timeout (${settings.queueTimeoutMs / 1000} s)`,
          ),
        ),
      settings.queueTimeoutMs,
    );
    try {
      this.leased = await unlessAborted(leasing, this.abort.signal);
    } finally {
      clearTimeout(queueTimer);
    }
    this.d.saveState(State.lease, this.leased.lease);
    const t = this.leased.target;
    this.story.line(`Leased ${t.name} (${t.ip}, ${t.mac}${t.model ? `, ${t.model}` : ''})`);
    this.story.phaseEnd('queue');
  }

  /** After a lost connection: reconnect with backoff and take the lease back. Throws when it cannot. */
  private async resume(cause: unknown): Promise<void> {
    this.conn?.close();
    for (const wait of RECONNECT_DELAYS_MS) {
      this.story.line(`Connection lost (${messageOf(cause)}); reconnecting in ${wait / 1000} s`);
      await delay(wait, this.abort.signal);
      try {
        await this.connect(true);
        this.leased = await unlessAborted(
          this.conn!.lease(this.settings!.target, { lease: this.leased!.lease }),
          this.abort.signal,
        );
        this.story.line(`Lease ${this.leased.lease} resumed`);
        return;
      } catch (err) {
        if (this.abort.signal.aborted || !isConnectionLost(err)) throw err;
        this.conn?.close();
        cause = err;
      }
    }
    throw new CodedError(
      'CONNECT_FAILED',
      `lost the connection to the agent and could not resume in ${RECONNECT_DELAYS_MS.length} attempts: ${messageOf(cause)}`,
    );
  }

  private async uploadImage(): Promise<void> {
    const image = this.image!;
    this.story.phaseStart('upload');
    let busyRetries = 0;
    for (;;) {
      try {
        this.upload = await unlessAborted(
          this.conn!.upload({
            path: image.path,
            sha256: image.sha256,
            size: image.size,
            compression: image.compression,
            ...(image.imageSize !== undefined && { imageSize: image.imageSize }),
            name: image.name,
            onProgress: (received, total) => this.story.progress('upload', received, total),
          }),
          this.abort.signal,
        );
        break;
      } catch (err) {
        if (!this.abort.signal.aborted && isUploadInProgressElsewhere(err)) {
          // Another job (e.g. the next matrix leg) is uploading the same image. When it is done the
          // agent holds the image and this upload is skipped; if it is abandoned, this one resumes
          // from its bytes. job-timeout bounds the wait.
          const wait = UPLOAD_BUSY_DELAYS_MS[Math.min(busyRetries++, UPLOAD_BUSY_DELAYS_MS.length - 1)]!;
          this.story.line(`Another connection is uploading this image to the agent; trying again in ${wait / 1000} s`);
          await delay(wait, this.abort.signal);
          continue;
        }
        if (this.abort.signal.aborted || !isConnectionLost(err)) throw err;
        await this.resume(err);
      }
    }
    if (this.upload.skipped) this.story.line('The agent already holds this image: nothing to upload');
    this.story.phaseEnd('upload');
  }

  private async flashImage(): Promise<JobResult> {
    const settings = this.settings!;
    const timeouts: NonNullable<FlashRequest['timeouts']> = {
      ...(settings.boardTimeoutSeconds !== undefined && { boardShow: settings.boardTimeoutSeconds }),
      ...(settings.bootTimeoutSeconds !== undefined && { boot: settings.bootTimeoutSeconds }),
    };
    const request = {
      sha256: this.image!.sha256,
      ...(settings.bootCheck !== undefined && { bootCheck: settings.bootCheck }),
      ...(Object.keys(timeouts).length > 0 && { timeouts }),
    };
    let resent = false;
    for (;;) {
      try {
        return await unlessAborted(this.conn!.flash(request), this.abort.signal);
      } catch (err) {
        // A result that arrived on its own (the job ended while the connection was down) wins.
        if (this.lastResult) return this.lastResult;
        if (this.abort.signal.aborted) throw err;
        if (resent && codeOf(err) === 'BAD_REQUEST') {
          // The re-sent flash was refused because this lease already runs a job: the first flash
          // reached the agent, which kept the job going through the outage. Its events and result
          // come to this connection.
          this.story.line('The agent is still running the job: waiting for its result');
          try {
            return await unlessAborted(this.resultOrLostConnection(), this.abort.signal);
          } catch (lost) {
            if (this.abort.signal.aborted || !isConnectionLost(lost)) throw lost;
            err = lost;
          }
        } else if (!isConnectionLost(err)) {
          throw err;
        }
        await this.resume(err);
        if (this.lastResult) return this.lastResult;
        // The `leased` answer does not say whether the flash reached the agent before the cut
        // (protocol 1). Sending it again settles it: it starts the job only if none runs on this
        // lease, and is refused with BAD_REQUEST if one does; a job that ended meanwhile has
        // already delivered its result on resume (handled above).
        this.story.line('Asking the agent for the job again (it starts one only if the first request never arrived)');
        resent = true;
      }
    }
  }

  /** The job's result, delivered as an event; rejects when the connection drops while waiting. */
  private resultOrLostConnection(): Promise<JobResult> {
    if (this.lastResult) return Promise.resolve(this.lastResult);
    return new Promise((resolve, reject) => {
      // The session offers no close event, so poll it; the result itself arrives as an event.
      const poll = setInterval(() => {
        if (this.conn?.closed) {
          finish();
          reject(new ConnectionLostError('the connection to the agent closed while waiting for the result'));
        }
      }, RESULT_POLL_MS);
      const finish = () => {
        clearInterval(poll);
        this.resultArrived = undefined;
      };
      this.resultArrived = () => {
        finish();
        resolve(this.lastResult!);
      };
      this.abort.signal.addEventListener('abort', finish, { once: true });
    });
  }

  /** Asks the agent to cancel this lease's job; bounded, never throws (a failing cancel is only logged). */
  private async cancelOnAgent(reason: string): Promise<void> {
    const conn = this.conn;
    if (!conn || conn.closed || !this.leased) return;
    try {
      await withTimer(
        conn.cancel({ reason }),
        CANCEL_ANSWER_MS,
        () => new Error(`no answer within ${CANCEL_ANSWER_MS / 1000} s`),
      );
      this.d.saveState(State.lease, '');
      this.story.line(`Cancelled on the agent (lease ${this.leased.lease})`);
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
    this.abortedForCancel = true;
    const cancelled = this.cancelOnAgent(`${signal} on the runner`);
    void cancelled.finally(() => this.abort.abort(new CodedError('CANCELLED', `cancelled by ${signal}`)));
  }

  private outcome(result: ResultWord, code: string, message: string, jobResult?: JobResult): JobOutcome {
    const image = this.image;
    const timings = { ...this.story.timings(), ...jobResult?.timings };
    const target = jobResult?.target ?? this.leased?.target;
    const jobId = jobResult?.job ?? this.jobId;
    // Where it failed: the last phase the agent timed (events may have been lost in an outage), else the story's.
    const agentPhases = jobResult ? PHASES.filter((p) => jobResult.timings[p] !== undefined) : [];
    const failedPhase =
      result === 'success' ? undefined : (agentPhases[agentPhases.length - 1] ?? this.story.lastPhase);
    return {
      result,
      code,
      message: message || (ActionCodes as Record<string, string>)[code] || code,
      ...(failedPhase !== undefined && { phase: failedPhase }),
      targetSpec: this.settings?.target ?? this.d.getInput('target'),
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
      ...(jobResult !== undefined && { bytesWritten: jobResult.bytesWritten, parts: jobResult.parts }),
      ...(this.upload !== undefined && { uploadSkipped: this.upload.skipped }),
      timings,
    };
  }
}
