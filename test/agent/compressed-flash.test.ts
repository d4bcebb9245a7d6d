/**
 * Issue 13 item 2 on the simulated lab: the real agent, real TFTP and the sim board running the
 * generated stage 2 in the U-Boot shell model. A board whose model's U-Boot has unzip is probed
 * in its first job and gets gzip'd parts from the next one on; a board without unzip stays raw;
 * bad input (a board told to unzip that cannot, a part that never inflates) fails with clear codes
 * and writes nothing past what was verified.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startLab, type Lab } from '../support/lab.js';
import type { AgentMessage } from '../../src/protocol/messages.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

const MiB = 1024 * 1024;
const state = (l: Lab, ...p: string[]) => path.join(l.agent.config.stateDir, ...p);
const cardOf = (l: Lab, name: string) => readFile(state(l, 'sim', `${name}.card`));
const capsOf = async (l: Lab, name: string) =>
  JSON.parse(await readFile(state(l, 'boards', `${name}.caps.json`), 'utf8')) as { unzip: boolean };
/** All zero, compared natively: a 64 MiB card checked byte by byte in JS would stall the agent (same process). */
const allZero = (b: Buffer) => b.equals(Buffer.alloc(b.length));
const logs = (events: AgentMessage[]) =>
  events.flatMap((e) => (e.type === 'log' ? [(e as { message: string }).message] : []));

/** A client whose jobs each return their result and the log lines it saw while the job ran. */
async function client(l: Lab, name: string, img: { path: string; sha256: string; size: number }) {
  const events: AgentMessage[] = [];
  const conn = await l.connect((m) => events.push(m));
  await conn.lease(name);
  await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
  let leased = true;
  return async () => {
    // A lease ends with its job: each further job leases the board again.
    if (!leased) await conn.lease(name);
    leased = false;
    const from = events.length;
    const result = await conn.flash({ sha256: img.sha256, bootCheck: 'none' });
    return { result, lines: logs(events.slice(from)) };
  };
}

async function claimUnzip(l: Lab, name: string): Promise<void> {
  await mkdir(state(l, 'boards'), { recursive: true });
  await writeFile(state(l, 'boards', `${name}.caps.json`), JSON.stringify({ unzip: true, seen: '', job: '' }));
}

describe('compressed parts on the simulated lab', () => {
  it('probes a board in its first job, sends gzip streams from the next, from the cache after that', async () => {
    lab = await startLab({ boards: [{ name: 'pi-z', mac: '02:00:00:00:01:0a' }] });
    const img = await lab.image('z.img', 3 * MiB + 1000, 21);
    const bytes = await readFile(img.path);
    const job = await client(lab, 'pi-z', img);

    const { result: r1, lines: first } = await job();
    expect(r1.code).toBe('OK');
    expect(first).toContainEqual(expect.stringContaining("can unzip: parts travel gzip'd from its next job on"));
    expect(first.some((l) => l.startsWith("gzip'd parts"))).toBe(false);
    expect(await capsOf(lab, 'pi-z')).toMatchObject({ unzip: true });

    // Wipe the card: the second job must write it again, from the gzip streams.
    await writeFile(state(lab, 'sim', 'pi-z.card'), Buffer.alloc(64 * MiB));
    const { result: r2, lines: second } = await job();
    expect(r2).toMatchObject({ ok: true, code: 'OK', bytesWritten: img.size });
    expect(r2.parts.map((p) => p.status)).toEqual(['ok', 'ok', 'ok', 'ok']);
    expect(second).toContainEqual(
      expect.stringMatching(/^gzip'd parts: .* 0 of 4 from the image's cache; compressed 4 part\(s\)/),
    );
    expect(second).toContainEqual(
      expect.stringMatching(/^part 1\/4: served \d+ bytes .* MB\/s gzip'd, .* of the part's 1048576 bytes/),
    );
    expect((await cardOf(lab, 'pi-z')).subarray(0, img.size).equals(bytes)).toBe(true);
    const cached = await readdir(state(lab, 'zparts', img.sha256));
    expect(cached.sort()).toEqual(['0-100000.gz', '100000-100000.gz', '200000-100000.gz', '300000-400.gz']);

    const { result: r3, lines: third } = await job();
    expect(r3.code).toBe('OK');
    expect(third).toContainEqual(expect.stringMatching(/^gzip'd parts: .* 4 of 4 from the image's cache$/));
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it('probes a board without unzip once, records it, and keeps its parts raw', async () => {
    lab = await startLab({ boards: [{ name: 'pi-r', mac: '02:00:00:00:01:1a', reset: 'sim:no-unzip' }] });
    const img = await lab.image('r.img', 2 * MiB, 22);
    const job = await client(lab, 'pi-r', img);
    const { result: r1, lines: first } = await job();
    expect(r1.code).toBe('OK');
    expect(first).toContainEqual(expect.stringContaining('cannot unzip (its probe failed)'));
    expect(await capsOf(lab, 'pi-r')).toMatchObject({ unzip: false });
    const { result: r2, lines: second } = await job();
    expect(r2.code).toBe('OK');
    expect(second.filter((l) => /can(not)? unzip|gzip'd/.test(l))).toEqual([]);
    expect((await cardOf(lab, 'pi-r')).subarray(0, img.size).equals(await readFile(img.path))).toBe(true);
  });

  it('fails a board told to unzip that cannot with BOARD_REPORTED_FAILURE, writing nothing', async () => {
    lab = await startLab({ boards: [{ name: 'pi-n', mac: '02:00:00:00:01:2a', reset: 'sim:no-unzip' }] });
    await claimUnzip(lab, 'pi-n');
    const img = await lab.image('n.img', 2 * MiB, 23);
    const job = await client(lab, 'pi-n', img);
    const { result } = await job();
    expect(result).toMatchObject({ ok: false, code: 'BOARD_REPORTED_FAILURE', card: 'untouched', bytesWritten: 0 });
    expect(result.message).toMatch(/cannot unzip .* nothing was written/);
    const card = await cardOf(lab, 'pi-n').catch(() => Buffer.alloc(0));
    expect(allZero(card)).toBe(true);
    expect(await capsOf(lab, 'pi-n')).toMatchObject({ unzip: false });
    expect(await lab.tftpFolders()).toEqual([]);
    // The next job travels raw and passes.
    expect((await job()).result.code).toBe('OK');
  });

  it('retries a gzip stream that arrives corrupted, then fails; the card past part 1 is untouched', async () => {
    lab = await startLab({ boards: [{ name: 'pi-c', mac: '02:00:00:00:01:3a', reset: 'sim:corrupt-always:2' }] });
    await claimUnzip(lab, 'pi-c');
    const img = await lab.image('c.img', 3 * MiB, 24);
    const { result, lines } = await (await client(lab, 'pi-c', img))();
    expect(result).toMatchObject({ ok: false, code: 'BOARD_REPORTED_FAILURE', card: 'partial', bytesWritten: MiB });
    expect(result.parts.map((p) => [p.status, p.retries])).toEqual([
      ['ok', 0],
      ['failed', 2],
      ['missing', 0],
    ]);
    // A flipped byte mid-stream breaks the deflate data or the part's CRC: either way a retry.
    expect(result.message).toMatch(/part 2 failed at (unzip|download)/);
    expect(lines.filter((l) => /^part 2: (its gzip stream did not unzip|CRC mismatch)/.test(l))).toHaveLength(2);
    const card = await cardOf(lab, 'pi-c');
    expect(card.subarray(0, MiB).equals((await readFile(img.path)).subarray(0, MiB))).toBe(true);
    expect(allZero(card.subarray(MiB))).toBe(true);
    expect(await lab.tftpFolders()).toEqual([]);
  });

  it("a board's windowsize cell is the TFTP window its U-Boot asks for, over flash.tftpWindowSize", async () => {
    lab = await startLab({
      boards: [
        { name: 'pi-w', mac: '02:00:00:00:01:5a', windowsize: 16 },
        { name: 'pi-d', mac: '02:00:00:00:01:6a' },
      ],
      config: { flash: { partSize: '1MiB', tftpWindowSize: 4 } },
    });
    const img = await lab.image('w.img', 2 * MiB, 26);
    for (const [name, window] of [
      ['pi-w', '16'],
      ['pi-d', '4'],
    ] as const) {
      const { result, lines } = await (await client(lab, name, img))();
      expect(result.code).toBe('OK');
      expect(result.tftpOptions).toMatchObject({ windowsize: window });
      expect(lines.filter((l) => new RegExp(`^part \\d/2: served .* windowsize=${window}\\b`).test(l))).toHaveLength(2);
    }
  });

  it('flash.tftpWindowSize auto: one window per job measured on a board (1, 4, 8, 16), then the fastest', async () => {
    lab = await startLab({
      boards: [
        { name: 'pi-t', mac: '02:00:00:00:01:7a' },
        { name: 'pi-r', mac: '02:00:00:00:01:8a', windowsize: 2 },
      ],
      config: { flash: { partSize: '1MiB', compress: 'off', tftpWindowSize: 'auto' } },
    });
    const img = await lab.image('t.img', 2 * MiB, 27);
    const ratesFile = (name: string) => state(lab!, 'boards', `${name}.tftp.json`);
    const rates = async () =>
      JSON.parse(await readFile(ratesFile('pi-t'), 'utf8')) as Record<string, { mbps: number; jobs: number }>;
    /** The window each part download asked for; every part of a job asks for the job's window. */
    const asked = (lines: string[]) =>
      lines.filter((l) => /^part \d\/2: download started/.test(l)).map((l) => /windowsize=(\d+)/.exec(l)?.[1]);
    const job = await client(lab, 'pi-t', img);
    for (const window of [1, 4, 8, 16]) {
      const { result, lines } = await job();
      expect(result.code).toBe('OK');
      expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^TFTP window ${window} \\(.*\\): measuring`)));
      expect(asked(lines)).toEqual([String(window), String(window)]);
      expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^window ${window} measured [\\d.]+ MB/s`)));
      expect(Object.keys(await rates()).sort()).toEqual(
        [1, 4, 8, 16]
          .filter((w) => w <= window)
          .map(String)
          .sort(),
      );
    }
    const measured = await rates();
    const fastest = Object.entries(measured).sort(([, a], [, b]) => b.mbps - a.mbps)[0]![0];
    expect(Object.values(measured).every((r) => r.jobs === 1 && r.mbps > 0)).toBe(true);
    const { result, lines } = await job();
    expect(result.code).toBe('OK');
    expect(lines).toContainEqual(
      expect.stringMatching(new RegExp(`^TFTP window ${fastest} \\(.*\\): the fastest measured`)),
    );
    expect(asked(lines)).toEqual([fastest, fastest]);
    expect((await rates())[fastest]!.jobs).toBe(2);

    // A record that does not parse is measured again from the start; a row's own windowsize is never tuned.
    await writeFile(ratesFile('pi-t'), '{ not json');
    const again = await job();
    expect(again.lines).toContainEqual(expect.stringMatching(/^TFTP window 1 \(.*\): measuring/));
    const row = await (await client(lab, 'pi-r', img))();
    expect(row.result.code).toBe('OK');
    expect(asked(row.lines)).toEqual(['2', '2']);
    expect(row.lines.some((l) => l.startsWith('TFTP window'))).toBe(false);
    await expect(readFile(ratesFile('pi-r'))).rejects.toThrow(/ENOENT/);
  });

  it('neither probes nor compresses with flash.compress off, or for a model whose U-Boot has no unzip', async () => {
    for (const config of [{ flash: { partSize: '1MiB', compress: 'off' } }, { uboot: { defaultModel: 'pi2' } }]) {
      lab = await startLab({ boards: [{ name: 'pi-o', mac: '02:00:00:00:01:4a' }], config });
      await claimUnzip(lab, 'pi-o');
      const img = await lab.image('o.img', 2 * MiB, 25);
      const { result, lines } = await (await client(lab, 'pi-o', img))();
      expect(result.code).toBe('OK');
      expect(lines.filter((l) => /unzip|gzip'd/.test(l))).toEqual([]);
      await lab.stop();
      lab = undefined;
    }
  });
});
