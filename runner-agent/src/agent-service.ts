/**
 * What the agent does for its clients: leases, uploads, jobs, cancels (DESIGN §3.6).
 *
 * A lease outlives its connection for a grace period so a client that lost its network can
 * reconnect and resume (`lease` with the old lease id). A client that goes silent, or stays away
 * past the grace period, loses the lease; its running job is cancelled and the staged files go.
 */
import path from 'node:path';
import { CodedError, codeOf, messageOf, type ErrorCode } from '../../src/protocol/errors.js';
import type {
  BoardRequest,
  BoardStatusMessage,
  ClientMessage,
  FlashRequest,
  JobMethod,
  JobResult,
  LeaseRequest,
  ResultMessage,
  UploadBeginRequest,
} from '../../src/protocol/messages.js';
import type { Logger } from './log.js';
import type { AgentConfig } from './config.js';
import { findTarget, type Target } from './targets/database.js';
import type { ResetContext } from './reset/index.js';
import { NETBOOT_LAYOUT, type LayoutRegistry } from './layouts/registry.js';
import type { ImageStore, StoredImage } from './store/image-store.js';
import type { UploadSession } from './store/upload-session.js';
import { LABEL_PREFIX, LeaseManager, newId, type Lease, type LeaseWant } from './jobs/leases.js';
import { REFUSING_STATES, type BoardState, type BoardStates } from './lab/board-states.js';
import { HealthChecks, type HealthJobResult } from './lab/health-checks.js';
import { importHealthImage } from './lab/health-image.js';
import { FlashJob, targetInfo, type JobEvent } from './jobs/flash-job.js';
import { formatBytes } from '../../src/protocol/units.js';
import type { BoardFiles } from './staging/board-files.js';
import type { ClientConnection, ConnectionHandler } from './ws/server.js';
import { LabFeed } from './lab-view.js';

/**
 * Upload bytes received but not yet taken by the store, per upload, past which the agent stops
 * reading from the client. The protocol client keeps at most its window (16 MiB) and a chunk
 * unacknowledged, so one that keeps to it never waits here; one that ignores the acks (keeps
 * sending binary frames) waits for the store, as TCP makes it, instead of growing the agent.
 */
export const MAX_QUEUED_UPLOAD_BYTES = 24 * 1024 * 1024;

interface ActiveUpload {
  requestId: string;
  session: UploadSession;
  sha256: string;
  size: number;
  received: number;
  lastAck: number;
  /** Writes run one after another; a failure poisons the rest. */
  chain: Promise<void>;
  failed?: CodedError;
  /** Bytes in `chain` not yet written: at most MAX_QUEUED_UPLOAD_BYTES and one frame. */
  queued: number;
  /** The connection whose reading is paused until `queued` falls to half the limit. */
  pausedOn?: ClientConnection;
}

interface LeaseSession {
  lease: Lease;
  target: Target;
  conn?: ClientConnection;
  upload?: ActiveUpload;
  /** An upload being put aside (suspend/discard) after a disconnect. */
  dropping?: Promise<void>;
  job?: FlashJob;
  /** Set from the moment a flash request is accepted until its job ends. */
  starting?: boolean;
  /** The id of that flash request, while `starting`: the `re` of its job's events and result. */
  flashRequest?: string;
  /** A cancel that arrived while the job was still being set up. */
  cancelRequested?: { reason: string; code: ErrorCode };
  /** A result that finished while the client was away, delivered when it reattaches. */
  pendingResult?: ResultMessage;
  graceTimer?: NodeJS.Timeout;
  /**
   * Why the lease was lost (silence, or the grace period passed). From then on the session only
   * waits for its job to wind down: nobody can resume it, and its result is kept in the job record only.
   */
  lost?: string;
}

export interface AgentServiceDeps {
  config: AgentConfig;
  log: Logger;
  store: ImageStore;
  files: BoardFiles;
  /** The TFTP server's bound port (LayoutJob.tftpPort). */
  tftpPort: number;
  resetContext: Omit<ResetContext, 'log'>;
  /** The layouts a job may use, by name (layouts/registry.ts). */
  layouts: LayoutRegistry;
  targets: () => readonly Target[];
  /** Every target's state (lab/board-states.ts), opened from `<stateDir>/boards.json`. */
  boards: BoardStates;
}

/** The holder a health check's lease shows to others waiting. */
export const HEALTH_HOLDER = 'health check';

export class AgentService implements ConnectionHandler {
  readonly leases: LeaseManager;
  /** Every target's state; the dashboard and the metrics read it and subscribe to its changes. */
  readonly boards: BoardStates;
  readonly health: HealthChecks;
  /** The step (leased, flashing, booting) of each board's lease now, whatever its state shows. */
  private readonly jobSteps = new Map<string, BoardState>();
  /** Health jobs running now, and their ends: shutdown cancels them as it does clients' jobs. */
  private readonly healthJobs = new Map<FlashJob, Promise<unknown>>();
  private readonly sessions = new Map<string, LeaseSession>();
  private readonly byConnection = new Map<string, LeaseSession>();
  /** Lease requests still waiting in a queue, by connection, so a disconnect leaves the queue. */
  private readonly waiting = new Map<string, { abort: AbortController; requestId: string }>();
  private stopping = false;
  private readonly partialExpiry: NodeJS.Timeout;
  /** What the dashboard and the metrics see of the lab: a snapshot and an event feed (lab-view.ts). */
  readonly lab: LabFeed;

  constructor(private readonly d: AgentServiceDeps) {
    this.boards = d.boards;
    this.leases = new LeaseManager({
      boardsWithLabel: (label) => {
        const wanted = label.toLowerCase();
        return d
          .targets()
          .filter((t) => t.labels.some((l) => l.toLowerCase() === wanted))
          .map((t) => t.name);
      },
      availability: (board) => this.refusalOf(board),
    });
    this.health = new HealthChecks({
      states: d.boards,
      settings: d.config.health,
      run: (board) => this.runHealthJob(board),
      log: d.log.child({ part: 'health' }),
    });
    // A board taken out or brought back changes who may wait for it: refuse waiters no board can
    // serve any more, and hand a board that came back to the earliest waiter.
    d.boards.onChange((status, previous) => {
      if (REFUSING_STATES.includes(status.state) !== REFUSING_STATES.includes(previous)) this.leases.recheck();
    });
    this.health.start();
    this.lab = new LabFeed(
      {
        targets: () => d.targets(),
        leaseOf: (target) => this.leases.holderOf(target),
        queueLength: (target) => this.leases.queueLength(target),
        poolQueueLength: (label) => this.leases.labelQueueLength(label),
        boardStatus: (target) => d.boards.get(target),
      },
      d.log.child({ part: 'lab-view' }),
    );
    // Maintenance, unhealthy, a health check's verdict: the dashboard sees every state change.
    d.boards.onChange(() => this.lab.changed());
    // A partial upload is a resume point held for clients, like a lease through its grace period:
    // one no client came back for within store.partialTtl goes. Checked a few times per TTL.
    const ttlMs = d.config.store.partialTtl * 1000;
    const expire = () =>
      void d.store
        .expirePartials(ttlMs)
        .catch((err: unknown) => d.log.error('expiring partial uploads failed', { error: messageOf(err) }));
    expire();
    this.partialExpiry = setInterval(expire, Math.min(10 * 60_000, Math.max(100, ttlMs / 4)));
    this.partialExpiry.unref();
  }

  onMessage(conn: ClientConnection, m: ClientMessage): Promise<void> | void {
    if (this.stopping && m.type !== 'cancel')
      throw new CodedError('SHUTTING_DOWN', 'the agent is stopping and takes no new work');
    switch (m.type) {
      case 'lease':
        return this.lease(conn, m);
      case 'upload-begin':
        return this.uploadBegin(conn, m);
      case 'upload-end':
        return this.uploadEnd(conn, m.id);
      case 'flash':
        return this.flash(conn, m);
      case 'cancel':
        return this.cancel(conn, m.id, m.lease, m.reason);
      case 'board':
        return this.board(conn, m);
      case 'hello':
        return;
    }
  }

  private sessionOf(conn: ClientConnection): LeaseSession {
    const s = this.byConnection.get(conn.id);
    if (!s) throw new CodedError('NOT_LEASED', 'lease a target first');
    return s;
  }

  private attach(s: LeaseSession, conn: ClientConnection): void {
    clearTimeout(s.graceTimer);
    s.graceTimer = undefined;
    if (s.conn && s.conn.id !== conn.id) this.byConnection.delete(s.conn.id);
    s.conn = conn;
    this.byConnection.set(conn.id, s);
  }

  private async lease(conn: ClientConnection, m: LeaseRequest): Promise<void> {
    if (this.byConnection.has(conn.id) || this.waiting.has(conn.id))
      throw new CodedError('BAD_REQUEST', 'this connection already holds or waits for a lease');
    if (m.lease) {
      const s = this.sessions.get(m.lease);
      if (!s || s.lost)
        throw new CodedError(
          'LEASE_LOST',
          s?.lost
            ? `lease ${m.lease} was lost (${s.lost}); its job was cancelled`
            : `lease ${m.lease} is no longer held (it ended or its grace period passed)`,
        );
      if (s.conn && s.conn.id !== conn.id) s.conn.close(4000, 'lease taken over by a new connection');
      this.attach(s, conn);
      this.d.log.info('lease resumed', { target: s.target.name, lease: s.lease.id, conn: conn.id });
      conn.send({
        type: 'leased',
        re: m.id,
        lease: s.lease.id,
        target: targetInfo(s.target),
        agent: this.d.config.name,
      });
      if (s.pendingResult) {
        conn.send(s.pendingResult);
        this.endSession(s);
      }
      return;
    }
    const want = this.wantOf(m.target);
    const holder = m.holder ?? conn.client;
    const abort = new AbortController();
    this.waiting.set(conn.id, { abort, requestId: m.id });
    let lease: Lease;
    try {
      lease = await this.leases.acquire(want, holder, {
        signal: abort.signal,
        onPosition: (position, current) => {
          conn.send({ type: 'queued', re: m.id, position, ...(current ? { holder: current } : {}) });
          this.lab.changed();
          this.d.log.info('lease request queued', { target: m.target, position, holder });
        },
      });
    } finally {
      this.waiting.delete(conn.id);
      // Granted or gone (cancelled, disconnected): the queue is one shorter either way.
      this.lab.changed();
    }
    // A pool's board is known only now; a named one may have been renamed by a reload meanwhile.
    const target = this.d.targets().find((t) => t.name === lease.target);
    if (!target) {
      this.freeBoard(lease.id);
      throw new CodedError('UNKNOWN_TARGET', `target "${lease.target}" left the database while the request waited`);
    }
    this.boardMoved(target.name, 'leased');
    const s: LeaseSession = { lease, target };
    this.sessions.set(lease.id, s);
    this.attach(s, conn);
    this.d.log.info('lease granted', { target: target.name, lease: lease.id, holder });
    this.lab.changed();
    conn.send({ type: 'leased', re: m.id, lease: lease.id, target: targetInfo(target), agent: this.d.config.name });
  }

  private async uploadBegin(conn: ClientConnection, m: UploadBeginRequest): Promise<void> {
    const s = this.sessionOf(conn);
    if (s.job) throw new CodedError('BAD_REQUEST', 'a job is running on this lease');
    await this.dropUpload(s, 'suspend');
    const held = await this.d.store.get(m.sha256);
    if (held) {
      this.d.log.info('image already held; upload skipped', { target: s.target.name, sha256: m.sha256 });
      conn.send({
        type: 'upload-done',
        re: m.id,
        sha256: held.sha256,
        size: held.wireSize,
        imageSize: held.imageSize,
        skipped: true,
      });
      return;
    }
    const session = await this.d.store.begin({
      sha256: m.sha256,
      size: m.size,
      compression: m.compression,
      ...(m.imageSize ? { imageSize: m.imageSize } : {}),
    });
    if (this.byConnection.get(conn.id) !== s) {
      // The lease ended (a cancel, or it was lost) while the store set the upload up: it is nobody's
      // now, and kept open it would hold its sha256 against every other upload.
      await session.suspend();
      throw new CodedError('NOT_LEASED', 'the lease ended while the upload was being set up');
    }
    s.upload = {
      requestId: m.id,
      session,
      sha256: m.sha256,
      size: m.size,
      received: session.offset,
      lastAck: session.offset,
      chain: Promise.resolve(),
      queued: 0,
    };
    this.d.log.info('upload started', {
      target: s.target.name,
      sha256: m.sha256,
      size: m.size,
      compression: m.compression,
      resumeAt: session.offset,
      name: m.name,
    });
    conn.send({ type: 'upload-ready', re: m.id, offset: session.offset });
  }

  onBinary(conn: ClientConnection, data: Buffer): void {
    const s = this.byConnection.get(conn.id);
    const up = s?.upload;
    if (!s || !up) {
      // Bytes nobody asked for are refused, never stored.
      conn.send({
        type: 'error',
        code: 'BAD_REQUEST',
        message: 'binary data outside an upload (send upload-begin first)',
        fatal: true,
      });
      conn.close(1008, 'unexpected binary data');
      return;
    }
    if (up.failed) return;
    up.queued += data.length;
    if (!up.pausedOn && up.queued > MAX_QUEUED_UPLOAD_BYTES) {
      up.pausedOn = conn;
      conn.pause();
      this.d.log.warn('client sends past its upload window; reading from it paused until the store catches up', {
        target: s.target.name,
        remote: conn.remote,
        queued: up.queued,
      });
    }
    up.chain = up.chain.then(() => this.write(s, up, data)).finally(() => this.written(up, data.length));
  }

  /** One binary frame into the upload's store session; a failure ends the upload and tells the client. */
  private async write(s: LeaseSession, up: ActiveUpload, data: Buffer): Promise<void> {
    if (up.failed) return;
    try {
      await up.session.write(data);
      up.received += data.length;
      this.lab.uploaded(data.length);
      // Acknowledge what the store accepted (hashed, queued for disk; it holds a few MiB at most):
      // the client keeps at most its window (16 MiB) unacknowledged. Durable is only what a
      // suspend fsyncs, reported as the resume offset.
      if (up.received - up.lastAck >= 1024 * 1024 || up.received === up.size) {
        up.lastAck = up.received;
        s.conn?.send({ type: 'upload-progress', re: up.requestId, received: up.received });
      }
    } catch (err) {
      up.failed = err instanceof CodedError ? err : new CodedError('INTERNAL', (err as Error).message);
      s.conn?.send({ type: 'error', re: up.requestId, code: up.failed.code, message: up.failed.message });
      this.d.log.warn('upload failed', { target: s.target.name, code: up.failed.code, error: up.failed.message });
      // Too large / no space keep the bytes for a resume; anything else is not worth keeping.
      const keep = up.failed.code === 'UPLOAD_TOO_LARGE' || up.failed.code === 'NO_SPACE';
      await (keep ? up.session.suspend() : up.session.discard()).catch(() => {});
      if (s.upload === up) s.upload = undefined;
    }
  }

  private written(up: ActiveUpload, bytes: number): void {
    up.queued -= bytes;
    if (up.pausedOn && up.queued <= MAX_QUEUED_UPLOAD_BYTES / 2) {
      up.pausedOn.resume();
      up.pausedOn = undefined;
    }
  }

  private async uploadEnd(conn: ClientConnection, id: string): Promise<void> {
    const s = this.sessionOf(conn);
    const up = s.upload;
    if (!up) throw new CodedError('BAD_REQUEST', 'no upload in progress');
    await up.chain;
    if (up.failed) throw up.failed;
    s.upload = undefined;
    const started = performance.now();
    const image = await up.session.finish();
    this.d.log.info('upload stored', {
      target: s.target.name,
      sha256: image.sha256,
      imageSize: image.imageSize,
      finishMs: Math.round(performance.now() - started),
    });
    conn.send({
      type: 'upload-done',
      re: id,
      sha256: image.sha256,
      size: image.wireSize,
      imageSize: image.imageSize,
      skipped: false,
    });
  }

  /** End the session's upload, keeping its bytes for a resume ('suspend') or not. */
  private dropUpload(s: LeaseSession, how: 'suspend' | 'discard'): Promise<void> {
    const up = s.upload;
    if (!up) return s.dropping ?? Promise.resolve();
    s.upload = undefined;
    // A reconnecting client may ask to resume before this finishes: upload-begin waits for it.
    s.dropping = (async () => {
      await up.chain;
      if (!up.failed) await (how === 'suspend' ? up.session.suspend() : up.session.discard()).catch(() => {});
    })();
    return s.dropping;
  }

  private async flash(conn: ClientConnection, m: FlashRequest): Promise<void> {
    const s = this.sessionOf(conn);
    if (s.flashRequest !== undefined) {
      // A client that lost its connection sends its flash again after the resume, not knowing
      // whether the first one arrived. It did: no second job; the running one answers both.
      conn.send({ type: 'job-running', re: m.id, flash: s.flashRequest, ...(s.job && { job: s.job.id }) });
      return;
    }
    if (s.upload) throw new CodedError('BAD_REQUEST', 'an upload is still in progress (send upload-end first)');
    // Claim the lease for this job before the first await: a repeated flash must not start a second job.
    s.starting = true;
    s.flashRequest = m.id;
    try {
      await this.runFlash(s, m);
    } catch (err) {
      // The error answers this request on the connection it came from. A client that has resumed on
      // another connection since may wait there for it, having been told `job-running`.
      if (s.conn && s.conn.id !== conn.id)
        s.conn.send({ type: 'error', re: m.id, code: codeOf(err), message: messageOf(err) });
      this.afterFailedSetup(s);
      throw err;
    } finally {
      s.starting = false;
      s.flashRequest = undefined;
      // A cancel asked for while the job was being set up was for that job alone (the job took it, or
      // the failed setup ended the lease): it must never cancel a later flash at once.
      s.cancelRequested = undefined;
    }
  }

  /**
   * The job was never set up (its flash got an error, no result). A cancel that came meanwhile, or
   * a lease lost meanwhile, ends the lease now: no job result will.
   */
  private afterFailedSetup(s: LeaseSession): void {
    s.job = undefined;
    if (this.sessions.get(s.lease.id) !== s || (!s.cancelRequested && !s.lost)) return;
    this.d.log.info('job not started after a cancel; ending the lease', {
      target: s.target.name,
      lease: s.lease.id,
      why: s.lost ?? s.cancelRequested?.reason,
    });
    this.endSession(s);
  }

  private async runFlash(s: LeaseSession, m: FlashRequest): Promise<void> {
    // Pin before looking up, so no eviction slips in between.
    const unpin = this.d.store.pin(m.sha256);
    try {
      const image = await this.d.store.get(m.sha256);
      if (!image)
        throw new CodedError('IMAGE_NOT_FOUND', `the agent holds no image with sha256 ${m.sha256}; upload it first`);
      const { config } = this.d;
      const { job, jobId, log, layoutName } = this.newJob({
        target: s.target,
        image,
        holder: s.lease.holder,
        bootCheck: m.bootCheck ?? config.bootCheck,
        timeouts: {
          boardShow: m.timeouts?.boardShow ?? config.timeouts.boardShow,
          stall: m.timeouts?.stall ?? config.timeouts.stall,
          boot: m.timeouts?.boot ?? config.timeouts.boot,
        },
        emit: (event) => s.conn?.send({ ...event, re: m.id }),
        mapping: {
          ...(m.bmap !== undefined ? { bmap: m.bmap } : {}),
          ...(m.writeZeros !== undefined ? { writeZeros: m.writeZeros } : {}),
        },
        ...(m.method !== undefined ? { method: m.method } : {}),
      });
      s.job = job;
      if (s.cancelRequested) job.cancel(s.cancelRequested.reason, s.cancelRequested.code);
      log.info('job started', {
        image: image.sha256,
        size: formatBytes(image.imageSize),
        layout: layoutName,
        holder: s.lease.holder,
      });
      this.lab.jobStarted({ id: jobId, target: s.target.name, holder: s.lease.holder });
      let result: JobResult;
      try {
        result = await job.run();
      } catch (err) {
        // run() settles every failure into a result; this is the last word for the feed if it did not.
        this.lab.jobEnded(jobId, undefined);
        throw err;
      }
      this.lab.jobEnded(jobId, result);
      const seconds = Object.values(result.timings).reduce((a, b) => a + (b ?? 0), 0);
      log.info('job ended', { code: result.code, ok: result.ok, seconds: seconds.toFixed(1) });
      // Before the lease goes: a board that turns unhealthy must not reach the next waiter.
      this.health.clientJobEnded(s.target.name, result.code);
      const message: ResultMessage = { type: 'result', re: m.id, ...result };
      if (s.conn) {
        s.conn.send(message);
        this.endSession(s);
      } else if (s.lost) {
        // Nobody can come back for it: the result stays in the job record, the lease is forgotten.
        this.endSession(s);
      } else {
        // The client is away: keep the result for its return, free the board for others now.
        s.pendingResult = message;
        s.job = undefined;
        this.freeBoard(s.lease.id);
        this.lab.changed();
      }
    } finally {
      unpin();
    }
  }

  private async cancel(
    conn: ClientConnection,
    id: string,
    leaseId: string | undefined,
    reason?: string,
  ): Promise<void> {
    const waiting = this.waiting.get(conn.id);
    if (!leaseId && waiting) {
      waiting.abort.abort(new CodedError('CANCELLED', 'lease request cancelled by the client'));
      conn.send({ type: 'released', re: id, lease: '' });
      return;
    }
    const s = leaseId ? this.sessions.get(leaseId) : this.byConnection.get(conn.id);
    // A lost lease is as good as ended: its job is being cancelled already.
    if (!s || s.lost) {
      // Nothing to cancel is not an error for a safety-net cancel (the post step).
      conn.send({ type: 'released', re: id, lease: leaseId ?? '' });
      return;
    }
    this.d.log.info('cancel requested', { target: s.target.name, lease: s.lease.id, reason });
    if (s.job || s.starting) {
      // The job's own result (CANCELLED) answers the flash request; the cancel gets `released`.
      // A job still being set up (part CRCs) is cancelled the moment it exists.
      const why = reason ? `cancelled by the client: ${reason}` : 'cancelled by the client';
      this.cancelJob(s, why, 'CANCELLED');
      conn.send({ type: 'released', re: id, lease: s.lease.id });
      return;
    }
    await this.dropUpload(s, 'suspend');
    this.endSession(s);
    conn.send({ type: 'released', re: id, lease: s.lease.id });
  }

  /** Cancel the lease's job, or the job about to start on it. */
  private cancelJob(s: LeaseSession, reason: string, code: ErrorCode): void {
    if (s.job) s.job.cancel(reason, code);
    else s.cancelRequested = { reason, code };
  }

  private endSession(s: LeaseSession): void {
    clearTimeout(s.graceTimer);
    this.sessions.delete(s.lease.id);
    if (s.conn) this.byConnection.delete(s.conn.id);
    this.freeBoard(s.lease.id);
    this.d.log.info('lease released', { target: s.target.name, lease: s.lease.id });
    this.lab.changed();
  }

  onClose(conn: ClientConnection, silent: boolean): void {
    this.waiting.get(conn.id)?.abort.abort(new CodedError('CANCELLED', 'client disconnected while queued'));
    const s = this.byConnection.get(conn.id);
    if (!s) return;
    this.byConnection.delete(conn.id);
    // The lease already moved to a newer connection (a resume raced this close): nothing to do.
    if (s.conn && s.conn.id !== conn.id) return;
    s.conn = undefined;
    const expire = (why: string) => {
      this.d.log.warn('lease lost', { target: s.target.name, lease: s.lease.id, why });
      s.lost = why;
      // A running job is cancelled; its end forgets the lease (runFlash), keeping no result for a resume.
      if (s.job || s.starting) this.cancelJob(s, why, 'LEASE_LOST');
      else {
        void this.dropUpload(s, 'suspend');
        this.endSession(s);
      }
    };
    if (silent) return expire('client silent past the grace period');
    // Keep the lease (and a running job) for a reconnect; an upload keeps its bytes for a resume.
    void this.dropUpload(s, 'suspend');
    s.graceTimer = setTimeout(() => {
      s.graceTimer = undefined;
      if (s.pendingResult) this.sessions.delete(s.lease.id);
      else expire(`client did not come back within ${this.d.config.timeouts.leaseGrace} s`);
    }, this.d.config.timeouts.leaseGrace * 1000);
    s.graceTimer.unref();
  }

  /** Shutdown: refuse new work, cancel running jobs and wait for their cleanup (bounded), end leases. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    clearInterval(this.partialExpiry);
    this.health.stop();
    this.leases.close();
    for (const job of this.healthJobs.keys()) job.cancel('the agent is stopping', 'SHUTTING_DOWN');
    const running: Promise<void>[] = [];
    for (const s of this.sessions.values()) {
      if (s.job || s.starting) {
        this.cancelJob(s, 'the agent is stopping', 'SHUTTING_DOWN');
        running.push(
          new Promise<void>((resolve) => {
            const check = setInterval(() => {
              if ((!s.job && !s.starting) || !this.sessions.has(s.lease.id) || s.pendingResult) {
                clearInterval(check);
                resolve();
              }
            }, 20);
          }),
        );
      }
    }
    running.push(
      ...[...this.healthJobs.values()].map((p) =>
        p.then(
          () => {},
          () => {},
        ),
      ),
    );
    await Promise.race([
      Promise.all(running),
      new Promise((r) => setTimeout(r, this.d.config.timeouts.shutdown * 1000)),
    ]);
    for (const s of [...this.sessions.values()]) {
      await this.dropUpload(s, 'suspend');
      this.endSession(s);
    }
  }

  activeJobs(): number {
    return [...this.sessions.values()].filter((s) => s.job).length + this.healthJobs.size;
  }

  // ---- boards: states, pools, health checks, the operator's requests ----------------------------

  /** What a lease request's `target` asks for: a pool (`label:<label>`) or one board by name, MAC or IP. */
  private wantOf(text: string): LeaseWant {
    if (text.toLowerCase().startsWith(LABEL_PREFIX)) {
      const label = text.slice(LABEL_PREFIX.length).trim();
      if (!label) throw new CodedError('BAD_REQUEST', `"${text}" names no label (label:<label>, e.g. label:pi4)`);
      return { label };
    }
    return { board: this.targetOf(text).name };
  }

  private targetOf(text: string): Target {
    const target = findTarget(this.d.targets(), text);
    if (!target)
      throw new CodedError(
        'UNKNOWN_TARGET',
        `no target "${text}" in the agent's database (give a name, MAC or IP, or label:<label>)`,
      );
    return target;
  }

  /** Why a new lease on the board is refused (unhealthy, maintenance), or undefined when it may be leased. */
  private refusalOf(board: string): CodedError | undefined {
    const s = this.d.boards.get(board);
    if (!s || !REFUSING_STATES.includes(s.state)) return undefined;
    const since = new Date(s.since).toISOString();
    const why = s.reason ? `: ${s.reason}` : '';
    return s.state === 'maintenance'
      ? new CodedError('BOARD_IN_MAINTENANCE', `${board} is in maintenance since ${since}${why}`)
      : new CodedError('BOARD_UNHEALTHY', `${board} is unhealthy since ${since}${why}`);
  }

  /**
   * A job's own step: leased, flashing, booting. A board in maintenance stays so through the job
   * it was taken out under (the job finishes; no new one starts).
   */
  private boardMoved(board: string, state: BoardState, reason?: string): void {
    // Kept even in maintenance, so a resume mid-job shows the job's own step again.
    this.jobSteps.set(board, state);
    if (this.d.boards.get(board)?.state === 'maintenance') return;
    this.d.boards.set(board, state, reason);
  }

  /** Phases stage to verify are the board being flashed; boot is the new system starting. */
  private phaseSeen(board: string, event: JobEvent): void {
    if (event.type !== 'phase' || event.state !== 'start') return;
    this.boardMoved(board, event.phase === 'boot' ? 'booting' : 'flashing');
  }

  /** End a lease: its board is idle unless its job's end made it unhealthy, or it went into maintenance. */
  private freeBoard(leaseId: string): void {
    const lease = this.leases.get(leaseId);
    if (lease) this.jobSteps.delete(lease.target);
    const state = lease && this.d.boards.get(lease.target)?.state;
    if (lease && (state === 'leased' || state === 'flashing' || state === 'booting'))
      this.d.boards.set(lease.target, 'idle');
    this.leases.release(leaseId);
  }

  /** The targets were reloaded: new boards start idle, pools may have changed. */
  targetsChanged(): void {
    this.d.boards.sync(this.d.targets().map((t) => t.name));
    this.leases.recheck();
  }

  /** A health job: the same lease (it waits its turn) and FlashJob as a client's, with the known-good image. */
  private async runHealthJob(board: string): Promise<HealthJobResult> {
    const { config, store } = this.d;
    const target = this.targetOf(board);
    const stored = await importHealthImage(store, config.health.image!);
    const unpin = store.pin(stored.sha256);
    try {
      const image = await store.get(stored.sha256);
      if (!image) throw new CodedError('IMAGE_NOT_FOUND', 'the health image was evicted as it was imported');
      const lease = await this.leases.acquire(target.name, HEALTH_HOLDER, { bypass: true });
      try {
        this.boardMoved(target.name, 'leased', 'health check');
        const { job, jobId, log, layoutName } = this.newJob({
          target,
          image,
          holder: HEALTH_HOLDER,
          bootCheck: config.health.bootCheck ?? config.bootCheck,
          timeouts: config.timeouts,
          logFields: { part: 'health' },
        });
        log.info('health job started', { image: image.sha256, layout: layoutName });
        // The dashboard shows a health job as any other, under its holder.
        this.lab.jobStarted({ id: jobId, target: target.name, holder: HEALTH_HOLDER });
        const run = job.run();
        this.healthJobs.set(job, run);
        const result = await run.finally(() => this.healthJobs.delete(job));
        this.lab.jobEnded(jobId, result);
        log.info('health job ended', { code: result.code, ok: result.ok });
        // Before the lease goes: the next waiter must see the board's new state.
        this.health.healthJobEnded(target.name, result);
        return { ok: result.ok, code: result.code, message: result.message };
      } finally {
        // A job that could not be set up says nothing about the board: it goes back to idle.
        this.freeBoard(lease.id);
        this.lab.changed();
      }
    } finally {
      unpin();
    }
  }

  /**
   * A job on a leased board, a client's or a health check's alike: the target's layout, the stored
   * image, the record, and its events feeding the board's state and the dashboard (then `emit`).
   */
  private newJob(o: {
    target: Target;
    image: StoredImage;
    holder: string;
    bootCheck: string;
    timeouts: { boardShow: number; stall: number; boot: number };
    emit?: (event: JobEvent) => void;
    logFields?: Record<string, string>;
    /** The client's block map and write-zeros choice (FlashRequest); absent: derived ranges, the config's choice. */
    mapping?: { bmap?: string; writeZeros?: boolean };
    /** Absent: `flash`, with the target's layout. */
    method?: JobMethod;
  }): { job: FlashJob; jobId: string; log: Logger; layoutName: string } {
    const { store } = this.d;
    const { target, image } = o;
    const writeZeros = o.mapping?.writeZeros;
    const config =
      writeZeros === undefined ? this.d.config : { ...this.d.config, flash: { ...this.d.config.flash, writeZeros } };
    const bmap = o.mapping?.bmap;
    const method = o.method ?? 'flash';
    // A network boot writes no card: whatever the target's layout, the `netboot` layout serves it.
    const layoutName = method === 'netboot' ? NETBOOT_LAYOUT : (target.layout ?? config.defaultLayout);
    const layout = this.d.layouts[layoutName];
    if (!layout) throw new CodedError('LAB_MISCONFIGURED', `${target.name}: the agent has no layout "${layoutName}"`);
    const jobId = newId(6);
    const log = this.d.log.child({ target: target.name, job: jobId, ...o.logFields });
    const job = new FlashJob({
      id: jobId,
      target,
      image,
      config,
      layout,
      layoutName,
      method,
      files: this.d.files,
      tftpPort: this.d.tftpPort,
      storedPartCrcs: (partSize) => store.storedPartCrcs(image.sha256, partSize),
      mappedRanges: () =>
        bmap === undefined
          ? store.mappedRanges(image.sha256, config.flash.minZeroRun)
          : store.bmapRanges(image.sha256, bmap),
      recordDir: path.join(config.stateDir, 'jobs'),
      holder: o.holder,
      bootCheck: o.bootCheck,
      timeouts: { boardShow: o.timeouts.boardShow, stall: o.timeouts.stall, boot: o.timeouts.boot },
      reset: this.d.resetContext,
      log,
      emit: (event) => {
        o.emit?.(event);
        this.phaseSeen(target.name, event);
        this.lab.jobEvent(jobId, event);
      },
    });
    return { job, jobId, log, layoutName };
  }

  /** The operator's request (`rpi-flash-agent board`): answered with the board's status after it. */
  private async board(conn: ClientConnection, m: BoardRequest): Promise<void> {
    const { boards } = this.d;
    const answer = (statuses: BoardStatusMessage['boards'], health?: BoardStatusMessage['health']) =>
      conn.send({ type: 'board-status', re: m.id, boards: statuses, ...(health ? { health } : {}) });
    if (m.action === 'status' && m.target === undefined) return answer(boards.list());
    const name = this.targetOf(m.target ?? '').name;
    const who = m.reason ? `${m.reason} (${conn.client})` : `by ${conn.client}`;
    this.d.log.info('board request', { target: name, action: m.action, client: conn.client, reason: m.reason });
    switch (m.action) {
      case 'status':
        break;
      case 'maintenance': {
        const busy = this.leases.holderOf(name) ? '; its running job finishes first' : '';
        boards.set(name, 'maintenance', `maintenance ${who}${busy}`);
        break;
      }
      case 'resume': {
        const state = boards.get(name)!.state;
        if (state === 'maintenance' || state === 'unhealthy') {
          boards.recordJobEnd(name, false);
          // A board whose job ran on through the maintenance shows that job again.
          boards.set(name, this.jobSteps.get(name) ?? 'idle', `resumed ${who}`);
        }
        break;
      }
      case 'health': {
        const outcome = await this.health.check(name, `on demand ${who}`);
        return answer([outcome.status], { ok: outcome.ok, code: outcome.code, message: outcome.message });
      }
    }
    return answer([boards.get(name)!]);
  }
}
