/**
 * Layout `seed`: flashes a board that still carries the seed system's recovery card, as that card
 * expects (board/seed-card.ts has what it speaks). No stage 2: the card fetches
 * `<mac with :>/rpi_image_part_N` — the whole image in 750 MiB pieces — and uploads a 4-byte
 * `OK`/`FAILED` report; the report is the only proof there is.
 */
import { CodedError } from '../../../src/protocol/errors.js';
import { formatBytes } from '../../../src/protocol/units.js';
import {
  interpretSeedResult,
  planSeedParts,
  SeedReports,
  seedFolder,
  type SeedOutcome,
  type SeedPlan,
} from '../board/seed-card.js';
import type { StagedFile } from '../staging/board-files.js';
import { ImageView } from '../staging/image-view.js';
import type { BoardWatch, FlashMethod, FlashOutcome, Layout, LayoutJob } from './layout.js';

export const seed: Layout = (job, board) => new SeedFlash(job, board);

class SeedFlash implements FlashMethod {
  private readonly folder: string;
  private readonly reports = new SeedReports();
  private plan?: SeedPlan;
  private part0Fetched = false;
  private reported = false;
  private result?: SeedOutcome;

  constructor(
    private readonly job: LayoutJob,
    private readonly board: BoardWatch,
  ) {
    this.folder = seedFolder(job.target.mac);
  }

  async stage(): Promise<void> {
    const { image, target, config } = this.job;
    const plan = planSeedParts(image.imageSize, { partBytes: config.flash.seedPartSize });
    this.plan = plan;
    const view = new ImageView(image.path, image.imageSize);
    const files = new Map<string, StagedFile>(
      plan.parts.map((p) => [p.name, { kind: 'range', view, offset: p.offset, size: p.size }]),
    );
    const firstPart = plan.parts[0]!.name;
    await this.job.files.stage(
      this.folder,
      {
        jobId: this.job.id,
        targetIp: target.ip,
        files,
        onRead: (rel) => {
          if (rel === firstPart && !this.part0Fetched) {
            this.part0Fetched = true;
            this.board.log('info', `seed card fetched ${this.folder}/${rel}`);
          }
          this.board.activity();
        },
        onProgress: () => this.board.activity(),
        onBeacon: () => {},
        onTransferEnd: (rel, t) => {
          const part = plan.parts.find((p) => p.name === rel);
          // The card writes what it fetched before it fetches the next part: a silence, no stall.
          if (part && t.ok) {
            const rate = config.flash.cardWriteRate;
            this.board.busyFor(
              part.written / rate,
              `seed part ${part.index}: the card writes ${formatBytes(part.written)} ` +
                `(at ${formatBytes(rate)}/s, the slowest card)`,
            );
          }
          this.board.activity();
        },
        onWrite: (rel, req) => {
          const report = this.reports.onWrite(rel, req);
          if (!report) return null;
          return {
            maxSize: report.maxSize,
            receive: async (data) => {
              await report.receive(data);
              // The card reboots after its report: the parts must be gone before it looks again.
              this.job.files.withdraw(this.folder);
              this.reported = true;
              this.board.flashDone();
              this.board.log(
                rel === 'OK' ? 'info' : 'error',
                `seed card reported ${rel} (${data.length} bytes)`,
                'board',
              );
              this.board.activity();
            },
          };
        },
      },
      {},
    );
    this.board.log(
      'info',
      `staged ${plan.parts.length} seed part(s) of ${formatBytes(image.imageSize)} ` +
        `for ${target.name} under ${this.folder}/`,
    );
  }

  async watch(): Promise<void> {
    const plan = this.plan!;
    const { boardShow, stall } = this.job.timeouts;
    const firstPart = `${this.folder}/${plan.parts[0]!.name}`;
    this.board.log(
      'info',
      `waiting for the seed card of ${this.job.target.name} to fetch ${firstPart} (up to ${boardShow} s)`,
    );
    await this.board.until(
      () => this.part0Fetched,
      boardShow,
      () => this.failure(interpretSeedResult(plan, undefined, { part0Fetched: false, waitedMs: boardShow * 1000 })),
    );
    await this.board.until(
      () => this.reported,
      stall,
      () => {
        const silent = interpretSeedResult(plan, undefined, { part0Fetched: true });
        return this.failure({ ...silent, message: `${silent.message} (quiet for ${stall} s)` });
      },
    );
  }

  verify(): void {
    this.result = interpretSeedResult(this.plan!, this.reports.first, { part0Fetched: this.part0Fetched });
    if (this.result.code !== 'OK') throw this.failure(this.result);
    this.board.log('info', this.result.message);
  }

  outcome(): FlashOutcome {
    // The card only counts: what it claimed is all there is to report.
    const ok = this.result?.code === 'OK';
    const claimed = ok ? this.plan!.writtenBytes : (this.result?.reportedCount ?? 0);
    return { card: ok ? 'written' : this.part0Fetched ? 'partial' : 'untouched', bytesWritten: claimed, parts: [] };
  }

  unstage(): Promise<void> {
    return this.job.files.unstage(this.folder);
  }

  private failure(o: SeedOutcome): CodedError {
    return new CodedError(o.code, o.message);
  }
}
