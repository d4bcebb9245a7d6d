/** Shared bits of the reset-line tests: a target for a spec, and a context that records logs. */
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { parseTargets, type Target } from '../../runner-agent/src/targets/database.js';
import type { ResetContext } from '../../runner-agent/src/reset/index.js';

export function targetWith(reset: string, name = 'board-1'): Target {
  const csv = `name,mac,ip,reset\n${name},b8:27:eb:28:f6:6d,127.0.0.9,"${reset.replaceAll('"', '""')}"\n`;
  const [target] = parseTargets(csv, 'test.csv');
  if (!target) throw new Error('no target parsed');
  return target;
}

export function testContext(overrides: Partial<ResetContext> = {}): ResetContext & { records: LogRecord[] } {
  const records: LogRecord[] = [];
  return { log: createLogger({ level: 'debug', sink: (r) => records.push(r) }), pulseMs: 20, records, ...overrides };
}

/** The rejection of a promise, failing the test when it resolves. */
export async function rejectionOf(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected the promise to reject, but it resolved');
}
