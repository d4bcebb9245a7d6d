/**
 * Dashboard bench: what the dashboard and /metrics cost the agent. The agent runs in a child
 * process (dashboard-agent.ts) with 50 simulated boards; 10 clients keep 10 jobs running the whole
 * time (lease, upload once, flash, again). Windows alternate between the reference (the jobs
 * alone, no dashboard page open, nobody scraping) and the same jobs with open dashboard pages
 * (each loads the page, its assets and the event stream, and reads every event) and /metrics
 * scraped every second — fifteen times as often as Prometheus' default. The agent's CPU time
 * (process.cpuUsage(), user + system) per window is the figure; the dashboard's share is the
 * difference from the reference measured in the same run, in % of one core (goal < 5 %).
 * It also prints the first load's bytes on the wire (the page, its assets and the stream up to
 * its first snapshot; goal ≤ 200 KB).
 *
 *   npm run bench -- dashboard          (or: npx tsx bench/dashboard.ts [pages])
 */
import { fork, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeSampleImage } from '../runner-agent/src/sample-image.js';
import { connectAgent } from '../src/protocol/client.js';
import { sha256File } from '../test/support/lab.js';

const BOARDS = 50;
const JOBS = 10;
const WINDOW_MS = 8000;
/** Reference and dashboard windows, alternating, this many of each. */
const ROUNDS = 3;
const CPU_GOAL_PERCENT = 5;
const FIRST_LOAD_GOAL = 200 * 1000;

interface Ready {
  url: string;
  httpUrl: string;
  token: string;
  targets: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function cpuOf(child: ChildProcess): Promise<{ micros: number; at: number; servingMs: number }> {
  return new Promise((resolve) => {
    const onMessage = (m: { type?: string; usage?: NodeJS.CpuUsage; at?: number; servingMs?: number }) => {
      if (m.type !== 'cpu' || !m.usage) return;
      child.off('message', onMessage);
      resolve({ micros: m.usage.user + m.usage.system, at: m.at!, servingMs: m.servingMs! });
    };
    child.on('message', onMessage);
    child.send({ type: 'cpu' });
  });
}

/** One GET (or POST) on its own connection; `bytes` counts what came over the wire, headers included. */
function fetchCounted(
  url: string,
  o: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; bytes: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: o.method ?? 'GET', headers: o.headers ?? {}, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          bytes: res.socket.bytesRead,
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      );
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

async function login(base: string, token: string): Promise<string> {
  const r = await fetchCounted(`${base}/dashboard/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }).toString(),
  });
  const cookie = r.headers['set-cookie']?.[0]?.split(';')[0];
  if (r.status !== 303 || !cookie) throw new Error(`login answered ${r.status}`);
  return cookie;
}

/** An open page: its first load (page, assets, stream to the first snapshot), then every event read. */
async function openPage(
  base: string,
  cookie: string,
): Promise<{ firstLoadBytes: number; received: () => number; close(): void }> {
  let bytes = 0;
  for (const asset of ['/dashboard/', '/dashboard/app.css', '/dashboard/app.js', '/dashboard/icon.svg']) {
    const r = await fetchCounted(`${base}${asset}`, { headers: { Cookie: cookie } });
    if (r.status !== 200) throw new Error(`${asset} answered ${r.status}`);
    bytes += r.bytes;
  }
  return new Promise((resolve, reject) => {
    let received = 0;
    let first = true;
    const req = http.get(`${base}/dashboard/events`, { headers: { Cookie: cookie }, agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`events answered ${res.statusCode}`));
      res.on('data', (c: Buffer) => {
        received += c.length;
        if (first && c.includes('event: snapshot')) {
          first = false;
          resolve({
            firstLoadBytes: bytes + res.socket.bytesRead,
            received: () => received,
            close: () => req.destroy(),
          });
        }
      });
      res.on('error', () => {});
    });
    req.on('error', () => {});
  });
}

/** Keeps one job running on `board` until `stop()`: lease, upload (skipped once held), flash, again. */
function keepFlashing(ready: Ready, board: string, image: { path: string; size: number; sha256: string }) {
  let running = true;
  let done = 0;
  const loop = (async () => {
    const conn = await connectAgent({ url: ready.url, token: ready.token, client: `bench ${board}` });
    try {
      while (running) {
        await conn.lease(board, { holder: `bench/lab run ${done + 1} job ${board}` });
        await conn.upload({ ...image, compression: 'none' });
        const r = await conn.flash({ sha256: image.sha256 });
        if (!r.ok) throw new Error(`${board}: job ended ${r.code}: ${r.message}`);
        done++;
      }
    } finally {
      conn.close();
    }
  })();
  return { done: () => done, stop: () => ((running = false), loop) };
}

export async function runDashboardBench(pages = 5): Promise<void> {
  const work = await mkdtemp(path.join(tmpdir(), 'rpi-flash-dashboard-bench-'));
  const child = fork(path.join(import.meta.dirname, 'dashboard-agent.ts'), [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, BOARDS: String(BOARDS) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  try {
    const ready = await new Promise<Ready>((resolve, reject) => {
      child.once('message', (m: Ready & { type: string }) => (m.type === 'ready' ? resolve(m) : reject(new Error())));
      child.once('exit', (code) => reject(new Error(`the bench agent exited (${code})`)));
    });
    console.log(`agent ready: ${BOARDS} simulated boards`);
    const imagePath = path.join(work, 'bench.img');
    await writeSampleImage(imagePath, 2 * 1024 * 1024 + 4096, 7);
    const image = { path: imagePath, size: 2 * 1024 * 1024 + 4096, sha256: await sha256File(imagePath) };
    // The image is uploaded once, before the workers start (the same sha256 cannot be uploaded twice at once).
    const uploader = await connectAgent({ url: ready.url, token: ready.token, client: 'bench upload' });
    await uploader.lease(ready.targets[BOARDS - 1]!, { holder: 'bench upload' });
    await uploader.upload({ ...image, compression: 'none' });
    await uploader.cancel();
    uploader.close();
    const cookie = await login(ready.httpUrl, ready.token);
    const first = await openPage(ready.httpUrl, cookie);
    first.close();
    console.log(`first load measured; starting ${JOBS} jobs`);

    const workers = ready.targets.slice(0, JOBS).map((b) => keepFlashing(ready, b, image));
    const jobsDone = () => workers.reduce((n, w) => n + w.done(), 0);
    await sleep(3000); // warm-up: every worker's image uploaded, the JIT settled
    console.log(`warm-up done: ${jobsDone()} jobs ended`);

    const rows: Array<{
      what: string;
      percent: number;
      serving: number;
      jobs: number;
      eventBytes?: number;
      scrapes?: number;
    }> = [];
    for (let round = 0; round < ROUNDS; round++) {
      for (const withDashboard of [false, true]) {
        const open = withDashboard
          ? await Promise.all(Array.from({ length: pages }, () => openPage(ready.httpUrl, cookie)))
          : [];
        let scrapes = 0;
        let scraping = withDashboard;
        const scraper = (async () => {
          while (scraping) {
            const r = await fetchCounted(`${ready.httpUrl}/metrics`, {
              headers: { Authorization: `Bearer ${ready.token}` },
            });
            if (r.status !== 200 || !r.body.includes('rpi_flash_jobs_total')) throw new Error(`/metrics ${r.status}`);
            scrapes++;
            await sleep(1000);
          }
        })();
        const jobs0 = jobsDone();
        const received0 = open.reduce((n, p) => n + p.received(), 0);
        const cpu0 = await cpuOf(child);
        await sleep(WINDOW_MS);
        const cpu1 = await cpuOf(child);
        scraping = false;
        await scraper;
        const eventBytes = open.reduce((n, p) => n + p.received(), 0) - received0;
        for (const p of open) p.close();
        rows.push({
          what: withDashboard ? `jobs + ${pages} dashboard pages + /metrics every 1 s` : 'reference: jobs alone',
          percent: ((cpu1.micros - cpu0.micros) / 1000 / (cpu1.at - cpu0.at)) * 100,
          serving: ((cpu1.servingMs - cpu0.servingMs) / (cpu1.at - cpu0.at)) * 100,
          jobs: jobsDone() - jobs0,
          ...(withDashboard ? { eventBytes, scrapes } : {}),
        });
        await sleep(500);
      }
    }
    await Promise.all(workers.map((w) => w.stop()));

    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const reference = mean(rows.filter((r) => r.eventBytes === undefined).map((r) => r.percent));
    const dashboard = mean(rows.filter((r) => r.eventBytes !== undefined).map((r) => r.percent));
    console.log(`${BOARDS} simulated boards, ${JOBS} jobs kept running, windows of ${WINDOW_MS / 1000} s`);
    console.log(
      '| window | agent CPU (% of one core) | of it serving pages and scrapes | jobs ended | events read | scrapes |',
    );
    console.log('|---|---|---|---|---|---|');
    for (const r of rows)
      console.log(
        `| ${r.what} | ${r.percent.toFixed(1)} % | ${r.serving.toFixed(2)} % | ${r.jobs} | ` +
          `${r.eventBytes !== undefined ? `${(r.eventBytes / 1024).toFixed(0)} KiB` : '—'} | ${r.scrapes ?? '—'} |`,
      );
    const overhead = dashboard - reference;
    const serving = mean(rows.filter((r) => r.eventBytes !== undefined).map((r) => r.serving));
    console.log(
      `serving the dashboard and metrics, counted in the agent: ${serving.toFixed(2)} % of one core ` +
        `(${((serving / reference) * 100).toFixed(1)} % of the reference's CPU); goal < ${CPU_GOAL_PERCENT} %: ` +
        `${serving < CPU_GOAL_PERCENT ? 'met' : 'MISSED'}`,
    );
    console.log(
      `with/without difference (includes the kernel's socket work; noisy, the jobs vary): ` +
        `${overhead.toFixed(1)} % of one core over the reference ` +
        `(${dashboard.toFixed(1)} % vs ${reference.toFixed(1)} %, ratio ${(dashboard / reference).toFixed(2)}); ` +
        `goal < ${CPU_GOAL_PERCENT} %: ${overhead < CPU_GOAL_PERCENT ? 'met' : 'MISSED'}`,
    );
    console.log(
      `first load (page, app.css, app.js, icon, events to the first snapshot of ${BOARDS} boards): ` +
        `${first.firstLoadBytes} bytes on the wire; goal ≤ ${FIRST_LOAD_GOAL / 1000} KB: ` +
        `${first.firstLoadBytes <= FIRST_LOAD_GOAL ? 'met' : 'MISSED'}`,
    );
  } finally {
    child.send({ type: 'stop' });
    await new Promise((r) => child.once('exit', r));
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href)
  await runDashboardBench(Number(process.argv[2] ?? 5));
