/**
 * The agent's Prometheus metrics (prom-client), one registry per agent (never prom-client's global
 * one: tests run several agents in one process). Counters and histograms are fed by the lab feed
 * (lab-view.ts) as things happen; board states and queue lengths are read from its snapshot at
 * scrape time, so they can never drift from what the dashboard shows.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { LabFeed } from '../lab-view.js';
import { BOARD_STATES } from '../lab/board-states.js';

/** Flash (stage → verify): a small image on a fast card takes seconds, a whole card at class 2 tens of minutes. */
export const FLASH_BUCKETS = [5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600];
/** Boot (the boot check): a Pi's system answers in seconds to a few minutes; the default limit is 300 s. */
export const BOOT_BUCKETS = [1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600];

export class LabMetrics {
  readonly registry = new Registry();
  private readonly unsubscribe: () => void;

  constructor(lab: LabFeed) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'rpi_flash_agent_' });
    const jobs = new Counter({
      name: 'rpi_flash_jobs_total',
      help: 'Flash jobs ended, by result code (README: result codes)',
      labelNames: ['code'] as const,
      registers,
    });
    const flash = new Histogram({
      name: 'rpi_flash_flash_duration_seconds',
      help: 'Seconds from the start of staging to the end of verify, for jobs that got that far',
      buckets: FLASH_BUCKETS,
      registers,
    });
    const boot = new Histogram({
      name: 'rpi_flash_boot_duration_seconds',
      help: 'Seconds the boot check waited for the new system, for jobs that ran one and passed',
      buckets: BOOT_BUCKETS,
      registers,
    });
    const tftp = new Counter({
      name: 'rpi_flash_tftp_served_bytes_total',
      help: 'Bytes served by the TFTP server and acknowledged by the boards',
      registers,
    });
    const upload = new Counter({
      name: 'rpi_flash_upload_bytes_total',
      help: 'Image bytes received from clients and accepted by the store',
      registers,
    });
    new Gauge({
      name: 'rpi_flash_boards',
      help: 'Boards in each state',
      labelNames: ['state'] as const,
      registers,
      collect() {
        const counts = new Map(BOARD_STATES.map((s) => [s, 0]));
        for (const b of lab.snapshot().boards) counts.set(b.state, (counts.get(b.state) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'rpi_flash_queue_length',
      help: 'Lease requests waiting, per board',
      labelNames: ['target'] as const,
      registers,
      collect() {
        this.reset();
        for (const b of lab.snapshot().boards) this.set({ target: b.name }, b.queue);
      },
    });
    new Gauge({
      name: 'rpi_flash_pool_queue_length',
      help: 'Lease requests waiting for any board of a pool',
      labelNames: ['pool'] as const,
      registers,
      collect() {
        this.reset();
        for (const p of lab.snapshot().pools) this.set({ pool: p.name }, p.queue);
      },
    });
    new Gauge({
      name: 'rpi_flash_jobs_running',
      help: 'Flash jobs running now',
      registers,
      collect() {
        this.set(lab.snapshot().running.length);
      },
    });
    // Every code that ended a job at least once is a series; OK starts at 0 so a rate() has a base.
    jobs.inc({ code: 'OK' }, 0);
    this.unsubscribe = lab.subscribe((event) => {
      switch (event.type) {
        case 'job-ended': {
          const { code, timings } = event.result;
          jobs.inc({ code });
          if (timings.verify !== undefined)
            flash.observe((timings.stage ?? 0) + (timings.reset ?? 0) + (timings.transfer ?? 0) + timings.verify);
          if (timings.boot !== undefined && code === 'OK') boot.observe(timings.boot);
          return;
        }
        case 'tftp-served':
          return tftp.inc(event.bytes);
        case 'uploaded':
          return upload.inc(event.bytes);
        default:
          return;
      }
    });
  }

  /** The text exposition (Prometheus text format 0.0.4) and its content type. */
  async scrape(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }

  close(): void {
    this.unsubscribe();
    this.registry.clear();
  }
}
