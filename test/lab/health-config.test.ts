/** The config's `name` and `health` settings: defaults, the duration grammar, every problem named. */
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseDuration, validateConfig } from '../../runner-agent/src/config.js';

const base = { token: 'a-token-of-sufficient-length', targets: 'targets.csv' };

describe('name and health settings', () => {
  it('default to the host name and three failures, with no image and no schedule', async () => {
    const c = await validateConfig(base, '/etc/rpi-flash');
    expect(c.name).toBe(os.hostname());
    expect(c.health).toEqual({ afterFailures: 3 });
  });

  it('read durations and resolve the image against the config folder', async () => {
    const c = await validateConfig(
      { ...base, name: 'lab-b', health: { image: 'good.img', schedule: '24h', afterFailures: 2, bootCheck: 'tcp:22' } },
      '/etc/rpi-flash',
    );
    expect(c.name).toBe('lab-b');
    expect(c.health).toEqual({
      image: '/etc/rpi-flash/good.img',
      schedule: 86_400,
      afterFailures: 2,
      bootCheck: 'tcp:22',
    });
    expect([parseDuration('90s'), parseDuration('15m'), parseDuration(' 2d '), parseDuration(30)]).toEqual([
      90, 900, 172_800, 30,
    ]);
    for (const bad of ['soon', '0', '-5', '1w', 0, null]) expect(parseDuration(bad), String(bad)).toBeUndefined();
  });

  it('list every problem at once', async () => {
    const err = await validateConfig(
      { ...base, name: 'tab\there', health: { schedule: 'weekly', afterFailures: 0, bootCheck: 'ping', extra: 1 } },
      '/etc/rpi-flash',
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    expect(problems).toMatch(/"name" must be at most 128 characters, without control characters/);
    expect(problems).toMatch(/unknown setting "health.extra"/);
    expect(problems).toMatch(/"health.schedule" must be a duration like "24h".*got "weekly"/);
    expect(problems).toMatch(/"health.schedule" needs "health.image"/);
    expect(problems).toMatch(/"health.afterFailures" must be an integer from 1 to 1000, got 0/);
    expect(problems).toMatch(/"health.bootCheck": /);
  });
});
