import { createHook } from 'node:async_hooks';
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { waitForBoot } from '../runner-agent/src/boot-check.js';
import { BOOT_CHECK_MAX_LENGTH, BootCheckError, parseBootCheck } from '../src/protocol/boot-check.js';
import { openConsole } from '../runner-agent/src/console/capture.js';
import { createLogger, silentLogger, type LogRecord } from '../runner-agent/src/log.js';

describe('parseBootCheck', () => {
  it.each([
    ['none', { kind: 'none' }],
    [' NONE ', { kind: 'none' }],
    ['tcp:22', { kind: 'tcp', port: 22 }],
    ['TCP:65535', { kind: 'tcp', port: 65535 }],
    ['tcp:1', { kind: 'tcp', port: 1 }],
    ['tcp:127.0.0.1:8022', { kind: 'tcp', host: '127.0.0.1', port: 8022 }],
    ['tcp:pi4-a.lab:22', { kind: 'tcp', host: 'pi4-a.lab', port: 22 }],
    ['tcp:PI4-A:22', { kind: 'tcp', host: 'PI4-A', port: 22 }],
    ['tcp:3com.example:22', { kind: 'tcp', host: '3com.example', port: 22 }],
    [`tcp:${'a'.repeat(63)}.lab:22`, { kind: 'tcp', host: `${'a'.repeat(63)}.lab`, port: 22 }],
    ['tcp:[::1]:22', { kind: 'tcp', host: '::1', port: 22 }],
    ['tcp:[fd00::5]:2222', { kind: 'tcp', host: 'fd00::5', port: 2222 }],
    ['tcp:[fe80::1%eth0]:22', { kind: 'tcp', host: 'fe80::1%eth0', port: 22 }],
  ])('parses %j', (text, check) => {
    expect(parseBootCheck(text)).toEqual(check);
  });

  it.each([
    ['', /^unknown boot check "" is not tcp:<port>, tcp:<host>:<port>, console:<regex> or none$/],
    ['ssh', /^unknown boot check "ssh" is not tcp:<port>/],
    ['http:80', /^unknown boot check "http:80"/],
    ['tcp:', /^boot check "tcp:": tcp: needs a port, e.g. tcp:22$/],
    ['tcp:0', /"0" is not a TCP port \(1–65535\)/],
    ['tcp:65536', /"65536" is not a TCP port/],
    ['tcp:-1', /"-1" is not a TCP port/],
    ['tcp:22x', /"22x" is a host without a port; write tcp:22x:<port>/],
    ['tcp:ssh', /"ssh" is a host without a port; write tcp:ssh:<port>/],
    ['tcp:host:', /"" is not a TCP port/],
    ['tcp:host:0x16', /"0x16" is not a TCP port/],
    ['tcp::22', /the host before the port is empty/],
    [
      'tcp:my_host:22',
      /"my_host" is not a host name: "_" is not allowed in one \(letters, digits, "-" and "\." only\)/,
    ],
    ['tcp:a b:22', /"a b" is not a host name: " " is not allowed/],
    ['tcp:pi..lab:22', /"pi\.\.lab" is not a host name: it has an empty label/],
    ['tcp:pi.lab.:22', /it has an empty label/],
    ['tcp:-pi.lab:22', /the label "-pi" starts or ends with "-"/],
    ['tcp:pi-:22', /the label "pi-" starts or ends with "-"/],
    [`tcp:${'a'.repeat(64)}.lab:22`, /the label "a{64}" is longer than 63 characters/],
    ['tcp:10.0.0.256:22', /"10\.0\.0\.256" is not an IPv4 address/],
    ['tcp:10.0.0:22', /"10\.0\.0" is not an IPv4 address/],
    // A leading zero reads as octal to some resolvers (010 = 8): not a dotted quad both sides agree on.
    ['tcp:010.0.0.1:22', /"010\.0\.0\.1" is not an IPv4 address/],
    ['tcp:::1:22', /write an IPv6 host in brackets, e.g. tcp:\[::1\]:22/],
    ['tcp:fd00::5:22', /write an IPv6 host in brackets/],
    ['tcp:[nope]:22', /"nope" is not an IPv6 address/],
    ['tcp:[10.0.0.1]:22', /"10\.0\.0\.1" is not an IPv6 address/],
    ['tcp:[::1]', /the host \[::1\] needs a port after it, e.g. tcp:\[::1\]:22/],
    ['tcp:[::1]22', /the host \[::1\] needs a port after it/],
    ['console:', /console: needs a regular expression/],
    ['console:login(', /^boot check "console:login\(": not a valid regular expression: .*/],
    [`console:${'x'.repeat(300)}`, /"console:x{32}…": 308 characters long, more than the 256 a boot check may have/],
  ])('refuses %j, saying what is wrong', (text, reason) => {
    expect(() => parseBootCheck(text)).toThrow(BootCheckError);
    expect(() => parseBootCheck(text)).toThrow(reason);
  });

  it('gives the spec and the problem apart, for each side to name its own setting', () => {
    const err = (() => {
      try {
        parseBootCheck(' tcp:my_host:22 ');
      } catch (e) {
        return e as BootCheckError;
      }
      throw new Error('accepted');
    })();
    expect(err.spec).toBe('tcp:my_host:22');
    expect(err.problem).toMatch(/^"tcp:my_host:22": "my_host" is not a host name/);
    expect(err.message).toBe(`boot check ${err.problem}`);
  });

  it('takes a spec of exactly the protocol limit', () => {
    const spec = `console:${'x'.repeat(BOOT_CHECK_MAX_LENGTH - 'console:'.length)}`;
    expect(parseBootCheck(spec).kind).toBe('console');
    expect(() => parseBootCheck(`${spec}x`)).toThrow(/257 characters long/);
  });

  it.each([
    ['console:login:', 'raspberrypi login: ', true],
    ['CONSOLE:^MARKER-42$', 'MARKER-42', true],
    ['console:^MARKER-42$', 'xMARKER-42', false],
    ['console:login:\\s*$', 'pi login:  ', true],
    ['console:[Ll]ogin', 'Login incorrect', true],
    // The spec is trimmed at its ends; a space after "console:" belongs to the pattern " spaced".
    ['console: spaced ', 'a spaced b', true],
    ['console: spaced ', 'spaced', false],
    ['console:a:b:c', 'xa:b:cx', true], // colons after the first belong to the pattern
  ])('%j matches %j: %s', (text, line, matches) => {
    const check = parseBootCheck(text);
    expect(check.kind).toBe('console');
    expect(check.kind === 'console' && check.pattern.test(line)).toBe(matches);
  });
});

/**
 * Records the sockets and timers created while `body` runs and reports those still alive once it
 * has settled: a call must not leave any behind.
 */
async function leftoversOf<T>(
  body: () => Promise<T>,
): Promise<{ outcome: PromiseSettledResult<T>; leftovers: string[] }> {
  const live = new Map<number, string>();
  let recording = true;
  const hook = createHook({
    init(id, type) {
      if (recording && (type === 'Timeout' || type === 'TCPWRAP' || type === 'TCPCONNECTWRAP')) live.set(id, type);
    },
    destroy(id) {
      live.delete(id);
    },
  }).enable();
  try {
    const [outcome] = await Promise.allSettled([body()]);
    recording = false;
    // Closing handles and cleared timers report their end an event-loop turn or two later.
    await new Promise((r) => setTimeout(r, 50));
    return { outcome: outcome as PromiseSettledResult<T>, leftovers: [...live.values()] };
  } finally {
    hook.disable();
  }
}

/** A loopback port that nothing listens on (bound, then released). */
async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((r) => probe.close(r));
  return port;
}

describe('waitForBoot', () => {
  const servers: net.Server[] = [];
  const timers: NodeJS.Timeout[] = [];
  afterEach(async () => {
    for (const t of timers.splice(0)) clearTimeout(t);
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });

  function listen(port: number, host = '127.0.0.1'): Promise<net.Server> {
    const server = net.createServer((socket) => socket.destroy());
    servers.push(server);
    return new Promise((resolve) => server.listen(port, host, () => resolve(server)));
  }

  it('passes at once for none', async () => {
    expect(await waitForBoot({ kind: 'none' }, '127.0.0.1', { timeoutMs: 1000 })).toEqual({
      ok: true,
      ms: 0,
      attempts: 0,
    });
  });

  it('passes at the first attempt when the port is open', async () => {
    const server = await listen(0);
    const { port } = server.address() as net.AddressInfo;
    const result = await waitForBoot({ kind: 'tcp', port }, '127.0.0.1', { timeoutMs: 5000, intervalMs: 50 });
    expect(result).toMatchObject({ ok: true, attempts: 1 });
  });

  it('keeps trying until the listener appears', async () => {
    const port = await freePort();
    const records: LogRecord[] = [];
    const log = createLogger({ level: 'debug', sink: (r) => records.push(r) });
    let opened = false;
    timers.push(
      setTimeout(() => {
        void listen(port).then(() => (opened = true));
      }, 300),
    );
    const result = await waitForBoot({ kind: 'tcp', port }, '127.0.0.1', { timeoutMs: 20_000, intervalMs: 50, log });
    expect(opened).toBe(true);
    expect(result.ok).toBe(true);
    expect(result.attempts).toBeGreaterThan(1);
    expect(result.ms).toBeGreaterThanOrEqual(250);
    // Each refused attempt is logged at debug level with its reason.
    expect(records.filter((r) => r.msg === 'boot check not yet passing')).toHaveLength(result.attempts - 1);
    expect(records[0]?.fields).toMatchObject({ host: '127.0.0.1', port, attempt: 1, error: 'ECONNREFUSED' });
  });

  it('gives up at the deadline when nothing ever listens', async () => {
    const port = await freePort();
    const { outcome, leftovers } = await leftoversOf(() =>
      waitForBoot({ kind: 'tcp', port }, '127.0.0.1', { timeoutMs: 400, intervalMs: 50 }),
    );
    expect(outcome.status).toBe('fulfilled');
    const result = (outcome as PromiseFulfilledResult<Awaited<ReturnType<typeof waitForBoot>>>).value;
    expect(result.ok).toBe(false);
    expect(result.attempts).toBeGreaterThan(1);
    expect(result.ms).toBeGreaterThanOrEqual(400);
    expect(leftovers).toEqual([]);
  });

  it("checks the host the spec names instead of the target's IP", async () => {
    const server = await listen(0, '127.0.0.1');
    const { port } = server.address() as net.AddressInfo;
    // Nothing listens on 127.0.0.2 (the "target"): only the named host can pass.
    expect((await waitForBoot({ kind: 'tcp', port }, '127.0.0.2', { timeoutMs: 150, intervalMs: 50 })).ok).toBe(false);
    expect(
      (await waitForBoot({ kind: 'tcp', host: '127.0.0.1', port }, '127.0.0.2', { timeoutMs: 5000, intervalMs: 50 }))
        .ok,
    ).toBe(true);
  });

  it('stops promptly when aborted, rejecting with the reason and leaving no socket or timer', async () => {
    const port = await freePort();
    const controller = new AbortController();
    const reason = new Error('job cancelled');
    const started = Date.now();
    const { outcome, leftovers } = await leftoversOf(() => {
      setTimeout(() => controller.abort(reason), 150);
      return waitForBoot({ kind: 'tcp', port }, '127.0.0.1', {
        timeoutMs: 60_000,
        intervalMs: 10_000,
        signal: controller.signal,
      });
    });
    expect(outcome).toEqual({ status: 'rejected', reason });
    // Well before the 10 s pause would have ended: the pause itself was cut short.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(leftovers).toEqual([]);
  });

  describe('against a port whose connections hang', () => {
    let child: ChildProcess | undefined;
    const fillers: net.Socket[] = [];
    afterEach(async () => {
      for (const s of fillers.splice(0)) s.destroy();
      if (child && child.exitCode === null && child.signalCode === null) {
        const gone = new Promise((r) => child?.once('exit', r));
        child.kill('SIGKILL');
        await gone;
      }
      child = undefined;
    });

    /**
     * A listener whose process never accepts (its event loop is blocked) and whose accept queue is
     * full: the kernel then drops further SYNs, so a connect neither succeeds nor fails.
     */
    async function blackHolePort(): Promise<number> {
      const code = `const s = require('net').createServer().listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
        console.log(s.address().port); const end = Date.now() + 60000; while (Date.now() < end) {} });`;
      child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
      const port = await new Promise<number>((resolve, reject) => {
        child?.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
        child?.once('exit', (c) => reject(new Error(`black-hole listener exited with ${c}`)));
      });
      // Fill the accept queue until a connect hangs.
      for (let i = 0; i < 16; i++) {
        const socket = net.connect({ port, host: '127.0.0.1' });
        socket.on('error', () => {});
        fillers.push(socket);
        const connected = await new Promise<boolean>((r) => {
          const t = setTimeout(() => r(false), 300);
          socket.once('connect', () => (clearTimeout(t), r(true)));
        });
        if (!connected) return port;
      }
      throw new Error('could not fill the accept queue');
    }

    it('cuts each attempt off at attemptTimeoutMs and leaves nothing behind', async () => {
      const port = await blackHolePort();
      const { outcome, leftovers } = await leftoversOf(() =>
        waitForBoot({ kind: 'tcp', port }, '127.0.0.1', { timeoutMs: 700, intervalMs: 10, attemptTimeoutMs: 200 }),
      );
      expect(outcome.status).toBe('fulfilled');
      const result = (outcome as PromiseFulfilledResult<Awaited<ReturnType<typeof waitForBoot>>>).value;
      expect(result.ok).toBe(false);
      expect(result.attempts).toBeGreaterThanOrEqual(2);
      expect(leftovers).toEqual([]);
    });

    it('abandons a hanging attempt when aborted', async () => {
      const port = await blackHolePort();
      const controller = new AbortController();
      const reason = new Error('job cancelled');
      const { outcome, leftovers } = await leftoversOf(() => {
        setTimeout(() => controller.abort(reason), 150);
        return waitForBoot({ kind: 'tcp', port }, '127.0.0.1', {
          timeoutMs: 60_000,
          attemptTimeoutMs: 30_000,
          signal: controller.signal,
        });
      });
      expect(outcome).toEqual({ status: 'rejected', reason });
      expect(leftovers).toEqual([]);
    });
  });

  it('rejects at once when the signal is already aborted', async () => {
    const controller = new AbortController();
    controller.abort(new Error('too late'));
    await expect(
      waitForBoot({ kind: 'tcp', port: 22 }, '127.0.0.1', { timeoutMs: 1000, signal: controller.signal }),
    ).rejects.toThrow('too late');
  });
});

describe('waitForBoot with console:<regex>', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A ser2net stand-in on loopback and a real console capture reading it. */
  async function consoleBoard() {
    const server = net.createServer();
    const sockets: net.Socket[] = [];
    server.on('connection', (s) => {
      s.on('error', () => {});
      sockets.push(s);
    });
    const connected = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    });
    const { port } = server.address() as net.AddressInfo;
    const capture = await openConsole({ kind: 'tcp', host: '127.0.0.1', port }, { log: silentLogger, idleFlushMs: 20 });
    cleanups.push(() => capture.close());
    return { capture, board: await connected };
  }

  it('passes on a matching line that arrives while waiting, and reports it', async () => {
    const { capture, board } = await consoleBoard();
    const waiting = waitForBoot(parseBootCheck('console:login:\\s*$'), '127.0.0.1', {
      timeoutMs: 10_000,
      console: capture,
    });
    board.write('[  OK  ] Started getty@tty1.service\r\n\r\nDebian GNU/Linux 12 pi ttyAMA0\r\n\r\npi login: ');
    expect(await waiting).toMatchObject({ ok: true, attempts: 1, line: 'pi login: ' });
  });

  it('counts a marker printed before the boot phase began when consoleSince covers it, never one before', async () => {
    const { capture, board } = await consoleBoard();
    board.write('IMAGE-MARKER-old\r\n'); // the old system, before the reset
    await capture.waitFor(/IMAGE-MARKER-old/, { timeoutMs: 10_000, since: 0 });
    const since = capture.mark(); // taken at the reset
    board.write('U-Boot 2023.01\r\nIMAGE-MARKER-new\r\n'); // the new system, before the check starts
    await capture.waitFor(/IMAGE-MARKER-new/, { timeoutMs: 10_000, since });
    const result = await waitForBoot(parseBootCheck('console:^IMAGE-MARKER-new$'), '127.0.0.1', {
      timeoutMs: 10_000,
      console: capture,
      consoleSince: since,
    });
    expect(result).toMatchObject({ ok: true, line: 'IMAGE-MARKER-new' });
    // The old system's marker is before the mark: the check times out instead of passing on it.
    const stale = await waitForBoot(parseBootCheck('console:^IMAGE-MARKER-old$'), '127.0.0.1', {
      timeoutMs: 50,
      console: capture,
      consoleSince: since,
    });
    expect(stale).toMatchObject({ ok: false, attempts: 1 });
    expect(stale.line).toBeUndefined();
  });

  it('fails at the deadline when no line matches, and rejects on abort', async () => {
    const { capture, board } = await consoleBoard();
    board.write('Kernel panic - not syncing: VFS: Unable to mount root fs\r\n');
    const result = await waitForBoot(parseBootCheck('console:login:'), '127.0.0.1', {
      timeoutMs: 100,
      console: capture,
    });
    expect(result.ok).toBe(false);
    expect(result.ms).toBeGreaterThanOrEqual(100);
    const controller = new AbortController();
    const waiting = waitForBoot(parseBootCheck('console:login:'), '127.0.0.1', {
      timeoutMs: 60_000,
      console: capture,
      signal: controller.signal,
    });
    controller.abort(new Error('job cancelled'));
    await expect(waiting).rejects.toThrow('job cancelled');
  });

  it('refuses a console check without a console', async () => {
    await expect(waitForBoot(parseBootCheck('console:login:'), '127.0.0.1', { timeoutMs: 100 })).rejects.toThrow(
      /needs the target's console/,
    );
  });
});
