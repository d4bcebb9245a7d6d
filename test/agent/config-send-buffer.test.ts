/**
 * `listen.maxSendBuffer`: unread replies one client may leave queued before the agent stops reading
 * from it (twice it drops the client). A size, 8 MiB by default, from 1 MiB to 1 GiB.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, validateConfig } from '../../runner-agent/src/config.js';

const base = { token: 'a-token-of-sufficient-length', targets: 'targets.csv' };

async function problems(maxSendBuffer: unknown): Promise<string> {
  const err = await validateConfig({ ...base, listen: { maxSendBuffer } }, '/').catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ConfigError);
  return (err as ConfigError).problems.join('\n');
}

describe('listen.maxSendBuffer', () => {
  it('is 8 MiB unless set, and takes a size', async () => {
    expect((await validateConfig(base, '/')).listen.maxSendBuffer).toBe(8 * 1024 * 1024);
    const c = await validateConfig({ ...base, listen: { maxSendBuffer: '32MiB' } }, '/');
    expect(c.listen.maxSendBuffer).toBe(32 * 1024 * 1024);
    expect(c.listen.port).toBe(8443);
  });

  it('refuses what is not a size, and sizes below 1 MiB or above 1 GiB', async () => {
    expect(await problems('lots')).toMatch(/"listen.maxSendBuffer" must be a size like 64MiB/);
    expect(await problems('512KiB')).toMatch(/"listen.maxSendBuffer" must be from 1MiB to 1GiB, got "512KiB"/);
    expect(await problems('2GiB')).toMatch(/"listen.maxSendBuffer" must be from 1MiB to 1GiB/);
  });
});
