/**
 * Action bench: the bundled action run as GitHub runs it (`node dist/index.js`, INPUT_* variables,
 * GITHUB_OUTPUT / GITHUB_STEP_SUMMARY files) uploading an image to a simulated lab's agent, against
 * a bare `ws` client→server copy of the same bytes in the same run.
 *
 * What is measured, and where:
 * - Upload MB/s, timed on the agent side (in this process): from the first to the last binary
 *   chunk the agent's service receives (`wire`), and from the agent's `upload started` log record
 *   to its `upload stored` record (`whole`: includes the begin/end round trips and the store's
 *   finish). The bare copy is timed the same way, first to last chunk at its server. Both clients
 *   are child processes and both servers live in this process, so the two paths share a topology.
 * - Peak RSS of the action process: VmHWM from /proc/<pid>/status, polled until the process exits
 *   (VmHWM only grows, so the last read is the peak up to a few ms before exit).
 *
 * The target's board never shows up (`sim:no-show`, board-timeout 1 s): the flash fails fast with
 * BOARD_NO_SHOW, which the bench checks, because the upload is what it measures.
 *
 *   npx tsx bench/action.ts                      # 256 MiB and 1 GiB
 *   npx tsx bench/action.ts --size-mib 1024      # one size
 *   npx tsx bench/action.ts --cpu-prof DIR       # also write the action's CPU profile into DIR
 *
 * Needs `npm run bundle` first when src/ changed (it runs dist/index.js as committed).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { WebSocketServer } from 'ws';
import type { ClientConnection } from '../runner-agent/src/ws/server.js';
import {
  MAX_PAYLOAD_MARGIN,
  PROTOCOL_VERSION,
  WS_PATH,
  type AgentMessage,
  type ClientMessage,
} from '../src/protocol/messages.js';
import { LAB_TOKEN, startLab } from '../test/support/lab.js';
import { ROOT, runAction } from '../test/action/run-action.js';

const MiB = 1024 * 1024;
const CHUNK = MiB;

export interface ActionBenchRow {
  sizeMiB: number;
  bareMBps: number;
  bareClientRssMiB: number;
  actionWireMBps: number;
  actionWholeMBps: number;
  actionPeakRssMiB: number;
  /** The action against a protocol sink that stores nothing: the action's own ceiling. */
  sinkMBps: number;
  sinkPeakRssMiB: number;
  /** Share of the agent-side upload time its store spent in `write` (disk, sha256, part CRCs). */
  storeBusyPercent: number;
  resultCode: string;
}

async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/** Peak resident set (VmHWM) of a live process in KiB, or undefined once it is gone. */
async function peakRssKiB(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const m = /VmHWM:\s+(\d+)/.exec(status);
    return m ? Number(m[1]) : undefined; // a zombie has no memory lines
  } catch {
    return undefined;
  }
}

/** Polls a process's VmHWM every 20 ms until `stop()`; `peak()` is the highest value read. */
function watchPeakRss(pid: number) {
  let peak = 0;
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const kib = await peakRssKiB(pid);
      if (kib === undefined) break;
      peak = Math.max(peak, kib);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    async stop(): Promise<number> {
      stopped = true;
      await done;
      return peak / 1024;
    },
  };
}

/**
 * The reference client, run as a child process like the action: the file in 1 MiB binary frames
 * with the same backpressure rule as the protocol client (at most 4 chunks in the socket), then
 * it waits for the server's "done" and prints its own VmHWM.
 */
const BARE_CLIENT = `
import { open, readFile } from 'node:fs/promises';
import WebSocket from 'ws';
const [url, file, size, chunk] = [process.argv[1], process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const ws = new WebSocket(url, { perMessageDeflate: false });
await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
const done = new Promise((resolve) => ws.once('message', resolve));
const fh = await open(file, 'r');
for (let offset = 0; offset < size; offset += chunk) {
  while (ws.bufferedAmount > 4 * chunk) await new Promise((r) => setTimeout(r, 2));
  const buf = Buffer.allocUnsafe(Math.min(chunk, size - offset));
  await fh.read(buf, 0, buf.length, offset);
  ws.send(buf, { binary: true });
}
await fh.close();
await done;
const hwm = /VmHWM:\\s+(\\d+)/.exec(await readFile('/proc/self/status', 'utf8'))[1];
console.log('VmHWM ' + hwm);
ws.close();
`;

async function bareWsCopy(file: string, size: number): Promise<{ mbps: number; clientRssMiB: number }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: CHUNK + 65536 });
  await once(wss, 'listening');
  const { port } = wss.address() as { port: number };
  let received = 0;
  let first = 0;
  let last = 0;
  wss.on('connection', (ws) =>
    ws.on('message', (d: Buffer) => {
      const now = performance.now();
      if (received === 0) first = now;
      received += d.length;
      last = now;
      if (received >= size) ws.send('done');
    }),
  );
  try {
    // cwd ROOT so the evaluated module resolves `ws` from the project's node_modules.
    const child = spawn(
      process.execPath,
      ['--input-type=module', '-e', BARE_CLIENT, `ws://127.0.0.1:${port}`, file, String(size), String(CHUNK)],
      {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const [code] = (await once(child, 'close')) as [number | null];
    if (code !== 0 || received !== size)
      throw new Error(`bare ws client exited with ${code} after ${received} of ${size} bytes: ${out}`);
    return {
      mbps: size / 1e6 / ((last - first) / 1000),
      clientRssMiB: Number(/VmHWM (\d+)/.exec(out)?.[1] ?? 0) / 1024,
    };
  } finally {
    for (const ws of wss.clients) ws.terminate();
    await new Promise((r) => wss.close(r));
  }
}

/**
 * A stand-in agent that speaks the protocol but stores nothing: it acknowledges each chunk on
 * arrival and fails the flash at once. Running the action against it shows the action's own
 * ceiling (reading, sending, flow control), apart from the real agent's store.
 */
async function sinkAgent(size: number) {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    path: WS_PATH,
    perMessageDeflate: false,
    maxPayload: CHUNK + MAX_PAYLOAD_MARGIN,
  });
  await once(wss, 'listening');
  const { port } = wss.address() as { port: number };
  const timing = { first: 0, last: 0, bytes: 0 };
  wss.on('connection', (ws) => {
    let upload = '';
    let acked = 0;
    const send = (m: AgentMessage) => ws.send(JSON.stringify(m));
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        const now = performance.now();
        if (timing.bytes === 0) timing.first = now;
        timing.bytes += data.length;
        timing.last = now;
        if (timing.bytes - acked >= CHUNK || timing.bytes === size)
          send({ type: 'upload-progress', re: upload, received: (acked = timing.bytes) });
        return;
      }
      const m = JSON.parse(data.toString()) as ClientMessage;
      switch (m.type) {
        case 'hello':
          return send({
            type: 'welcome',
            re: m.id,
            protocol: PROTOCOL_VERSION,
            agent: 'bench-sink',
            chunkSize: CHUNK,
            maxPayload: CHUNK + MAX_PAYLOAD_MARGIN,
          });
        case 'lease':
          return send({
            type: 'leased',
            re: m.id,
            lease: 'sink-lease',
            target: { name: 'bench', mac: '02:00:00:00:be:01', ip: '127.0.0.1' },
          });
        case 'upload-begin':
          upload = m.id;
          return send({ type: 'upload-ready', re: m.id, offset: 0 });
        case 'upload-end':
          return send({ type: 'upload-done', re: m.id, sha256: '0'.repeat(64), size, imageSize: size, skipped: false });
        case 'flash':
          return send({ type: 'error', re: m.id, code: 'BOARD_NO_SHOW', message: 'the bench sink has no board' });
        case 'cancel':
          return send({ type: 'released', re: m.id, lease: 'sink-lease' });
      }
    });
  });
  return {
    url: `ws://127.0.0.1:${port}`,
    mbps: () => size / 1e6 / ((timing.last - timing.first) / 1000),
    received: () => timing.bytes,
    close: async () => {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((r) => wss.close(r));
    },
  };
}

interface ActionRunFigures {
  peakRssMiB: number;
  resultCode: string;
}

/** Runs dist/index.js against `url` and watches its peak RSS; the flash must fail with BOARD_NO_SHOW. */
async function runBundledAction(
  url: string,
  workspace: string,
  label: string,
  cpuProfDir: string | undefined,
): Promise<ActionRunFigures> {
  let rss: ReturnType<typeof watchPeakRss> | undefined;
  const run = await runAction({
    workspace,
    inputs: {
      'agent-url': url,
      token: LAB_TOKEN,
      target: 'bench',
      image: 'bench.img',
      'board-timeout': '1',
      'boot-check': 'none',
      'job-timeout': '900',
    },
    ...(cpuProfDir && {
      nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`, `--cpu-prof-name=action-${label}.cpuprofile`],
    }),
    onSpawn: (pid) => (rss = watchPeakRss(pid)),
    timeoutMs: 900_000,
  });
  const peakRssMiB = (await rss?.stop()) ?? 0;
  const resultCode = run.outputs['result-code'] ?? '';
  if (resultCode !== 'BOARD_NO_SHOW')
    throw new Error(
      `the action (${label}) ended with ${resultCode || `exit ${run.code}`}, expected BOARD_NO_SHOW:\n` +
        `${run.stdout}\n${run.stderr}`,
    );
  return { peakRssMiB, resultCode };
}

async function benchOneSize(sizeMiB: number, cpuProfDir: string | undefined): Promise<ActionBenchRow> {
  const size = sizeMiB * MiB;
  const lab = await startLab({
    boards: [{ name: 'bench', mac: '02:00:00:00:be:01', reset: 'sim:no-show' }],
    config: { flash: { partSize: '64MiB', retries: 2 }, sim: { bootPort: 2222, cardSize: '4GiB' }, logLevel: 'info' },
  });
  const workspace = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-action-bench-'));
  try {
    const image = await lab.image('bench.img', size, 7);
    await copyFile(image.path, path.join(workspace, 'bench.img'));
    // Write back the fresh files first, so their writeback does not compete with the uploads' writes.
    for (const file of [image.path, path.join(workspace, 'bench.img')]) await syncFile(file);
    const bare = await bareWsCopy(image.path, size);

    // Agent-side chunk timing: observe the service's binary handler without changing what it does.
    const service = lab.agent.service;
    const onBinary = service.onBinary.bind(service);
    let first = 0;
    let last = 0;
    let bytes = 0;
    service.onBinary = (conn: ClientConnection, data: Buffer) => {
      const now = performance.now();
      if (bytes === 0) first = now;
      bytes += data.length;
      last = now;
      onBinary(conn, data);
    };
    // How much of the upload the agent's store spent writing (disk, sha256, part CRCs): near 100 %
    // means the agent's store, not the action or the socket, sets the pace.
    const store = lab.agent.store;
    const begin = store.begin.bind(store);
    let storeBusyMs = 0;
    store.begin = async (request) => {
      const session = await begin(request);
      const write = session.write.bind(session);
      session.write = async (chunk) => {
        const t = performance.now();
        try {
          await write(chunk);
        } finally {
          storeBusyMs += performance.now() - t;
        }
      };
      return session;
    };

    const { peakRssMiB: peakMiB, resultCode } = await runBundledAction(
      lab.agent.url,
      workspace,
      `${sizeMiB}MiB-agent`,
      cpuProfDir,
    );
    if (bytes !== size) throw new Error(`the agent received ${bytes} of ${size} bytes (was the upload skipped?)`);

    const sink = await sinkAgent(size);
    let sinkFigures: ActionRunFigures;
    try {
      sinkFigures = await runBundledAction(sink.url, workspace, `${sizeMiB}MiB-sink`, cpuProfDir);
      if (sink.received() !== size) throw new Error(`the sink received ${sink.received()} of ${size} bytes`);
    } finally {
      await sink.close();
    }

    const at = (msg: string) => lab.logs.find((r) => r.msg === msg)?.time.getTime();
    const started = at('upload started');
    const stored = at('upload stored');
    if (started === undefined || stored === undefined)
      throw new Error('the agent logged no "upload started"/"upload stored"');
    return {
      sizeMiB,
      bareMBps: bare.mbps,
      bareClientRssMiB: bare.clientRssMiB,
      actionWireMBps: size / 1e6 / ((last - first) / 1000),
      actionWholeMBps: size / 1e6 / ((stored - started) / 1000),
      actionPeakRssMiB: peakMiB,
      sinkMBps: sink.mbps(),
      sinkPeakRssMiB: sinkFigures.peakRssMiB,
      storeBusyPercent: (100 * storeBusyMs) / (last - first),
      resultCode,
    };
  } finally {
    await rm(workspace, { recursive: true, force: true });
    await lab.stop();
  }
}

export async function runActionBench(o: { sizeMiB?: number; cpuProfDir?: string } = {}): Promise<ActionBenchRow[]> {
  const sizes = o.sizeMiB !== undefined ? [o.sizeMiB] : [256, 1024];
  const rows: ActionBenchRow[] = [];
  for (const sizeMiB of sizes) rows.push(await benchOneSize(sizeMiB, o.cpuProfDir));
  const ratio = (x: number, ref: number) => (x / ref).toFixed(2);
  console.log(
    '\nAction (node dist/index.js) upload on loopback, 1 MiB chunks, timed where the bytes arrive (first → last chunk)',
  );
  console.log('| image | path | MB/s | ratio vs bare ws | peak RSS of the sending process |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) {
    const img = `${r.sizeMiB} MiB raw`;
    console.log(
      `| ${img} | bare ws client → ws server (reference) ` +
        `| ${r.bareMBps.toFixed(0)} | 1.00 | ${r.bareClientRssMiB.toFixed(0)} MiB |`,
    );
    console.log(
      `| ${img} | action → agent (stores: disk, sha256, part CRCs) ` +
        `| ${r.actionWireMBps.toFixed(0)} | ${ratio(r.actionWireMBps, r.bareMBps)} ` +
        `| ${r.actionPeakRssMiB.toFixed(0)} MiB |`,
    );
    console.log(
      `| ${img} | action → agent, upload-begin → "upload stored" in the agent's log ` +
        `| ${r.actionWholeMBps.toFixed(0)} | ${ratio(r.actionWholeMBps, r.bareMBps)} | |`,
    );
    console.log(
      `| ${img} | action → protocol sink (acks on arrival, stores nothing) ` +
        `| ${r.sinkMBps.toFixed(0)} | ${ratio(r.sinkMBps, r.bareMBps)} | ${r.sinkPeakRssMiB.toFixed(0)} MiB |`,
    );
  }
  const busy = rows.map((r) => `${r.sizeMiB} MiB ${r.storeBusyPercent.toFixed(0)} %`).join(', ');
  const ended = [...new Set(rows.map((r) => r.resultCode))].join(', ');
  console.log(
    `Agent store busy (share of the agent-side upload time spent in the store's write): ${busy}; ` +
      `every action run ended ${ended} as intended.`,
  );
  console.log('Goals: upload ≥ 0.8× the bare copy; action peak RSS < 150 MB at any image size.');
  return rows;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const sizeMiB = arg('--size-mib');
  const cpuProfDir = arg('--cpu-prof');
  runActionBench({
    ...(sizeMiB !== undefined && { sizeMiB: Number(sizeMiB) }),
    ...(cpuProfDir !== undefined && { cpuProfDir: path.resolve(cpuProfDir) }),
  }).then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
