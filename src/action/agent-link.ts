/**
 * The main step's hold on the agent: one connection at a time, and the lease on it, kept through
 * outages. An operation given to `run()` that loses the connection is run again on a new one once
 * the lease is back; when the agent cannot be reached again, the run ends with CONNECT_FAILED.
 */
import type { ConnectOptions, UploadOptions } from '../protocol/client.js';
import { CodedError, codeOf, messageOf } from '../protocol/errors.js';
import type { AgentMessage, FlashRequest, JobResult, LeasedMessage, UploadDoneMessage } from '../protocol/messages.js';
import type { ActionSettings } from './settings.js';
import { delay, unlessAborted, withTimer } from './waits.js';

/** What the action needs from a connection (the protocol client's `AgentConnection`). */
export interface AgentSession {
  readonly isClosed: boolean;
  /** The agent's name from its welcome (empty or absent for an agent that does not say). */
  readonly agentName?: string;
  lease(target: string, o?: { holder?: string; lease?: string }): Promise<LeasedMessage>;
  upload(o: UploadOptions): Promise<UploadDoneMessage>;
  flash(o: Omit<FlashRequest, 'type' | 'id'>): Promise<JobResult>;
  cancel(o?: { lease?: string; reason?: string }): Promise<void>;
  close(): void;
}

export type Connect = (o: ConnectOptions) => Promise<AgentSession>;

/** Waits before each attempt to reconnect; one attempt each. */
const RECONNECT_DELAYS_MS = [1_000, 2_000, 4_000, 8_000, 8_000];

export interface LinkOptions {
  settings: Pick<ActionSettings, 'agentUrl' | 'token' | 'caCert' | 'holder' | 'target' | 'connectTimeoutMs'>;
  connect: Connect;
  /** Ends every wait: the run's abort signal. */
  signal: AbortSignal;
  /** Every message from the agent, on whichever connection. */
  onEvent: (message: AgentMessage) => void;
  /** The link's own lines for the step log (connected, lost, resumed). */
  log: (line: string) => void;
}

export class AgentLink {
  private conn?: AgentSession;
  private held?: LeasedMessage;

  constructor(private readonly o: LinkOptions) {}

  /** The connection now, if any (it may have closed since). */
  get session(): AgentSession | undefined {
    return this.conn;
  }

  /** The lease, once granted (after a resume, as the agent confirmed it). */
  get leased(): LeasedMessage | undefined {
    return this.held;
  }

  /** Which agent runs the job: its name from the lease, else from its welcome; undefined before either. */
  get agentName(): string | undefined {
    return this.held?.agent || this.conn?.agentName || undefined;
  }

  /**
   * The first connection. Failing to reach the agent is CONNECT_FAILED; what the agent itself
   * refused (AUTH_FAILED, PROTOCOL_VERSION_MISMATCH) keeps its code.
   */
  async connect(): Promise<void> {
    try {
      await this.open(false);
    } catch (err) {
      const code = codeOf(err);
      if (code !== 'CONNECTION_LOST' && code !== 'INTERNAL') throw err;
      throw new CodedError('CONNECT_FAILED', messageOf(err), { cause: err });
    }
  }

  /** Leases the target; `queued` events come meanwhile while someone else holds it. */
  async lease(): Promise<LeasedMessage> {
    const { target, holder } = this.o.settings;
    this.held = await unlessAborted(this.conn!.lease(target, { holder }), this.o.signal);
    return this.held;
  }

  /**
   * Runs `op` on the connection. When the connection is lost meanwhile, reconnects, takes the lease
   * back and runs `op` again on the new connection, with `retry` set: what a retry means (resume an
   * upload, ask for the job again) is the operation's to say.
   */
  async run<T>(op: (conn: AgentSession, retry: boolean) => Promise<T>): Promise<T> {
    for (let retry = false; ; retry = true) {
      try {
        return await unlessAborted(op(this.conn!, retry), this.o.signal);
      } catch (err) {
        if (this.o.signal.aborted || codeOf(err) !== 'CONNECTION_LOST') throw err;
        await this.resume(err);
      }
    }
  }

  close(): void {
    this.conn?.close();
  }

  /** Reconnects with back-off and takes the lease back. Throws when it cannot. */
  private async resume(cause: unknown): Promise<void> {
    this.conn?.close();
    for (const wait of RECONNECT_DELAYS_MS) {
      this.o.log(`Connection lost (${messageOf(cause)}); reconnecting in ${wait / 1000} s`);
      await delay(wait, this.o.signal);
      try {
        await this.open(true);
        this.held = await unlessAborted(
          this.conn!.lease(this.o.settings.target, { lease: this.held!.lease }),
          this.o.signal,
        );
        this.o.log(`Lease ${this.held.lease} resumed`);
        return;
      } catch (err) {
        if (this.o.signal.aborted || codeOf(err) !== 'CONNECTION_LOST') throw err;
        this.conn?.close();
        cause = err;
      }
    }
    throw new CodedError(
      'CONNECT_FAILED',
      `lost the connection to the agent and could not resume in ${RECONNECT_DELAYS_MS.length} attempts: ` +
        messageOf(cause),
    );
  }

  private async open(again: boolean): Promise<void> {
    const { settings } = this.o;
    const url = settings.agentUrl.toString();
    const attempt = this.o.connect({
      url,
      token: settings.token,
      ...(settings.caCert !== undefined && { ca: settings.caCert }),
      client: `rpi-flash-action (${settings.holder})`,
      connectTimeoutMs: settings.connectTimeoutMs,
      onEvent: this.o.onEvent,
      log: this.o.log,
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
        this.o.signal,
      );
    } catch (err) {
      // A connection that opens after all is nobody's: close it.
      attempt.then(
        (late) => late.close(),
        () => {},
      );
      throw err;
    }
    this.o.log(`Connected to ${url}${again ? ' again' : ''}`);
  }
}
