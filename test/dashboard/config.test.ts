/** The dashboard's and metrics' settings: defaults, and every mistake listed with the key it is about. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, validateConfig } from '../../runner-agent/src/config.js';

const TOKEN = 'agent-token-0123456789';
let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function problems(extra: Record<string, unknown>): Promise<string[]> {
  try {
    await validateConfig({ token: TOKEN, targets: 'targets.csv', ...extra }, '/tmp');
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('dashboard and metrics settings', () => {
  it('default to the dashboard on, /metrics off, no extra tokens, GitHub run links', async () => {
    const c = await validateConfig({ token: TOKEN, targets: 'targets.csv' }, '/tmp');
    expect(c.dashboard).toEqual({ enabled: true, maxClients: 16, runLinkBase: 'https://github.com' });
    expect(c.metrics).toEqual({ enabled: false });
  });

  it('read their tokens from the config or from a file', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-config-'));
    await writeFile(path.join(dir, 'metrics-token'), 'metrics-token-from-a-file\n');
    const c = await validateConfig(
      {
        token: TOKEN,
        targets: 'targets.csv',
        dashboard: { token: 'dashboard-token-0123456', maxClients: 4, runLinkBase: 'https://ghe.example' },
        metrics: { enabled: true, tokenFile: 'metrics-token' },
      },
      dir,
    );
    expect(c.dashboard).toEqual({
      enabled: true,
      token: 'dashboard-token-0123456',
      maxClients: 4,
      runLinkBase: 'https://ghe.example',
    });
    expect(c.metrics).toEqual({ enabled: true, token: 'metrics-token-from-a-file' });
  });

  it('refuse short tokens, the agent token again, both token and tokenFile, and bad values', async () => {
    expect(await problems({ dashboard: { token: 'short' }, metrics: { token: TOKEN } })).toEqual([
      'the dashboard token must be at least 16 characters',
      'the metrics token must differ from the agent token (it is meant to open less)',
    ]);
    expect(await problems({ metrics: { token: 'metrics-token-0123456', tokenFile: 'x' } })).toContain(
      'set "metrics.token" or "metrics.tokenFile", not both',
    );
    expect(
      await problems({
        dashboard: { enabled: 'yes', maxClients: 0, runLinkBase: 'github.com', colour: 'red' },
        metrics: { enabled: 1 },
      }),
    ).toEqual([
      'unknown setting "dashboard.colour"',
      '"dashboard.runLinkBase" must be an http(s) URL like https://github.com, got "github.com"',
      '"dashboard.enabled" must be true or false',
      '"dashboard.maxClients" must be an integer from 1 to 1000, got 0',
      '"metrics.enabled" must be true or false',
    ]);
  });
});
