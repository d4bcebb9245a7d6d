/**
 * The dashboard's and the metrics' HTTP surface on a real agent over loopback: the routes and
 * their refusals, the login that exchanges a token for a session cookie, the live feed (server-sent
 * events) during a real job on a simulated board, the job's log from its record (no report secret,
 * no token), and /metrics scraped and parsed after the job.
 */
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LAB_TOKEN, startLab, type Lab } from '../support/lab.js';
import { waitUntil } from '../support/wait.js';
import { parseScriptImage } from '../../runner-agent/src/board/uimage.js';
import { FLASH_SCRIPT, macDir } from '../../src/protocol/tftp-names.js';
import type { LabSnapshot } from '../../runner-agent/src/lab-view.js';
import type { LiveLogLine } from '../../runner-agent/src/dashboard/live-feed.js';

const DASHBOARD_TOKEN = 'dashboard-read-only-0123456789';
const METRICS_TOKEN = 'metrics-scrape-token-0123456789';
const MiB = 1024 * 1024;
const MAC = '02:00:00:00:0d:01';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One HTTP request over a real socket; redirects are answers, not followed. */
function request(
  url: string,
  o: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: o.method ?? 'GET', headers: o.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

async function login(base: string, token: string): Promise<Answer> {
  return request(`${base}/dashboard/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }).toString(),
  });
}

/** An open /dashboard/events stream, its events parsed as they come. */
function openEvents(
  url: string,
  cookie: string,
): Promise<{ events: Array<{ event: string; data: unknown }>; close(): void }> {
  return new Promise((resolve, reject) => {
    const events: Array<{ event: string; data: unknown }> = [];
    const req = http.get(url, { headers: { Cookie: cookie } }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`events answered ${res.statusCode}`));
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (text: string) => {
        buffer += text;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event && data) events.push({ event, data: JSON.parse(data) });
        }
      });
      res.on('error', () => {});
      resolve({ events, close: () => req.destroy() });
    });
    req.on('error', reject);
  });
}

function sample(text: string, name: string, labels = ''): number | undefined {
  const escaped = `${name}${labels}`.replace(/[{}"+.]/g, (c) => `\\${c}`);
  const m = new RegExp(`^${escaped} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

describe('the dashboard and /metrics over HTTP', () => {
  it('refuse what they do not serve, and open only with a token', async () => {
    lab = await startLab({
      boards: [{ name: 'pi-a', mac: MAC }],
      config: { dashboard: { token: DASHBOARD_TOKEN }, metrics: { enabled: true, token: METRICS_TOKEN } },
    });
    const base = lab.agent.httpUrl;
    expect(await request(`${base}/`)).toMatchObject({ status: 303, headers: { location: '/dashboard/' } });
    // Not logged in: the page sends the browser to the form, the feeds answer 401.
    expect(await request(`${base}/dashboard/`)).toMatchObject({
      status: 303,
      headers: { location: '/dashboard/login' },
    });
    expect((await request(`${base}/dashboard/events`)).status).toBe(401);
    expect((await request(`${base}/dashboard/api/lab`)).status).toBe(401);
    expect((await request(`${base}/dashboard/jobs/0123abcd/log`)).status).toBe(401);
    const form = await request(`${base}/dashboard/login`);
    expect(form.status).toBe(200);
    expect(form.body).toContain('<form method="post" action="/dashboard/login">');
    expect(form.headers['content-security-policy']).toContain("default-src 'none'");
    // Only what the table serves, only by its methods, only with bodies it takes.
    expect((await request(`${base}/nowhere`)).status).toBe(404);
    const put = await request(`${base}/dashboard/`, { method: 'PUT' });
    expect(put).toMatchObject({ status: 405, headers: { allow: 'GET, HEAD' } });
    const big = await request(`${base}/dashboard/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: `token=${'x'.repeat(4096)}`,
    });
    expect(big.status).toBe(413);
    expect((await request(`${base}/dashboard/jobs/..%2f..%2fetc/log`, { headers: { Cookie: 'x=y' } })).status).toBe(
      404,
    );
    // A wrong token is refused; the read-only one and the agent's open a session.
    const wrong = await login(base, 'not-the-token-at-all-0000');
    expect(wrong.status).toBe(401);
    expect(wrong.headers['set-cookie']).toBeUndefined();
    for (const token of [DASHBOARD_TOKEN, LAB_TOKEN]) {
      const ok = await login(base, token);
      expect(ok).toMatchObject({ status: 303, headers: { location: '/dashboard/' } });
      const cookie = ok.headers['set-cookie']![0]!;
      expect(cookie).toMatch(/^rpi_flash_session=[A-Za-z0-9_-]{43}; Path=\/dashboard; HttpOnly; SameSite=Strict;/);
      expect(cookie).not.toContain(token);
      const page = await request(`${base}/dashboard/`, { headers: { Cookie: cookie.split(';')[0]! } });
      expect(page.status).toBe(200);
      expect(page.body).toContain('<script src="/dashboard/app.js" defer></script>');
      expect(page.headers['content-security-policy']).toBe(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
          "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
      );
    }
    // Logging out ends the session: the same cookie opens nothing.
    const session = (await login(base, DASHBOARD_TOKEN)).headers['set-cookie']![0]!.split(';')[0]!;
    const out = await request(`${base}/dashboard/logout`, { method: 'POST', headers: { Cookie: session } });
    expect(out.headers['set-cookie']![0]).toContain('Max-Age=0');
    expect((await request(`${base}/dashboard/api/lab`, { headers: { Cookie: session } })).status).toBe(401);
    // A bearer token works for scripts; the metrics token opens only /metrics, the dashboard's only the dashboard.
    const snapshot = await request(`${base}/dashboard/api/lab`, { headers: { Authorization: `Bearer ${LAB_TOKEN}` } });
    expect((JSON.parse(snapshot.body) as LabSnapshot).boards).toMatchObject([{ name: 'pi-a', state: 'idle' }]);
    const bearer = (t: string) => ({ headers: { Authorization: `Bearer ${t}` } });
    expect((await request(`${base}/dashboard/api/lab`, bearer(METRICS_TOKEN))).status).toBe(401);
    expect((await request(`${base}/metrics`)).status).toBe(401);
    expect((await request(`${base}/metrics`, bearer(DASHBOARD_TOKEN))).status).toBe(401);
    expect((await request(`${base}/metrics`, bearer(METRICS_TOKEN))).status).toBe(200);
    expect((await request(`${base}/metrics`, bearer(LAB_TOKEN))).status).toBe(200);
  });

  it('stream a job live, keep its log without the report secret, and count it in /metrics', async () => {
    lab = await startLab({
      boards: [
        // A card writing 1 MiB/s keeps the board flashing across several of the feed's 300 ms ticks.
        { name: 'pi-a', mac: MAC, reset: 'sim:slow-card:1024' },
        { name: 'pi-b', mac: '02:00:00:00:0d:02' },
      ],
      config: { metrics: { enabled: true, token: METRICS_TOKEN } },
    });
    const base = lab.agent.httpUrl;
    const cookie = (await login(base, LAB_TOKEN)).headers['set-cookie']![0]!.split(';')[0]!;
    const live = await openEvents(`${base}/dashboard/events`, cookie);
    const snapshots = () => live.events.filter((e) => e.event === 'snapshot').map((e) => e.data as LabSnapshot);
    const lines = () =>
      live.events.filter((e) => e.event === 'log').flatMap((e) => (e.data as { lines: LiveLogLine[] }).lines);
    await waitUntil(() => snapshots().length > 0, 'the first snapshot');
    expect(snapshots()[0]!.boards.map((b) => [b.name, b.state])).toEqual([
      ['pi-a', 'idle'],
      ['pi-b', 'idle'],
    ]);

    const conn = await lab.connect();
    const img = await lab.image('a.img', 2 * MiB + 512, 3);
    await conn.lease('pi-a', { holder: 'octo/lab run 77.1 job flash' });
    await waitUntil(() => snapshots().some((s) => s.boards[0]!.state === 'leased'), 'pi-a leased in the feed');
    expect(snapshots().at(-1)!.boards[0]!.lease?.holder).toBe('octo/lab run 77.1 job flash');
    await conn.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    // The report secret is in the board's script only; catch it while the job is staged.
    let secret: string | undefined;
    const scr = path.join(lab.agent.config.tftp.root, macDir(MAC), FLASH_SCRIPT);
    const result = conn.flash({ sha256: img.sha256 });
    await waitUntil(async () => {
      const buf = await readFile(scr).catch(() => undefined);
      secret = buf && /^setenv rpf_rep \S+\/([0-9a-f]{16})\/$/m.exec(parseScriptImage(buf).script)?.[1];
      return secret !== undefined;
    }, 'the staged flash.scr');
    const r = await result;
    expect(r).toMatchObject({ ok: true, code: 'OK' });
    await waitUntil(
      () => snapshots().some((s) => s.recent.some((j) => j.id === r.job)),
      'the finished job in the feed',
    );
    // While it ran the feed showed it flashing, then booting, with its log lines; after, idle and OK.
    const states = snapshots().map((s) => s.boards[0]!.state);
    expect(states).toContain('flashing');
    expect(states.indexOf('flashing')).toBeLessThan(states.lastIndexOf('idle'));
    expect(snapshots().some((s) => s.running.some((j) => j.id === r.job && j.target === 'pi-a'))).toBe(true);
    expect(lines().some((l) => l.job === r.job && /part 3\/3: written and read back/.test(l.message))).toBe(true);
    const last = snapshots().at(-1)!;
    expect(last.boards.map((b) => b.state)).toEqual(['idle', 'idle']);
    expect(last.running).toEqual([]);
    expect(last.recent[0]).toMatchObject({
      id: r.job,
      target: 'pi-a',
      ok: true,
      code: 'OK',
      holder: 'octo/lab run 77.1 job flash',
    });
    live.close();

    // The job's log from its record: the same lines, the secret replaced, no token.
    const log = await request(`${base}/dashboard/jobs/${r.job}/log`, { headers: { Cookie: cookie } });
    expect(log.status).toBe(200);
    expect(log.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(log.body).toMatch(/part 3\/3: written and read back/);
    expect(log.body).not.toContain(secret!);
    expect(log.body).not.toContain(LAB_TOKEN);
    expect((await request(`${base}/dashboard/jobs/0123456789ab/log`, { headers: { Cookie: cookie } })).status).toBe(
      404,
    );

    // A board the operator takes out shows so, with the reason, in the snapshot and in the gauge.
    await conn.board({ action: 'maintenance', target: 'pi-b', reason: 'rewiring' });
    const lab2 = await request(`${base}/dashboard/api/lab`, { headers: { Cookie: cookie } });
    const pib = (JSON.parse(lab2.body) as LabSnapshot).boards[1]!;
    expect(pib).toMatchObject({ name: 'pi-b', state: 'maintenance' });
    expect(pib.reason).toContain('rewiring');

    const metrics = await request(`${base}/metrics`, { headers: { Authorization: `Bearer ${METRICS_TOKEN}` } });
    expect(metrics.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = metrics.body;
    expect(sample(text, 'rpi_flash_jobs_total', '{code="OK"}')).toBe(1);
    expect(sample(text, 'rpi_flash_flash_duration_seconds_count')).toBe(1);
    expect(sample(text, 'rpi_flash_flash_duration_seconds_bucket', '{le="3600"}')).toBe(1);
    expect(sample(text, 'rpi_flash_boot_duration_seconds_count')).toBe(1);
    expect(sample(text, 'rpi_flash_upload_bytes_total')).toBe(img.size);
    // Three parts and the script, acknowledged by the board.
    expect(sample(text, 'rpi_flash_tftp_served_bytes_total')).toBeGreaterThanOrEqual(img.size);
    expect(sample(text, 'rpi_flash_boards', '{state="idle"}')).toBe(1);
    expect(sample(text, 'rpi_flash_boards', '{state="maintenance"}')).toBe(1);
    expect(sample(text, 'rpi_flash_boards', '{state="flashing"}')).toBe(0);
    expect(sample(text, 'rpi_flash_queue_length', '{target="pi-a"}')).toBe(0);
    expect(sample(text, 'rpi_flash_jobs_running')).toBe(0);
    expect(text).toMatch(/^# TYPE rpi_flash_flash_duration_seconds histogram$/m);
  });

  it('is off when the config says so: /metrics and the dashboard answer 404', async () => {
    lab = await startLab({ boards: [{ name: 'pi-a', mac: MAC }], config: { dashboard: { enabled: false } } });
    const bearer = { headers: { Authorization: `Bearer ${LAB_TOKEN}` } };
    expect((await request(`${lab.agent.httpUrl}/metrics`, bearer)).status).toBe(404);
    expect((await request(`${lab.agent.httpUrl}/dashboard/`, bearer)).status).toBe(404);
  });
});
