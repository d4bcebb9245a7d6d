/**
 * A process's resident memory from /proc, for the benches that watch the agent in a child process:
 * one reading, the median of a few (a reference that one page-fault burst does not skew), and the
 * peak over a stretch sampled every 50 ms.
 */
import { readFile } from 'node:fs/promises';

export async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) * 1024;
}

export async function medianRss(pid: number, samples = 5): Promise<number> {
  const values: number[] = [];
  for (let i = 0; i < samples; i++) {
    values.push(await rssOf(pid));
    await new Promise((r) => setTimeout(r, 100));
  }
  return values.sort((a, b) => a - b)[Math.floor(samples / 2)]!;
}

/** Samples a process's RSS until stopped; resolves with the peak. */
export function sampleRss(pid: number): { stop(): Promise<number> } {
  let peak = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      peak = Math.max(peak, await rssOf(pid).catch(() => 0));
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return peak;
    },
  };
}
