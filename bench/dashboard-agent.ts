/**
 * The agent of the dashboard bench (dashboard.ts), in a process of its own so that the CPU measured
 * is the agent's alone: a simulated lab (test/support/lab.ts) of `BOARDS` boards with the
 * dashboard and /metrics on. It tells its parent over IPC where it listens, answers CPU questions
 * (process.cpuUsage()), and stops when told to.
 */
import { createLogger, formatRecord } from '../runner-agent/src/log.js';
import { LAB_TOKEN, startLab } from '../test/support/lab.js';
import { LiveFeed } from '../runner-agent/src/dashboard/live-feed.js';
import { LabMetrics } from '../runner-agent/src/metrics/lab-metrics.js';

/**
 * Milliseconds the agent's thread spent serving pages and scrapes: each live-feed tick (snapshot,
 * serialising, writing to every page), each new page's first snapshot, each scrape. A direct count
 * beside the parent's with/without comparison, which the jobs' own variance makes noisy.
 */
let servingMs = 0;
function timed(proto: object, name: string): void {
  const target = proto as Record<string, (...args: unknown[]) => unknown>;
  const original = target[name]!;
  target[name] = function (this: unknown, ...args: unknown[]) {
    const started = performance.now();
    const out = original.apply(this, args);
    if (out instanceof Promise) return out.finally(() => (servingMs += performance.now() - started));
    servingMs += performance.now() - started;
    return out;
  };
}
timed(LiveFeed.prototype, 'flush');
timed(LiveFeed.prototype, 'accept');
timed(LabMetrics.prototype, 'scrape');

const boards = Number(process.env.BOARDS ?? 50);
// Log lines are formatted as the real agent's are, then dropped: their cost counts, not their disk.
const log = createLogger({ level: 'info', sink: (r) => void formatRecord(r) });
const lab = await startLab({
  boards: Array.from({ length: boards }, (_, i) => ({
    name: `pi-${String(i + 1).padStart(2, '0')}`,
    mac: `02:00:00:00:${(0xb0 + (i >> 8)).toString(16)}:${(i & 0xff).toString(16).padStart(2, '0')}`,
  })),
  config: {
    logLevel: 'info',
    flash: { partSize: '1MiB', retries: 2 },
    timeouts: { boardShow: 60, stall: 60, boot: 30, leaseGrace: 30, shutdown: 5 },
    metrics: { enabled: true },
    dashboard: { maxClients: 64 },
  },
  start: { log },
});
process.on('message', (m: { type: string }) => {
  if (m.type === 'cpu') process.send!({ type: 'cpu', usage: process.cpuUsage(), at: performance.now(), servingMs });
  if (m.type === 'stop') void lab.stop().finally(() => process.exit(0));
});
process.send!({
  type: 'ready',
  url: lab.agent.url,
  httpUrl: lab.agent.httpUrl,
  token: LAB_TOKEN,
  dir: lab.dir,
  targets: lab.agent.targets().map((t) => t.name),
});
