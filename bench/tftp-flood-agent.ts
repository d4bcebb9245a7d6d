/**
 * The agent of the TFTP flood bench (tftp-flood.ts), in a process of its own so that the RSS
 * measured is the agent's alone, compiled and run by plain Node as the installed agent is: a
 * simulated lab (test/support/lab.ts) with two boards, one that never shows up (its job stays
 * staged, so its parts are files that exist) and one that flashes. It tells its parent over IPC
 * where it listens, answers memory questions, and stops when told to.
 */
import { createLogger, formatRecord } from '../runner-agent/src/log.js';
import { LAB_TOKEN, startLab } from '../test/support/lab.js';

// Log lines are formatted as the real agent's are, then dropped: their cost counts, not their disk.
const log = createLogger({ level: 'info', sink: (r) => void formatRecord(r) });
const lab = await startLab({
  boards: [
    { name: 'staged', mac: '02:00:00:00:f1:01', reset: 'sim:no-show' },
    { name: 'flasher', mac: '02:00:00:00:f1:02' },
  ],
  config: {
    logLevel: 'info',
    flash: { partSize: '4MiB', retries: 2 },
    timeouts: { boardShow: 600, stall: 60, boot: 30, leaseGrace: 30, shutdown: 5 },
  },
  start: { log },
});
process.on('message', (m: { type: string }) => {
  if (m.type === 'memory') process.send!({ type: 'memory', usage: process.memoryUsage() });
  if (m.type === 'stop') void lab.stop().finally(() => process.exit(0));
});
process.send!({
  type: 'ready',
  url: lab.agent.url,
  token: LAB_TOKEN,
  tftp: lab.agent.tftp,
  tftpRoot: lab.agent.config.tftp.root,
  targets: lab.agent.targets().map((t) => ({ name: t.name, ip: t.ip, mac: t.mac })),
});
