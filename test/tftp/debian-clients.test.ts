/**
 * Debian's TFTP clients (curl, atftp, tftp-hpa) against our server, directly and through the lossy
 * relay. A missing binary fails under CI (naming the package to install) and is skipped elsewhere.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Opcode } from '../../runner-agent/src/tftp/packets.js';
import { realFileResolver, TftpServer } from '../../runner-agent/src/tftp/server.js';
import { LossyUdpRelay } from '../support/lossy-udp-relay.js';
import { makeTempDir, patternedData, sha256 } from './helpers.js';

const CLIENTS = {
  curl: { binary: '/usr/bin/curl', debianPackage: 'curl' },
  atftp: { binary: '/usr/bin/atftp', debianPackage: 'atftp' },
  tftp: { binary: '/usr/bin/tftp', debianPackage: 'tftp-hpa' },
} as const;
type Client = keyof typeof CLIENTS;

function which(client: Client): string | undefined {
  const { binary } = CLIENTS[client];
  return existsSync(binary) ? binary : undefined;
}

/** Runs a client to completion (asynchronously: our server lives in this same event loop). */
function run(binary: string, args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(binary, args, { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

const FILES: Record<string, number> = {
  'small.bin': 5000,
  'exact.bin': 1468 * 20,
  'dir/image.bin': 3 * 1024 * 1024 + 17,
};

/** RRQ, OACK, ACK of block 0, ERROR: the packets around the start and end of a transfer. */
function isOpening(packet: Buffer): boolean {
  const op = packet.readUInt16BE(0);
  return (
    op === Opcode.RRQ ||
    op === Opcode.OACK ||
    op === Opcode.ERROR ||
    (op === Opcode.ACK && packet.readUInt16BE(2) === 0)
  );
}

for (const client of Object.keys(CLIENTS) as Client[]) {
  const binary = which(client);
  const missing = `${client} is not installed: apt-get install ${CLIENTS[client].debianPackage}`;
  // Under CI a missing client is a failure, not a silent skip.
  const suite = binary || process.env.CI ? describe : describe.skip;

  suite(`Debian ${client} against our TFTP server${binary ? '' : ` (skipped: ${missing})`}`, () => {
    let tmp: Awaited<ReturnType<typeof makeTempDir>>;
    let server: TftpServer;
    let relay: LossyUdpRelay;
    let directPort: number;
    let lossyPort: number;

    beforeAll(async () => {
      tmp = await makeTempDir();
      for (const [name, size] of Object.entries(FILES)) {
        await mkdir(join(tmp.dir, 'root', name, '..'), { recursive: true });
        await writeFile(join(tmp.dir, 'root', name), patternedData(size, size));
      }
      // atftp re-ACKs a duplicate block once, then stays silent until its own 5 s timer fires — and
      // every packet it receives restarts that timer. A server retransmitting faster than every 5 s
      // (after a lost window-final ACK) keeps atftp silent for ever: a livelock of the pair, seen
      // in CI. So atftp's server waits longer than atftp does; the others keep a short timeout,
      // with retries long enough to outlast their own 5 s timeouts.
      const serverTimeout = client === 'atftp' ? { timeoutMs: 5_500, retries: 8 } : { timeoutMs: 200, retries: 50 };
      server = new TftpServer({
        address: '127.0.0.1',
        port: 0,
        resolver: realFileResolver(join(tmp.dir, 'root')),
        ...serverTimeout,
      });
      directPort = (await server.listen()).port;
      relay = new LossyUdpRelay({
        target: { address: '127.0.0.1', port: directPort },
        seed: 42,
        drop: 0.01,
        duplicate: 0.005,
        reorder: 0.01,
        // The opening exchange is spared: atftp aborts on a repeated OACK ("unexpected OACK"), and
        // curl asks for a 5 s timeout, so each loss costs it 5 s. The data phase is what we test.
        spare: (packet) => isOpening(packet),
      });
      lossyPort = (await relay.listen()).port;
    });
    afterAll(async () => {
      await relay?.close();
      await server?.close();
      await tmp?.remove();
    });

    /** Arguments that download `path` into `out` from `port`, for this client. */
    function argsFor(
      path: string,
      out: string,
      port: number,
      opts: { blksize?: number; windowsize?: number },
    ): string[] {
      switch (client) {
        case 'curl':
          return [
            '-sS',
            ...(opts.blksize ? ['--tftp-blksize', String(opts.blksize)] : []),
            '-o',
            out,
            `tftp://127.0.0.1:${port}/${path}`,
          ];
        case 'atftp':
          return [
            ...(opts.blksize ? ['--option', `blksize ${opts.blksize}`] : []),
            ...(opts.windowsize ? ['--option', `windowsize ${opts.windowsize}`] : []),
            '--option',
            'tsize', // asks for the size, as U-Boot does
            '-g',
            '-r',
            path,
            '-l',
            out,
            '127.0.0.1',
            String(port),
          ];
        case 'tftp':
          // tftp-hpa's client has no option to ask for blksize or windows: plain RFC 1350.
          return ['-m', 'binary', '127.0.0.1', String(port), '-c', 'get', path, out];
      }
    }

    const variants: Array<{ blksize?: number; windowsize?: number }> =
      client === 'atftp'
        ? [{}, { blksize: 1468 }, { blksize: 1468, windowsize: 8 }, { blksize: 1468, windowsize: 16 }]
        : client === 'curl'
          ? [{}, { blksize: 1468 }]
          : [{}];

    for (const via of ['direct', 'lossy relay'] as const) {
      for (const v of variants) {
        it(`downloads every file intact, ${via}, ${JSON.stringify(v)}`, async () => {
          if (!binary) throw new Error(missing);
          for (const [path, size] of Object.entries(FILES)) {
            // Through loss, 6000 lock-step blocks of 512 bytes cost curl and tftp-hpa minutes of their
            // 5 s timeouts; the large file goes through the relay with windows (atftp) only.
            if (via === 'lossy relay' && size > 100_000 && !v.windowsize) continue;
            const out = join(tmp.dir, `out-${client}-${Math.random().toString(36).slice(2)}`);
            const result = await run(binary, argsFor(path, out, via === 'direct' ? directPort : lossyPort, v));
            expect(result.code, `${client} ${path}: ${result.output}`).toBe(0);
            expect(sha256(await readFile(out)), path).toBe(sha256(patternedData(size, size)));
          }
        }, 120_000);
      }
    }

    it('gets "file not found" for a missing file', async () => {
      if (!binary) throw new Error(missing);
      const out = join(tmp.dir, `missing-${client}`);
      const result = await run(binary, argsFor('no-such-file', out, directPort, {}));
      if (client === 'tftp')
        expect(result.output).toMatch(/not found/i); // tftp-hpa exits 0 even on errors
      else expect(result.code).not.toBe(0);
    });
  });
}
