/**
 * No TFTP input stops the server: generated input (fuzz-input.ts) for a few seconds over real UDP
 * on loopback, first at a bare server, then at the agent itself, which must afterwards serve a
 * whole job on a simulated board. An exception in any packet handler would surface here as an
 * unhandled error and fail the run; a handler that only logs its failure fails the log checks.
 *
 * Replay a failure with its seed: TFTP_FUZZ_SEED=<seed> TFTP_FUZZ_MS=<ms> npx vitest run test/tftp/fuzz.test.ts
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createLogger, type LogRecord } from '../../runner-agent/src/log.js';
import { tftpGet, tftpPut } from '../../runner-agent/src/tftp/client.js';
import { TftpServer, type TftpResolver } from '../../runner-agent/src/tftp/server.js';
import type { StagedJob } from '../../runner-agent/src/staging/board-files.js';
import { startLab, type Lab } from '../support/lab.js';
import { fuzzTftp, type FuzzStats } from './fuzz-input.js';
import { patternedData } from './helpers.js';
import { waitUntil } from '../support/wait.js';

const SEED = Number(process.env.TFTP_FUZZ_SEED ?? 0x5eed);
const MS = Number(process.env.TFTP_FUZZ_MS ?? 3000);
const MiB = 1024 * 1024;

/** A few 127/8 addresses for the fuzzing sockets (never a lab board's own). */
function fuzzAddresses(base: number): string[] {
  return ['127.0.0.1', ...Array.from({ length: 6 }, (_, i) => `127.${base}.${i + 1}.${(SEED + i) % 250 || 1}`)];
}

function reached(stats: FuzzStats): void {
  // The input got where it was meant to: transfers started and answers of every kind came back.
  const seen = JSON.stringify(stats);
  expect(stats.transfers, seen).toBeGreaterThan(20);
  expect(stats.answers[3] ?? 0, seen).toBeGreaterThan(0); // DATA
  expect(stats.answers[6] ?? 0, seen).toBeGreaterThan(0); // OACK
  for (const code of [1, 2, 4, 5])
    expect(stats.errorCodes[code] ?? 0, `error code ${code}: ${seen}`).toBeGreaterThan(0);
}

describe(`TFTP fuzz (seed ${SEED}, ${MS} ms)`, () => {
  let server: TftpServer | undefined;
  let lab: Lab | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
    await lab?.stop();
    lab = undefined;
  });

  it('a bare server: answers or drops each peer, frees every slot, then serves a download and an upload', async () => {
    const files: Record<string, Buffer> = {
      empty: Buffer.alloc(0),
      f511: patternedData(511, 2),
      f512: patternedData(512, 3),
      f100k: patternedData(100_000, 4),
      f3m: patternedData(3 * MiB, 5),
    };
    const uploads: Buffer[] = [];
    const resolver: TftpResolver = {
      async resolveRead(req) {
        if (req.path === 'rejects') return { size: 10_000, read: () => Promise.reject(new Error('disk gone')) };
        const data = files[req.path];
        return data ? { size: data.length, read: async (p, n) => data.subarray(p, p + n) } : null;
      },
      async resolveWrite(req) {
        return req.path.startsWith('up/') ? { maxSize: 64 * 1024, receive: async (d) => void uploads.push(d) } : null;
      },
    };
    const logs: LogRecord[] = [];
    server = new TftpServer({
      address: '127.0.0.1',
      port: 0,
      resolver,
      log: createLogger({ level: 'debug', sink: (r) => logs.push(r) }),
      // Short timeouts so the fuzz's abandoned transfers end soon after it; small caps so it hits them.
      timeoutMs: 100,
      retries: 3,
      maxTimeout: 1,
      maxTransfersPerClient: 4,
      maxTransfers: 24,
    });
    const { port } = await server.listen();
    const stats = await fuzzTftp({
      host: '127.0.0.1',
      port,
      seed: SEED,
      ms: MS,
      workers: 12,
      addresses: fuzzAddresses(201),
      names: { read: [...Object.keys(files), 'rejects'], write: ['up/a', 'up/b/c'] },
    });
    reached(stats);
    expect(stats.errorCodes[0]).toBeGreaterThan(0); // refusals, drops, timeouts
    // Every transfer ends and gives its slot back.
    await waitUntil(() => server!.activeTransfers === 0, 'every fuzzed transfer to end', { ms: 10_000 });
    expect(logs.filter((r) => r.level === 'error')).toEqual([]);
    const got = await tftpGet({ host: '127.0.0.1', port, path: 'f3m', blksize: 1468, windowsize: 8 });
    expect(got!.equals(files.f3m!)).toBe(true);
    const upload = patternedData(20_000, 9);
    uploads.length = 0;
    await tftpPut({ host: '127.0.0.1', port, path: 'up/after', data: upload, blksize: 1024 });
    expect(uploads.some((u) => u.equals(upload))).toBe(true);
  });

  it('the agent: fuzzed beside a staged job whose hooks throw, then flashes a board end to end', async () => {
    lab = await startLab({ boards: [{ name: 'pi-a', mac: '02:00:00:00:00:5a' }] });
    const addresses = fuzzAddresses(202);
    // A staged job of the fuzz's own (served to one of its addresses): real files to transfer,
    // report names, uploads, and hooks that throw on some names, as a buggy layout's might.
    const fake: StagedJob = {
      jobId: 'fuzzjob1',
      targetIp: addresses[1]!,
      files: new Map([
        ['flash.scr', { kind: 'buffer', data: patternedData(1500, 6) }],
        ['fuzzjob1/part-001', { kind: 'buffer', data: patternedData(2 * MiB, 7) }],
        ['fuzzjob1/part-002', { kind: 'buffer', data: Buffer.alloc(0) }],
        ['throws', { kind: 'buffer', data: Buffer.alloc(10) }],
      ]),
      beaconPrefix: 'fuzzjob1/0123456789abcdef/',
      onRead: (rel) => {
        if (rel === 'throws') throw new Error('layout bug on read');
      },
      onProgress: () => {
        throw new Error('layout bug on progress');
      },
      onBeacon: (message) => {
        if (message.startsWith('boom')) throw new Error('layout bug on a report');
      },
      onTransferEnd: () => {},
      onWrite: (rel) => (rel === 'up' ? { maxSize: 4096, receive: async () => {} } : null),
    };
    const macdir = '02-00-00-00-00-fe';
    await lab.agent.files.stage(macdir, fake, {});
    const names = [...fake.files.keys(), 'up', `${fake.beaconPrefix}start`, `${fake.beaconPrefix}boom`].map(
      (n) => `${macdir}/${n}`,
    );
    const stats = await fuzzTftp({
      host: lab.agent.tftp.address,
      port: lab.agent.tftp.port,
      seed: SEED + 1000,
      ms: MS,
      workers: 12,
      // Most sockets on the staged job's address, so most transfers are real ones (and hit its cap).
      addresses: [...addresses, ...Array.from({ length: 12 }, () => fake.targetIp)],
      names: { read: [...names, `${macdir}/missing`, '02-00-00-00-00-5a/flash.scr'], write: [`${macdir}/up`] },
    });
    reached(stats);
    await lab.agent.files.unstage(macdir);
    // Errors in the log are the fake layout's bugs, each logged with its stack, and nothing else.
    const errors = lab.logs.filter((r) => r.level === 'error');
    const expected = (r: LogRecord) =>
      (/hook failed$/.test(r.msg) && /layout bug/.test(String(r.fields.stack))) ||
      (r.msg === 'TFTP transfer failed unexpectedly' &&
        /^internal error \((read|beacon)\)$/.test(String(r.fields.error)));
    expect(errors.filter((r) => !expected(r))).toEqual([]);

    // The agent still serves a whole job (fuzzed transfers may still be timing out beside it).
    const conn = await lab.connect();
    const img = await lab.image('a.img', 2 * MiB + 512, 3);
    await conn.lease('pi-a');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256 });
    expect(result).toMatchObject({ ok: true, code: 'OK', bytesWritten: img.size });
    const card = await readFile(path.join(lab.agent.config.stateDir, 'sim', 'pi-a.card'));
    expect(card.subarray(0, img.size).equals(await readFile(img.path))).toBe(true);
  });
});
