/**
 * Structured log lines on stdout (journald keeps them): `time level msg key=value…`.
 * A child logger carries fields (target, job) onto every line it writes, so every line of a job
 * names its target and job.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Fields = Record<string, string | number | boolean | undefined | null>;

export interface LogRecord {
  time: Date;
  level: Level;
  msg: string;
  fields: Fields;
}

export type LogSink = (record: LogRecord) => void;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(fields: Fields): Logger;
}

function quote(value: string): string {
  return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
}

export function formatRecord(record: LogRecord): string {
  const parts = [record.time.toISOString(), record.level.toUpperCase().padEnd(5), quote(record.msg)];
  for (const [key, value] of Object.entries(record.fields)) {
    if (value === undefined || value === null) continue;
    parts.push(`${key}=${quote(String(value))}`);
  }
  return parts.join(' ');
}

export const stdoutSink: LogSink = (record) => {
  process.stdout.write(formatRecord(record) + '\n');
};

export function createLogger(options: { level?: Level; sink?: LogSink; fields?: Fields } = {}): Logger {
  const threshold = LEVELS[options.level ?? 'info'];
  const sink = options.sink ?? stdoutSink;
  const make = (base: Fields): Logger => {
    const write = (level: Level, msg: string, fields?: Fields) => {
      if (LEVELS[level] < threshold) return;
      sink({ time: new Date(), level, msg, fields: { ...base, ...fields } });
    };
    return {
      debug: (msg, fields) => write('debug', msg, fields),
      info: (msg, fields) => write('info', msg, fields),
      warn: (msg, fields) => write('warn', msg, fields),
      error: (msg, fields) => write('error', msg, fields),
      child: (fields) => make({ ...base, ...fields }),
    };
  };
  return make(options.fields ?? {});
}

/** A logger that drops everything: for tests that do not look at logs. */
export const silentLogger: Logger = createLogger({ sink: () => {} });
