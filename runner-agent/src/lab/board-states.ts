/**
 * Board states: what each target is doing right now, kept across agent restarts in one small file
 * (`<stateDir>/boards.json`) written crash-safely (temp file, fsync, rename, fsync of the folder).
 *
 * A board is `idle` (free to lease), `leased` (a client holds it, no job yet), `flashing` (stage,
 * reset, transfer, verify), `booting` (the boot check), `unhealthy` (a health check failed, or too
 * many jobs in a row failed for the board's own reasons) or `maintenance` (an operator took it out).
 * Only `unhealthy` and `maintenance` are refused to new leases; they are the operator's to see.
 *
 * What survives a restart: `maintenance` and `unhealthy` (with their reason and the failure count),
 * and the last health check. `leased`, `flashing` and `booting` found at start-up mean the agent
 * stopped mid-job: the job and its lease died with the process, so the board is `idle` again, its
 * reason says so, and its consecutive-failure count is kept (the crash is not counted as the board's
 * fault: nobody knows whose it was).
 */
import { open, readFile, rename } from 'node:fs/promises';
import path from 'node:path';

export type BoardState = 'idle' | 'leased' | 'flashing' | 'booting' | 'unhealthy' | 'maintenance';

export const BOARD_STATES: readonly BoardState[] = [
  'idle',
  'leased',
  'flashing',
  'booting',
  'unhealthy',
  'maintenance',
];

/** The states a new lease is refused in, at once (not a queue wait). */
export const REFUSING_STATES: readonly BoardState[] = ['unhealthy', 'maintenance'];

export interface HealthResult {
  /** Epoch milliseconds when the check ended. */
  at: number;
  ok: boolean;
  /** The health job's result code when it failed. */
  code?: string;
}

export interface BoardStatus {
  name: string;
  state: BoardState;
  /** Epoch milliseconds when the board entered `state`. */
  since: number;
  /** Why the board is in this state (maintenance note, the failing code, a restart). */
  reason?: string;
  /** Jobs in a row that failed for the board's own reasons (reset to 0 by a passing job or health check). */
  consecutiveFailures: number;
  lastHealth?: HealthResult;
}

/** A change event: the board's new status and the state it left. */
export type BoardChangeListener = (status: BoardStatus, previous: BoardState) => void;

/** The state file could not be read as one of ours. */
export class BoardStateFileError extends Error {
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${message}`, options);
    this.name = 'BoardStateFileError';
  }
}

const FILE_VERSION = 1;

interface StateFile {
  version: number;
  boards: BoardStatus[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** One board's record from the file, or a message saying what is wrong with it. */
function parseStatus(raw: unknown): BoardStatus | string {
  if (!isObject(raw)) return 'a board is not an object';
  const { name, state, since, reason, consecutiveFailures, lastHealth } = raw;
  if (typeof name !== 'string' || name === '') return 'a board has no name';
  if (typeof state !== 'string' || !(BOARD_STATES as readonly string[]).includes(state))
    return `board ${name}: unknown state ${JSON.stringify(state)}`;
  if (typeof since !== 'number' || !Number.isFinite(since)) return `board ${name}: since is not a number`;
  if (reason !== undefined && typeof reason !== 'string') return `board ${name}: reason is not a string`;
  if (typeof consecutiveFailures !== 'number' || !Number.isInteger(consecutiveFailures) || consecutiveFailures < 0)
    return `board ${name}: consecutiveFailures is not a count`;
  const status: BoardStatus = { name, state: state as BoardState, since, consecutiveFailures };
  if (reason !== undefined) status.reason = reason;
  if (lastHealth !== undefined) {
    if (!isObject(lastHealth) || typeof lastHealth.at !== 'number' || typeof lastHealth.ok !== 'boolean')
      return `board ${name}: lastHealth is not {at, ok}`;
    status.lastHealth = { at: lastHealth.at, ok: lastHealth.ok };
    if (typeof lastHealth.code === 'string') status.lastHealth.code = lastHealth.code;
  }
  return status;
}

/** What `open` found in the file, for the agent's start-up log. */
export interface BoardStatesOpened {
  states: BoardStates;
  /** Boards found mid-job (leased/flashing/booting) and set back to idle. */
  interrupted: string[];
  /** The file was unreadable and was set aside under this name (only with `onCorrupt: 'maintenance'`). */
  setAside?: string;
}

export interface BoardStatesOptions {
  /** `<stateDir>/boards.json`. */
  file: string;
  /** The targets of the database: boards in the file that are not here are dropped, new ones start idle. */
  names: readonly string[];
  /**
   * A file that is not ours (bad JSON, unknown version, bad record): `fail` (default) throws a
   * `BoardStateFileError`; `maintenance` (the agent's choice) renames it to
   * `boards.json.corrupt-<time>` and starts every board in `maintenance`, its reason naming the
   * file. Neither guesses: the file may have held boards taken out of service, and a board
   * wrongly idle would take jobs, while an agent that refused to start would be restarted by
   * systemd into the same refusal for ever. An operator resumes the boards once they are checked.
   */
  onCorrupt?: 'fail' | 'maintenance';
  now?: () => number;
}

function copy(s: BoardStatus): BoardStatus {
  return { ...s, ...(s.lastHealth ? { lastHealth: { ...s.lastHealth } } : {}) };
}

export class BoardStates {
  private readonly boards = new Map<string, BoardStatus>();
  private readonly listeners = new Set<BoardChangeListener>();
  private readonly now: () => number;
  /** Writes are serialised and coalesced: at most one running, the next one writes the newest states. */
  private writing: Promise<void> = Promise.resolve();
  private dirty = false;
  private writeError: Error | undefined;

  private constructor(
    readonly file: string,
    now: () => number,
  ) {
    this.now = now;
  }

  /** Read the state file (missing = every board idle) and reconcile it with the targets. */
  static async open(o: BoardStatesOptions): Promise<BoardStatesOpened> {
    const now = o.now ?? Date.now;
    const states = new BoardStates(o.file, now);
    let stored: BoardStatus[];
    let setAside: string | undefined;
    try {
      stored = await BoardStates.read(o.file);
    } catch (err) {
      if (!(err instanceof BoardStateFileError) || o.onCorrupt !== 'maintenance') throw err;
      setAside = `${o.file}.corrupt-${new Date(now()).toISOString().replace(/[:.]/g, '-')}`;
      await rename(o.file, setAside);
      const reason =
        `the board-state file was unreadable (${err.message}; kept as ${setAside}): ` +
        'check the board, then resume it';
      stored = o.names.map((name) => ({ name, state: 'maintenance', since: now(), reason, consecutiveFailures: 0 }));
    }
    const byName = new Map(stored.map((s) => [s.name, s]));
    const interrupted: string[] = [];
    for (const name of o.names) {
      const s = byName.get(name);
      if (!s) {
        states.boards.set(name, { name, state: 'idle', since: now(), consecutiveFailures: 0 });
        continue;
      }
      if (s.state === 'leased' || s.state === 'flashing' || s.state === 'booting') {
        interrupted.push(name);
        states.boards.set(name, {
          ...s,
          state: 'idle',
          since: now(),
          reason: `the agent stopped while the board was ${s.state}; its job did not finish`,
        });
        continue;
      }
      states.boards.set(name, s);
    }
    await states.flush(true);
    return { states, interrupted, ...(setAside ? { setAside } : {}) };
  }

  private static async read(file: string): Promise<BoardStatus[]> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new BoardStateFileError(file, 'is not JSON', { cause: err });
    }
    if (!isObject(raw) || raw.version !== FILE_VERSION || !Array.isArray(raw.boards))
      throw new BoardStateFileError(file, `is not a version ${FILE_VERSION} board-state file`);
    const out: BoardStatus[] = [];
    for (const b of raw.boards) {
      const s = parseStatus(b);
      if (typeof s === 'string') throw new BoardStateFileError(file, s);
      out.push(s);
    }
    return out;
  }

  /**
   * The targets were reloaded: boards new to the database start idle, boards gone from it are
   * forgotten (their states with them), the rest keep theirs. Returns whether anything changed.
   */
  sync(names: readonly string[]): boolean {
    const before = [...this.boards.keys()].join('\n');
    const old = new Map(this.boards);
    this.boards.clear();
    // Rebuilt in the database's order, which list() promises.
    for (const name of names)
      this.boards.set(name, old.get(name) ?? { name, state: 'idle', since: this.now(), consecutiveFailures: 0 });
    const changed = [...this.boards.keys()].join('\n') !== before;
    if (changed) this.schedule();
    return changed;
  }

  /** A copy of one board's status, or undefined for a name that is not a target. */
  get(name: string): BoardStatus | undefined {
    const s = this.boards.get(name);
    return s ? copy(s) : undefined;
  }

  /** Every board, in the targets database's order. */
  list(): BoardStatus[] {
    return [...this.boards.values()].map(copy);
  }

  /** Call `listener` after every change; the returned function unsubscribes. */
  onChange(listener: BoardChangeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Whether a new lease on the board is refused at once. */
  refuses(name: string): boolean {
    const s = this.boards.get(name);
    return s !== undefined && REFUSING_STATES.includes(s.state);
  }

  /**
   * Move a board to `state` (a no-op for an unknown name). `reason` replaces the old one (none =
   * cleared). Returns the new status.
   */
  set(name: string, state: BoardState, reason?: string): BoardStatus | undefined {
    return this.update(name, (s) => {
      if (s.state !== state) {
        s.state = state;
        s.since = this.now();
      }
      if (reason === undefined) delete s.reason;
      else s.reason = reason;
    });
  }

  /** Count a job's end toward the board's health: a board-fault failure adds one, anything else resets to 0. */
  recordJobEnd(name: string, boardFault: boolean): BoardStatus | undefined {
    return this.update(name, (s) => {
      s.consecutiveFailures = boardFault ? s.consecutiveFailures + 1 : 0;
    });
  }

  /** Record a health check's result (the state is set by the caller). */
  recordHealth(name: string, result: HealthResult): BoardStatus | undefined {
    return this.update(name, (s) => {
      s.lastHealth = { ...result };
      if (result.ok) s.consecutiveFailures = 0;
    });
  }

  private update(name: string, change: (s: BoardStatus) => void): BoardStatus | undefined {
    const s = this.boards.get(name);
    if (!s) return undefined;
    const before = JSON.stringify(s);
    const previous = s.state;
    change(s);
    if (JSON.stringify(s) === before) return copy(s);
    this.schedule();
    const out = copy(s);
    for (const l of this.listeners) {
      try {
        l(copy(s), previous);
      } catch {
        // A listener (the dashboard) must not break a job's state change.
      }
    }
    return out;
  }

  private schedule(): void {
    if (this.dirty) return;
    this.dirty = true;
    this.writing = this.writing.then(async () => {
      this.dirty = false;
      try {
        await this.write();
        this.writeError = undefined;
      } catch (err) {
        // Kept for flush(): a state write that fails (disk full) must not end the job that caused it.
        this.writeError = err instanceof Error ? err : new Error(String(err));
      }
    });
  }

  /**
   * Wait until every change so far is on disk. Throws the last write's error, if it failed.
   * `force` writes even when nothing changed (open() uses it to record the reconciled states).
   */
  async flush(force = false): Promise<void> {
    if (force) this.schedule();
    await this.writing;
    if (this.writeError !== undefined) throw this.writeError;
  }

  private async write(): Promise<void> {
    const body: StateFile = { version: FILE_VERSION, boards: this.list() };
    const tmp = `${this.file}.tmp-${process.pid}`;
    const handle = await open(tmp, 'w', 0o600);
    try {
      await handle.writeFile(JSON.stringify(body, null, 2) + '\n');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, this.file);
    // The rename is durable only once the folder's entry is on disk too.
    const dir = await open(path.dirname(this.file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
