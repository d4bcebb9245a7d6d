/**
 * Fuzz of the agent's network front over real sockets on loopback: the HTTP upgrade path
 * (request-targets, methods, header sizes and encodings, line endings, half-sent requests, requests
 * sent byte by byte, slow-loris) and the WebSocket message path (random JSON, wrong types, huge
 * numbers, deep nesting, lone surrogates, invalid UTF-8, binary frames at the wrong time, oversize
 * frames, raw frame garbage). Input is seeded pseudo-random (FUZZ_SEED replays a run; a failure
 * names the seed and the case) and each path runs for a bounded time (FUZZ_MS, 3 s by default).
 *
 * Afterwards the agent must still serve a whole job on a simulated board, no handler may have
 * failed with an uncoded error (an `error`-level log line), and nothing may have escaped as an
 * uncaught exception (vitest fails the file on one).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { startLab, LAB_TOKEN, type Lab } from '../support/lab.js';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { exchange, hostPort, statusOf, upgradeRequest, type Exchange } from './raw-http.js';
import { forAWhile, fuzzSeed, rng, type Rng } from './fuzz.js';
import { rawSession } from './raw-ws.js';

const seed = fuzzSeed();
const FUZZ_MS = Number(process.env.FUZZ_MS) > 0 ? Number(process.env.FUZZ_MS) : 3000;
/** Short, so half-sent requests and slow-loris connections end within the test's budget. */
const HEADERS_TIMEOUT_MS = 600;
/** When a dropped connection must be gone: the timeout, Node's check interval (half of it) and slack. */
const DROPPED_WITHIN_MS = HEADERS_TIMEOUT_MS * 2 + 2000;
/** Upgrades at once: enough to overlap slow cases, few enough for a shared 2-core machine. */
const PARALLEL = 6;
const MiB = 1024 * 1024;

let lab: Lab;
beforeAll(async () => {
  lab = await startLab({
    boards: [
      { name: 'pi-fuzz', mac: '02:00:00:00:0f:01' },
      { name: 'pi-job', mac: '02:00:00:00:0f:02' },
    ],
    start: { headersTimeoutMs: HEADERS_TIMEOUT_MS },
  });
});
afterAll(async () => {
  await lab?.stop();
});

/** Log lines at error level: a handler that failed with something it did not expect. */
const errorLines = () => lab.logs.filter((r) => r.level === 'error').map((r) => `${r.msg} ${JSON.stringify(r.fields)}`);

// ---------------------------------------------------------------------------------------------
// The HTTP upgrade path

function requestTarget(r: Rng): string {
  switch (r.int(14)) {
    case 0:
    case 12:
    case 13:
      return '/v1/ws';
    case 1:
      return r.pick(['//[', '//a:b', '//x y', 'http://[/v1/ws', '//%', '//@', '//:99999', 'http://a:b@[::1']);
    case 2:
      return `//${r.text(1 + r.int(40))}`;
    case 3:
      return r.pick(['*', 'agent:443', 'http://agent/v1/ws', 'https://agent:8443/v1/ws?x=1#y', '']);
    case 4:
      return `/${'a'.repeat(1 + r.int(20_000))}`; // long: past the header limit sometimes
    case 5:
      return `/v1/ws${r.pick(['?', '#', '/', '/..', '%00', '%zz', ';', '?a=%'])}${r.text(r.int(30))}`;
    case 6:
      return `/${Buffer.from(r.bytes(1 + r.int(40))).toString('latin1')}`; // obs-text, controls
    case 7:
      return `/v1/ws/../${r.pick(['v1/ws', '..', '%2e%2e'])}`;
    case 8:
      return `/${'%'.repeat(1 + r.int(100))}`;
    case 9:
      return `/${'\u00ff\u00fe'.repeat(1 + r.int(50))}`;
    default:
      return `/${r.text(r.int(200))}`;
  }
}

function headerSet(r: Rng): Record<string, string> {
  const headers: Record<string, string> = {};
  const n = r.bool(0.5) ? 0 : 1 + r.int(4);
  for (let i = 0; i < n; i++) {
    switch (r.int(9)) {
      case 0:
        headers[`X-${r.text(1 + r.int(20), 'abcdefghij-')}`] = r.text(r.int(100));
        break;
      case 1:
        headers['X-Big'] = 'b'.repeat(r.int(40_000)); // around Node's 16 KiB header limit
        break;
      case 2:
        headers['X-Bytes'] = Buffer.from(r.bytes(1 + r.int(200))).toString('latin1');
        break;
      case 3:
        headers['Sec-WebSocket-Version'] = r.pick(['8', '14', '', 'x', '13, 8']);
        break;
      case 4:
        headers['Content-Length'] = r.pick(['5', '-1', '99999999999999999999', 'x', '0, 1']);
        break;
      case 5:
        headers['Transfer-Encoding'] = r.pick(['chunked', 'gzip, chunked', 'x']);
        break;
      case 6:
        headers['Authorization'] = r.pick([
          'Bearer',
          'Bearer  ',
          `Bearer ${LAB_TOKEN}x`,
          `bearer ${LAB_TOKEN}`,
          'Basic x',
        ]);
        break;
      case 7:
        headers['X-Fold'] = `a\r\n  folded ${r.text(10)}`; // obs-fold
        break;
      default:
        headers[r.text(1 + r.int(10), 'abc:; ()<>@,"/[]?={}\t')] = r.text(10);
    }
  }
  return headers;
}

interface UpgradeCase {
  bytes: Buffer;
  /** Sent a piece at a time (1 byte, or a few) with a pause, or at once. */
  pieceBytes?: number;
  pieceMs?: number;
  /** The request is cut short and the connection left open: the agent must drop it. */
  halfSent: boolean;
  endAfterSend: boolean;
  what: string;
}

function upgradeCase(r: Rng, i: number): UpgradeCase {
  const method = r.bool(0.7) ? 'GET' : r.pick(['POST', 'CONNECT', 'OPTIONS', 'get', 'G E T', '', r.text(8)]);
  const target = requestTarget(r);
  const token = r.bool(0.6) ? LAB_TOKEN : r.bool(0.5) ? r.text(20) : undefined;
  let bytes = upgradeRequest(target, { method, ...(token ? { token } : {}), headers: headerSet(r) });
  if (r.bool(0.1)) bytes = Buffer.from(bytes.toString('latin1').replace(/\r\n/g, '\n'), 'latin1'); // LF only
  if (r.bool(0.05)) bytes = r.bytes(1 + r.int(2000)); // not HTTP at all
  if (r.bool(0.1)) bytes = Buffer.concat([bytes, Buffer.from('5\r\nhello\r\n0\r\n\r\n')]); // a body nobody asked for
  const halfSent = r.bool(0.15);
  if (halfSent) bytes = bytes.subarray(0, r.int(bytes.length));
  const byteByByte = bytes.length < 600 && r.bool(0.15);
  const pieces = !byteByByte && r.bool(0.15);
  return {
    bytes,
    ...(byteByByte ? { pieceBytes: 1, pieceMs: 0 } : pieces ? { pieceBytes: 1 + r.int(50), pieceMs: r.int(20) } : {}),
    halfSent,
    endAfterSend: !halfSent && r.bool(0.2),
    what: [
      `seed ${seed} upgrade case ${i}: ${method} ${JSON.stringify(target.slice(0, 80))}`,
      ...(halfSent ? ['(half-sent)'] : []),
      ...(byteByByte ? ['(byte by byte)'] : []),
    ].join(' '),
  };
}

function checkUpgrade(c: UpgradeCase, x: Exchange): void {
  const status = statusOf(x.reply);
  // Whatever came back is HTTP (or nothing, for a connection cut before a request began).
  if (x.reply.length > 0) expect(status, `${c.what}: ${JSON.stringify(x.reply.slice(0, 200))}`).toBeDefined();
  // Every answer but a successful upgrade closes the connection; a half-sent request is dropped.
  if (status !== 101) expect(x.closed, `${c.what}: still open after ${x.ms} ms`).toBe(true);
}

// ---------------------------------------------------------------------------------------------
// The WebSocket message path

function deep(r: Rng): string {
  const depth = 1 + r.int(30_000);
  const open = r.bool() ? '[' : '{"a":';
  const close = open === '[' ? ']' : '}';
  return open.repeat(depth) + '1' + close.repeat(r.bool(0.8) ? depth : r.int(depth));
}

function jsonValue(r: Rng, depth = 0): unknown {
  switch (depth > 3 ? r.int(6) : r.int(9)) {
    case 0:
      return r.pick([0, -0, 1, -1, 2 ** 53, 2 ** 53 + 2, -(2 ** 63), 1e308, 5e-324, 0.5, 1e21]);
    case 1:
      return r.text(r.int(300));
    case 2:
      return r.pick([true, false, null]);
    case 3:
      return r.pick(['\ud800', '\udfff\ud800', '\u0000', '\u202e', '💥'.repeat(r.int(100))]);
    case 4:
      return 'x'.repeat(r.pick([1024, 1025, 65_000]));
    case 5:
      return r.int(2 ** 31);
    case 6:
      return Array.from({ length: r.int(5) }, () => jsonValue(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = r.int(5); i > 0; i--)
        o[r.pick(['type', 'id', 'sha256', 'size', 'lease', r.text(5)])] = jsonValue(r, depth + 1);
      return o;
    }
  }
}

const TYPES = [
  'hello',
  'lease',
  'upload-begin',
  'upload-end',
  'flash',
  'cancel',
  'welcome',
  'result',
  '',
  'x'.repeat(33),
];
const SHA = 'ab'.repeat(32);

/** A message of a known type with fields of the right names and often the wrong kinds or values. */
function protocolish(r: Rng, n: number): Record<string, unknown> {
  const id = r.bool(0.9) ? `z${n}` : jsonValue(r);
  const pick = <T>(good: T) => (r.bool(0.6) ? good : jsonValue(r));
  switch (r.pick(TYPES)) {
    case 'hello':
      return { type: 'hello', id, protocol: pick(PROTOCOL_VERSION), client: pick('fuzz') };
    case 'lease':
      return {
        type: 'lease',
        id,
        target: pick(r.pick(['pi-fuzz', 'PI-FUZZ', '02:00:00:00:0f:01', 'nope'])),
        lease: r.bool(0.2) ? pick('abc') : undefined,
      };
    case 'upload-begin':
      return {
        type: 'upload-begin',
        id,
        sha256: pick(r.bool(0.5) ? SHA : r.text(64, '0123456789abcdef')),
        size: pick(r.pick([1, 100, 4096, 2 ** 53 - 1, 64 * 1024 ** 4])),
        compression: pick(r.pick(['none', 'gz', 'xz', 'zst', 'lz4'])),
        imageSize: r.bool(0.3) ? pick(r.pick([1, 2 ** 53 - 1])) : undefined,
      };
    case 'upload-end':
      return { type: 'upload-end', id };
    case 'flash':
      return {
        type: 'flash',
        id,
        sha256: pick(SHA),
        bootCheck: r.bool(0.3) ? pick(r.pick(['none', 'tcp:1', 'console:(a+)+$', 'tcp:[::1]:99999'])) : undefined,
        timeouts: r.bool(0.3) ? pick({ stall: pick(1e-9), boot: pick(86_401), boardShow: pick(1) }) : undefined,
      };
    case 'cancel':
      return { type: 'cancel', id, lease: r.bool(0.3) ? pick('abc') : undefined, reason: pick('fuzz') };
    default:
      return { type: r.pick(TYPES), id, [r.text(4)]: jsonValue(r) };
  }
}

type Frame = { text: string } | { binary: Buffer } | { invalidUtf8: Buffer };

/** A frame; those that close the connection (binary outside an upload, bad UTF-8, oversize) are rarer. */
function frame(r: Rng, n: number): Frame {
  const roll = r.int(100);
  if (roll < 8) return { text: JSON.stringify(jsonValue(r)) ?? 'undefined' };
  if (roll < 13) return { text: deep(r) };
  if (roll < 20)
    return {
      text: r.pick([
        '',
        '{',
        'null',
        '[]',
        '"x"',
        '1e400',
        '{"type":"hello"',
        '{"__proto__":{"x":1},"type":"cancel","id":"p"}',
      ]),
    };
  if (roll < 24) return { text: 'x'.repeat(r.pick([65_536, 65_537, 200_000])) };
  if (roll < 28) return { binary: r.bytes(r.int(4096)) };
  if (roll < 29) return { binary: r.bytes(1.2 * MiB) }; // over maxPayload
  if (roll < 31) return { invalidUtf8: Buffer.from([0x7b, 0xc3, 0x28, 0xa0, 0xa1, 0xf0, 0x28, 0x8c, 0xbc, 0x7d]) };
  return { text: JSON.stringify(protocolish(r, n)) };
}

/** One fuzz connection: a handshake (usually), then a burst of frames; returns how it ended. */
async function messageSession(url: string, r: Rng, i: number): Promise<string> {
  const s = await rawSession(url, { hello: false });
  if (i === 0 || r.bool(0.85)) s.send({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION, client: `fuzz ${i}` });
  if (i === 0 || r.bool(0.3)) {
    // Into an upload, so binary frames (too many, too large, after its end) reach the store.
    s.send({ type: 'lease', id: 'l', target: 'pi-fuzz' });
    // The first session waits as long as a loaded machine needs: it is the one every run has.
    const answered = async (type: string) => {
      for (let t = 0; t < (i === 0 ? 1000 : 30); t++, await sleep(10))
        if (s.inbox.some((m) => m.type === type)) return true;
      return false;
    };
    if (await answered('leased')) {
      const size = 1 + r.int(64 * 1024);
      s.send({
        type: 'upload-begin',
        id: 'u',
        sha256: r.text(64, '0123456789abcdef'),
        size,
        compression: r.pick(['none', 'gz']),
      });
      // Frames before upload-ready are outside the upload (fatal); after it they are its bytes.
      if (i === 0 || r.bool(0.9)) await answered('upload-ready');
      for (let k = r.int(8); k > 0; k--) s.ws.send(r.bytes(r.int(size)), { binary: true });
      if (r.bool()) s.send({ type: r.pick(['upload-end', 'flash', 'cancel']), id: 'e', sha256: 'ab'.repeat(32) });
      await sleep(r.int(50));
      s.send({ type: 'cancel', id: 'c' }); // the board for the next session
    }
  }
  const frames = 1 + r.int(40);
  for (let n = 0; n < frames && s.ws.readyState === WebSocket.OPEN; n++) {
    const f = frame(r, n);
    if ('text' in f) s.ws.send(f.text);
    else if ('binary' in f) s.ws.send(f.binary, { binary: true });
    else s.ws.send(f.invalidUtf8, { binary: false });
    if (r.bool(0.3)) await sleep(r.int(5));
  }
  await sleep(r.int(50));
  for (const m of s.inbox) answers.add(m.type === 'error' ? m.code : m.type);
  const state = s.ws.readyState === WebSocket.OPEN ? 'open' : 'closed';
  s.ws.terminate();
  return state;
}

/** What the fuzz sessions were answered: message types, and the code of each `error`. */
const answers = new Set<string>();

/** A real upgrade, then bytes that are not WebSocket frames (bad opcodes, unmasked, reserved bits). */
async function rawFrameGarbage(url: string, r: Rng): Promise<void> {
  const { host, port } = hostPort(url);
  const socket = net.connect({ host, port });
  socket.on('error', () => {});
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(upgradeRequest('/v1/ws', { token: LAB_TOKEN }));
  await new Promise((resolve) => {
    socket.once('data', resolve);
    setTimeout(resolve, 1000);
  });
  for (let k = 1 + r.int(5); k > 0 && !socket.destroyed; k--) {
    socket.write(r.bytes(1 + r.int(300)));
    await sleep(r.int(5));
  }
  await sleep(20);
  socket.destroy();
}

// ---------------------------------------------------------------------------------------------

describe(`fuzz of the agent's network front (seed ${seed}, ${FUZZ_MS} ms per path)`, () => {
  it('upgrade path: every request is answered over HTTP or dropped, none stops the agent', async () => {
    const r = rng(seed);
    let n = 0;
    const statuses: Record<string, number> = {};
    const end = performance.now() + FUZZ_MS;
    // Workers, not batches: a slow case (half-sent, byte by byte) holds up only its own worker.
    // One case of each answer first, so each is checked whatever the seed draws after them.
    const anchors: UpgradeCase[] = [
      upgradeRequest('/v1/ws', { token: LAB_TOKEN }),
      upgradeRequest('//[', { token: LAB_TOKEN }),
      upgradeRequest('/v1/ws', { token: 'wrong-token-0123456789' }),
      upgradeRequest('/elsewhere'),
      upgradeRequest('/v1/ws').subarray(0, 30),
    ].map((bytes, k) => ({ bytes, halfSent: k === 4, endAfterSend: false, what: `anchor case ${k}` }));
    const worker = async () => {
      while (performance.now() < end) {
        const c = anchors.shift() ?? upgradeCase(r, n++);
        const x = await exchange(lab.agent.url, c.bytes, {
          ...(c.pieceBytes ? { pieceBytes: c.pieceBytes, pieceMs: c.pieceMs ?? 0 } : {}),
          endAfterSend: c.endAfterSend,
          deadlineMs: DROPPED_WITHIN_MS + (c.pieceBytes ? c.bytes.length * ((c.pieceMs ?? 0) + 5) : 0),
        });
        checkUpgrade(c, x);
        const status = String(statusOf(x.reply) ?? 'none');
        statuses[status] = (statuses[status] ?? 0) + 1;
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    // Each answer of the upgrade path came: a WebSocket, a bad request-target or HTTP (400), a wrong
    // token (401), another path (404), too slow (408).
    for (const status of ['101', '400', '401', '404', '408'])
      expect(statuses[status] ?? 0, `seed ${seed}: answers ${JSON.stringify(statuses)}`).toBeGreaterThan(0);
    expect(errorLines(), `seed ${seed}`).toEqual([]);
  });

  it('slow-loris: headers sent a byte at a time are cut at the headers timeout, as is a silent peer', async () => {
    const slow = exchange(lab.agent.url, upgradeRequest('/v1/ws', { token: LAB_TOKEN }), {
      pieceBytes: 1,
      pieceMs: 40, // the whole head would take seconds
      deadlineMs: 10_000,
    });
    const silent = exchange(lab.agent.url, Buffer.alloc(0), { deadlineMs: 10_000 });
    for (const [what, x] of [
      ['slow', await slow],
      ['silent', await silent],
    ] as const) {
      expect(x.closed, what).toBe(true);
      expect(x.ms, what).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 50);
      expect(x.ms, what).toBeLessThan(DROPPED_WITHIN_MS);
      expect(statusOf(x.reply), what).toBe(408);
      expect(x.reply).toContain('BAD_REQUEST');
    }
  });

  it('message path: random and malformed frames are refused with codes or close that client only', async () => {
    const r = rng(seed ^ 0x5bd1e995);
    const ended: Record<string, number> = {};
    let i = 0;
    await forAWhile(
      FUZZ_MS,
      async () => {
        const kind = r.int(10) === 0 ? 'garbage' : 'messages';
        if (kind === 'garbage') await rawFrameGarbage(lab.agent.url, r);
        else {
          const state = await messageSession(lab.agent.url, r, i);
          ended[state] = (ended[state] ?? 0) + 1;
        }
        i++;
      },
      10,
    );
    expect(i).toBeGreaterThanOrEqual(10);
    // The frames reached the guards and the service behind them: both answered with their codes.
    for (const answer of ['BAD_MESSAGE', 'BAD_REQUEST', 'NOT_LEASED', 'leased', 'upload-ready'])
      expect([...answers], `seed ${seed}: sessions ${JSON.stringify(ended)}`).toContain(answer);
    expect(errorLines(), `seed ${seed}`).toEqual([]);
  });

  it('afterwards the agent serves a whole job on a simulated board, and the fuzzed board is free', async () => {
    const img = await lab.image('after-fuzz.img', 2 * MiB + 512, 7);
    const conn = await lab.connect();
    await conn.lease('pi-job');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const result = await conn.flash({ sha256: img.sha256 });
    expect(result, `seed ${seed}`).toMatchObject({ ok: true, code: 'OK', bytesWritten: img.size });
    conn.close();
    // A lease the fuzz took on the other board ends with its grace period (2 s in the lab).
    const other = await lab.connect();
    await expect(other.lease('pi-fuzz')).resolves.toMatchObject({ target: { name: 'pi-fuzz' } });
    other.close();
    expect(errorLines(), `seed ${seed}`).toEqual([]);
  });
});
