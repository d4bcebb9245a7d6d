/**
 * The bundled action (node dist/index.js, as GitHub runs it) against the real agent on the
 * simulated lab (test/support/lab.ts): real WebSocket protocol, real TFTP, the simulated board.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { runAction, TEST_TIMEOUT_MS, type RunOptions } from './run-action.js';
import { LAB_TOKEN, startLab, type Lab } from '../support/lab.js';
import { waitUntil } from '../support/wait.js';

let lab: Lab | undefined;
let workspace: string | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
  if (workspace) rmSync(workspace, { recursive: true, force: true });
  workspace = undefined;
});

const MiB = 1024 * 1024;

/** The lab's sample image (one the simulated board can "boot") as sdcard.img in a fresh workspace. */
async function makeWorkspace(l: Lab, size = 3 * MiB): Promise<{ dir: string; data: Buffer }> {
  workspace = mkdtempSync(path.join(tmpdir(), 'action-e2e-'));
  const sample = await l.image('sample.img', size);
  const data = readFileSync(sample.path);
  writeFileSync(path.join(workspace, 'sdcard.img'), data);
  return { dir: workspace, data };
}

async function start(
  boards: Array<{ name: string; mac: string; reset?: string }>,
  config?: Record<string, unknown>,
): Promise<Lab> {
  lab = await startLab({ boards, ...(config && { config }) });
  return lab;
}

function act(l: Lab, dir: string, inputs: Record<string, string>, extra: Partial<RunOptions> = {}) {
  return runAction({
    workspace: dir,
    inputs: { 'agent-url': l.agent.url, token: LAB_TOKEN, image: 'sdcard.img', ...inputs },
    ...extra,
  });
}

/** A TCP relay in front of the agent whose connections the test can cut, as a flaky network would. */
async function startRelay(target: URL) {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `ws://127.0.0.1:${port}`,
    cuts: 0,
    cut() {
      this.cuts++;
      for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/**
 * Forwards to `out` at most `bytesPerSecond`, as a slow link would, and stops reading from `source`
 * while more than 1 MiB waits: the sender's socket fills, as behind a slow link.
 */
function pacedWriter(out: Socket, source: Socket, bytesPerSecond: number): (data: Buffer) => void {
  const queue: Buffer[] = [];
  let queued = 0;
  const tickMs = 20;
  const timer = setInterval(() => {
    for (let budget = (bytesPerSecond * tickMs) / 1000; budget > 0 && queue.length > 0;) {
      const head = queue[0]!;
      const n = Math.min(head.length, budget);
      out.write(head.subarray(0, n));
      if (n === head.length) queue.shift();
      else queue[0] = head.subarray(n);
      queued -= n;
      budget -= n;
    }
    if (queued < MiB / 4 && source.isPaused()) source.resume();
  }, tickMs);
  for (const s of [out, source]) s.on('close', () => clearInterval(timer));
  return (data) => {
    queue.push(data);
    queued += data.length;
    if (queued > MiB) source.pause();
  };
}

/**
 * A relay that reads the client's WebSocket frames (RFC 6455: client frames are masked) so a test
 * can cut the connection at an exact protocol moment: `cutBefore` sees each text message and, when
 * it returns true, the relay drops that frame unforwarded and cuts every connection, as a network
 * failure right before the agent would have read it. It also counts the binary payload bytes the
 * client sent before and after the first cut, and after the first text message `mark` picks (in the
 * order the client sent them). `bytesPerSecond` makes the client-to-agent direction a slow link.
 */
async function startFrameRelay(
  target: URL,
  o: {
    cutBefore?: (message: { type?: string }) => boolean;
    cutAfterBinaryBytes?: number;
    mark?: (message: { type?: string }) => boolean;
    bytesPerSecond?: number;
  } = {},
) {
  const sockets = new Set<Socket>();
  const counts = { cuts: 0, binaryBefore: 0, binaryAfter: 0, markedAt: 0, binaryAfterMark: 0 };
  const cut = () => {
    counts.cuts++;
    for (const s of sockets) s.destroy();
  };
  const server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    upstream.pipe(client);
    const forward = o.bytesPerSecond
      ? pacedWriter(upstream, client, o.bytesPerSecond)
      : (b: Buffer) => upstream.write(b);
    let pending = Buffer.alloc(0);
    let upgraded = false;
    client.on('data', (data: Buffer) => {
      pending = Buffer.concat([pending, data]);
      if (!upgraded) {
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        forward(pending.subarray(0, end + 4));
        pending = pending.subarray(end + 4);
        upgraded = true;
      }
      for (;;) {
        if (pending.length < 2) return;
        const opcode = pending[0]! & 0x0f;
        let length = pending[1]! & 0x7f;
        let at = 2;
        if (length === 126) {
          if (pending.length < 4) return;
          length = pending.readUInt16BE(2);
          at = 4;
        } else if (length === 127) {
          if (pending.length < 10) return;
          length = Number(pending.readBigUInt64BE(2));
          at = 10;
        }
        const masked = (pending[1]! & 0x80) !== 0;
        const frameEnd = at + (masked ? 4 : 0) + length;
        if (pending.length < frameEnd) return;
        const frame = pending.subarray(0, frameEnd);
        pending = pending.subarray(frameEnd);
        if (opcode === 1 && ((o.cutBefore && counts.cuts === 0) || (o.mark && !counts.markedAt))) {
          const key = masked ? frame.subarray(at, at + 4) : Buffer.alloc(4);
          const payload = Buffer.from(frame.subarray(frameEnd - length));
          for (let i = 0; i < payload.length; i++) payload[i]! ^= key[i % 4]!;
          const message = JSON.parse(payload.toString('utf8')) as { type?: string };
          if (o.cutBefore && counts.cuts === 0 && o.cutBefore(message)) return cut();
          if (o.mark && !counts.markedAt && o.mark(message)) counts.markedAt = Date.now();
        }
        if (opcode === 2) {
          if (counts.cuts === 0) counts.binaryBefore += length;
          else counts.binaryAfter += length;
          if (counts.markedAt) counts.binaryAfterMark += length;
        }
        forward(frame);
        if (
          opcode === 2 &&
          counts.cuts === 0 &&
          o.cutAfterBinaryBytes !== undefined &&
          counts.binaryBefore >= o.cutAfterBinaryBytes
        )
          return cut();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `ws://127.0.0.1:${port}`,
    counts,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('the action against the agent (simulated lab)', () => {
  it(
    'flashes and boots: exit 0, outputs, summary, groups per phase, nothing left for the post step',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:0a' }]);
      const { dir, data } = await makeWorkspace(l);
      const r = await act(l, dir, { target: 'pi-a' });
      expect(r.stderr).toBe('');
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.outputs).toMatchObject({
        result: 'success',
        'result-code': 'OK',
        'target-name': 'pi-a',
        'target-mac': '02:00:00:00:01:0a',
        'image-sha256': sha256(data),
        'bytes-written': String(data.length),
      });
      expect(r.outputs['target-ip']).toMatch(/^127\./);
      expect(Number(r.outputs['flash-seconds'])).toBeGreaterThan(0);
      expect(r.outputs['boot-seconds']).toMatch(/^\d+\.\d$/);
      expect(r.outputs['job-id']).toMatch(/^[a-z0-9]+$/);
      for (const group of [
        'Connect to the agent',
        'Wait for the target',
        'Upload the image',
        'Stage the job',
        'Reset the board',
        'Transfer and write (board)',
        'Verify',
        'Boot check',
      ]) {
        expect(r.stdout).toContain(`::group::${group}`);
      }
      expect(r.stdout.match(/::group::/g)!.length).toBe(r.stdout.match(/::endgroup::/g)!.length);
      expect(r.summary).toContain('✅ success');
      expect(r.state.lease).toBe('');
      expect(await l.tftpFolders()).toEqual([]);
    },
  );

  it.each([
    ['gzip', ['-c'], '.gz'],
    ['xz', ['-c', '-T1'], '.xz'],
    ['zstd', ['-c', '-q'], '.zst'],
  ])('flashes a %s-compressed image byte for byte', { timeout: TEST_TIMEOUT_MS }, async (tool, args, ext) => {
    const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:1a' }]);
    const { dir, data } = await makeWorkspace(l, 2 * MiB);
    writeFileSync(
      path.join(dir, `sdcard.img${ext}`),
      execFileSync(tool, [...args, path.join(dir, 'sdcard.img')], { maxBuffer: 64 * MiB }),
    );
    rmSync(path.join(dir, 'sdcard.img'));
    const r = await act(l, dir, { target: 'pi-a', image: 'sdcard.*' });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.outputs['bytes-written']).toBe(String(data.length));
    const card = readFileSync(path.join(l.agent.config.stateDir, 'sim', 'pi-a.card'));
    expect(card.subarray(0, data.length).equals(data)).toBe(true);
  });

  it('names an unknown target (UNKNOWN_TARGET, during queue)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:2a' }]);
    const { dir } = await makeWorkspace(l, 64 * 1024);
    const r = await act(l, dir, { target: 'pi-zz' });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stdout).toMatch(/::error title=rpi-flash failed during queue%3A UNKNOWN_TARGET::.*pi-zz/);
    expect(r.outputs['result-code']).toBe('UNKNOWN_TARGET');
  });

  it(
    'refuses a wrong token (AUTH_FAILED, during connect) without echoing it',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:3a' }]);
      const { dir } = await makeWorkspace(l, 64 * 1024);
      const r = await act(l, dir, { target: 'pi-a', token: 'wrong-token-value' });
      expect(r.code, r.stdout + r.stderr).toBe(1);
      expect(r.stdout).toMatch(/::error title=rpi-flash failed during connect%3A AUTH_FAILED::/);
      expect(r.stdout).toContain('::add-mask::wrong-token-value');
    },
  );

  it.each([
    ['sim:no-show', 'BOARD_NO_SHOW', { timeouts: { boardShow: 1, stall: 5, boot: 5, leaseGrace: 2 } }],
    ['sim:fail-write', 'BOARD_REPORTED_FAILURE', undefined],
    ['sim:no-boot', 'BOOT_TIMEOUT', { timeouts: { boardShow: 30, stall: 30, boot: 1, leaseGrace: 2 } }],
  ] as const)(
    'reports a board failure (%s → %s) with a titled annotation and cleans up',
    { timeout: TEST_TIMEOUT_MS },
    async (reset, code, config) => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:4a', reset }], config);
      const { dir } = await makeWorkspace(l, 2 * MiB);
      const r = await act(l, dir, { target: 'pi-a' });
      expect(r.code, r.stdout + r.stderr).toBe(1);
      expect(r.outputs).toMatchObject({ result: 'failure', 'result-code': code, 'target-name': 'pi-a' });
      expect(r.stdout).toMatch(new RegExp(`::error title=rpi-flash failed during \\w+%3A ${code}::`));
      expect(r.summary).toContain(code);
      expect(r.state.lease).toBe('');
      expect(await l.tftpFolders()).toEqual([]);
    },
  );

  it(
    'waits in line for a busy target, shows its position, and runs when it frees',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:5a' }]);
      const { dir } = await makeWorkspace(l, 1 * MiB);
      const other = await l.connect();
      await other.lease('pi-a', { holder: 'someone else' });
      let freed = false;
      const r = await act(
        l,
        dir,
        { target: 'pi-a' },
        {
          onStdout: (out) => {
            if (!freed && out.includes('Target busy: position 1 in line (held by someone else)')) {
              freed = true;
              void other.cancel();
            }
          },
        },
      );
      expect(freed).toBe(true);
      expect(r.code, r.stdout + r.stderr).toBe(0);
    },
  );

  it('gives up waiting after queue-timeout (QUEUE_TIMEOUT)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:6a' }]);
    const { dir } = await makeWorkspace(l, 64 * 1024);
    const other = await l.connect();
    await other.lease('pi-a', { holder: 'someone else' });
    const r = await act(l, dir, { target: 'pi-a', 'queue-timeout': '1' });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.outputs['result-code']).toBe('QUEUE_TIMEOUT');
  });

  it('SIGINT mid-flash cancels the job on the agent and exits within 5 s', { timeout: TEST_TIMEOUT_MS }, async () => {
    const l = await start([{ name: 'slow', mac: '02:00:00:00:01:7a', reset: 'sim:no-show' }], {
      timeouts: { boardShow: 60, stall: 60, boot: 60, leaseGrace: 30 },
    });
    const { dir } = await makeWorkspace(l, 1 * MiB);
    const r = await act(
      l,
      dir,
      { target: 'slow' },
      { signalWhen: { text: '::group::Reset the board', signal: 'SIGINT' } },
    );
    expect(r.exitedAfterSignalMs).toBeLessThan(5_000);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.outputs).toMatchObject({ result: 'cancelled', 'result-code': 'CANCELLED' });
    expect(r.state.lease).toBe('');
    expect(await l.tftpFolders()).toEqual([]);
    // The target is free again at once (not after the 30 s grace period).
    const next = await l.connect();
    await expect(next.lease('slow')).resolves.toMatchObject({ target: { name: 'slow' } });
  });

  it('SIGTERM mid-upload cancels, exits within 5 s and frees the target', { timeout: TEST_TIMEOUT_MS }, async () => {
    const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:ba' }], {
      timeouts: { boardShow: 60, stall: 60, boot: 60, leaseGrace: 30 },
    });
    const { dir } = await makeWorkspace(l, 32 * MiB);
    const r = await act(
      l,
      dir,
      { target: 'pi-a' },
      { signalWhen: { text: '::group::Upload the image', signal: 'SIGTERM' } },
    );
    expect(r.exitedAfterSignalMs).toBeLessThan(5_000);
    expect(r.code).toBe(1);
    expect(r.outputs).toMatchObject({ result: 'cancelled', 'result-code': 'CANCELLED' });
    expect(r.stdout).toMatch(/::error title=rpi-flash cancelled during \w+%3A CANCELLED::/);
    const next = await l.connect();
    await expect(next.lease('pi-a')).resolves.toMatchObject({ target: { name: 'pi-a' } });
  });

  it(
    'SIGTERM mid-upload on a slow link stops the chunks at once: its cancel gets through and the lease is released',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:bb' }], {
        timeouts: { boardShow: 60, stall: 60, boot: 60, leaseGrace: 60 },
      });
      // 32 MiB/s keeps the upload going for seconds, with the action's socket full, as on a slow uplink.
      const relay = await startFrameRelay(new URL(l.agent.url), {
        mark: (m) => m.type === 'cancel',
        bytesPerSecond: 32 * MiB,
      });
      try {
        const { dir } = await makeWorkspace(l, 96 * MiB);
        const when = 'upload: 1'; // the first progress line past 10 %
        let signalledAt = 0;
        const r = await act(
          l,
          dir,
          { target: 'pi-a', 'agent-url': relay.url },
          {
            signalWhen: { text: when, signal: 'SIGTERM' },
            onStdout: (out) => (signalledAt ||= out.includes(when) ? Date.now() : 0),
          },
        );
        expect(r.code, r.stdout).toBe(1);
        expect(r.outputs['result-code'], r.stdout).toBe('CANCELLED');
        // The main step's own cancel was answered: nothing is left for the post step.
        expect(r.stdout).toMatch(/Cancelled on the agent \(lease \S+\)/);
        expect(r.state.lease).toBe('');
        // Not one chunk after the cancel, so it reached the agent behind only what the socket held.
        expect(relay.counts.markedAt, 'the cancel to pass the relay').toBeGreaterThan(0);
        expect(relay.counts.binaryAfterMark).toBe(0);
        const released = l.logs.find((rec) => rec.msg === 'lease released');
        expect(released, 'the agent to release the lease').toBeDefined();
        expect(released!.time.getTime() - signalledAt).toBeLessThan(3_000);
        expect(l.logs.some((rec) => rec.msg === 'upload stored')).toBe(false);
        const next = await l.connect();
        await expect(next.lease('pi-a')).resolves.toMatchObject({ target: { name: 'pi-a' } });
      } finally {
        await relay.close();
      }
    },
  );

  it(
    'the post step cancels a lease the main step left behind (main killed hard)',
    { timeout: 2 * TEST_TIMEOUT_MS },
    async () => {
      const l = await start([{ name: 'slow', mac: '02:00:00:00:01:8a', reset: 'sim:no-show' }], {
        timeouts: { boardShow: 60, stall: 60, boot: 60, leaseGrace: 60 },
      });
      const { dir } = await makeWorkspace(l, 1 * MiB);
      const main = await act(
        l,
        dir,
        { target: 'slow' },
        { signalWhen: { text: '::group::Reset the board', signal: 'SIGKILL' } },
      );
      expect(main.state.lease).toMatch(/.+/);
      const post = await act(l, dir, { target: 'slow' }, { state: { ...main.state } });
      expect(post.code, post.stdout).toBe(0);
      expect(post.stdout).toContain(`Lease ${main.state.lease} released.`);
      const next = await l.connect();
      await expect(next.lease('slow')).resolves.toMatchObject({ target: { name: 'slow' } });
    },
  );

  it.each([
    ['mid-upload', '::group::Upload the image', 32 * MiB],
    ['mid-flash', '::group::Transfer and write (board)', 2 * MiB],
  ])(
    'a connection cut %s is resumed: reconnect, take the lease back, finish',
    { timeout: TEST_TIMEOUT_MS },
    async (_when, text, size) => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:9a' }], {
        timeouts: { boardShow: 30, stall: 30, boot: 30, leaseGrace: 30 },
      });
      const relay = await startRelay(new URL(l.agent.url));
      try {
        const { dir, data } = await makeWorkspace(l, size);
        const r = await act(
          l,
          dir,
          { target: 'pi-a', 'agent-url': relay.url },
          {
            onStdout: (out) => {
              if (relay.cuts === 0 && out.includes(text)) relay.cut();
            },
          },
        );
        expect(relay.cuts).toBe(1);
        expect(r.stdout).toMatch(/Connection lost \(.*\); reconnecting in 1 s/);
        expect(r.stdout).toMatch(/Lease \S+ resumed/);
        expect(r.code, r.stdout).toBe(0);
        expect(r.outputs['bytes-written']).toBe(String(data.length));
      } finally {
        await relay.close();
      }
    },
  );
  it(
    'a flash request lost in a cut connection is sent again after the reconnect, and the job runs once',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:ca' }], {
        timeouts: { boardShow: 30, stall: 30, boot: 30, leaseGrace: 30 },
      });
      const relay = await startFrameRelay(new URL(l.agent.url), { cutBefore: (m) => m.type === 'flash' });
      try {
        const { dir, data } = await makeWorkspace(l, 2 * MiB);
        // Before the fix the action waited for a result that could not come, until job-timeout.
        const r = await act(l, dir, { target: 'pi-a', 'agent-url': relay.url, 'job-timeout': '40' });
        expect(relay.counts.cuts).toBe(1);
        expect(r.stdout).toMatch(/Lease \S+ resumed/);
        expect(r.stdout).toContain('Asking the agent for the job again');
        expect(r.code, r.stdout).toBe(0);
        expect(r.outputs['bytes-written']).toBe(String(data.length));
        expect(l.logs.filter((rec) => rec.msg === 'job started')).toHaveLength(1);
      } finally {
        await relay.close();
      }
    },
  );

  it(
    'a connection cut mid-flash with the job running on the agent waits for that job (not a second one)',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const l = await start([{ name: 'pi-a', mac: '02:00:00:00:01:cb' }], {
        timeouts: { boardShow: 30, stall: 30, boot: 30, leaseGrace: 30 },
      });
      const relay = await startRelay(new URL(l.agent.url));
      try {
        const { dir } = await makeWorkspace(l, 2 * MiB);
        const r = await act(
          l,
          dir,
          { target: 'pi-a', 'agent-url': relay.url },
          {
            onStdout: (out) => {
              if (relay.cuts === 0 && out.includes('::group::Transfer and write (board)')) relay.cut();
            },
          },
        );
        expect(r.code, r.stdout).toBe(0);
        expect(r.stdout).toMatch(/The agent is still running the job: waiting for its result|Lease \S+ resumed/);
        expect(l.logs.filter((rec) => rec.msg === 'job started')).toHaveLength(1);
      } finally {
        await relay.close();
      }
    },
  );

  it(
    'a connection cut late in the upload resends only what the agent does not hold',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const size = 64 * MiB;
      const l = await start([{ name: 'ghost', mac: '02:00:00:00:01:cc', reset: 'sim:no-show' }], {
        timeouts: { boardShow: 1, stall: 10, boot: 10, leaseGrace: 30 },
      });
      const relay = await startFrameRelay(new URL(l.agent.url), { cutAfterBinaryBytes: 56 * MiB });
      try {
        const { dir } = await makeWorkspace(l, size);
        const r = await act(l, dir, { target: 'ghost', 'agent-url': relay.url, 'board-timeout': '1' });
        expect(relay.counts.cuts).toBe(1);
        // The upload completed; the board is a no-show.
        expect(r.outputs['result-code'], r.stdout).toBe('BOARD_NO_SHOW');
        expect(relay.counts.binaryBefore + relay.counts.binaryAfter).toBeGreaterThanOrEqual(size);
        // Without the resume the whole 64 MiB would go again; the agent held all but its write window.
        expect(relay.counts.binaryAfter).toBeLessThan(size / 2);
        const resumedAt = l.logs
          .filter((rec) => rec.msg === 'upload started' && rec.fields.resumeAt !== undefined)
          .map((rec) => Number(rec.fields.resumeAt));
        expect(resumedAt).toHaveLength(2);
        expect(resumedAt[1]).toBe(size - relay.counts.binaryAfter);
      } finally {
        await relay.close();
      }
    },
  );

  it(
    'waits while another connection uploads the same image, then skips its own upload',
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      const l = await start([
        { name: 'pi-a', mac: '02:00:00:00:01:cd' },
        { name: 'pi-b', mac: '02:00:00:00:01:ce' },
      ]);
      const { dir, data } = await makeWorkspace(l, 4 * MiB);
      // Another job (as a matrix leg would) has begun uploading the same bytes and holds them half sent.
      const other = new WebSocket(new URL('/v1/ws', l.agent.url), {
        headers: { Authorization: `Bearer ${LAB_TOKEN}` },
        perMessageDeflate: false,
      });
      const answers: Array<{ type: string; re?: string }> = [];
      const next = (type: string) =>
        waitUntil(() => answers.some((a) => a.type === type), `the other connection's ${type}`, {
          detail: () => JSON.stringify(answers),
        });
      other.on(
        'message',
        (d: Buffer, binary: boolean) =>
          !binary && answers.push(JSON.parse(d.toString()) as { type: string; re?: string }),
      );
      await new Promise((r) => other.once('open', r));
      try {
        other.send(JSON.stringify({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION, client: 'other job' }));
        await next('welcome');
        other.send(JSON.stringify({ type: 'lease', id: 'l', target: 'pi-b' }));
        await next('leased');
        other.send(
          JSON.stringify({
            type: 'upload-begin',
            id: 'u',
            sha256: sha256(data),
            size: data.length,
            compression: 'none',
          }),
        );
        await next('upload-ready');
        // In 1 MiB frames: the agent's maxPayload is its chunk size plus a margin.
        const sendBytes = (from: number, to: number) => {
          for (let at = from; at < to; at += MiB) other.send(data.subarray(at, Math.min(to, at + MiB)));
        };
        sendBytes(0, data.length / 2);
        let finished = false;
        const r = await act(
          l,
          dir,
          { target: 'pi-a' },
          {
            onStdout: (out) => {
              if (finished || !out.includes('Another connection is uploading this image')) return;
              finished = true;
              sendBytes(data.length / 2, data.length);
              other.send(JSON.stringify({ type: 'upload-end', id: 'e' }));
            },
          },
        );
        expect(finished, r.stdout).toBe(true);
        expect(r.code, r.stdout).toBe(0);
        expect(r.stdout).toContain('The agent already holds this image: nothing to upload');
        expect(r.outputs['bytes-written']).toBe(String(data.length));
      } finally {
        other.terminate();
      }
    },
  );
});
