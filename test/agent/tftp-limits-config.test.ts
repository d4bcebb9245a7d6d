/** The TFTP server's limits in agent.json: defaults, validation, and what reaches the server. */
import { describe, expect, it } from 'vitest';
import { ConfigError, validateConfig } from '../../runner-agent/src/config.js';

const token = 'a-token-of-sufficient-length';

describe('tftp limits in the agent configuration', () => {
  it('defaults to 8 transfers per client, 256 in all and a 10 s cap on the timeout option', async () => {
    const c = await validateConfig({ token, targets: 'targets.csv' }, '/etc/rpi-flash');
    expect(c.tftp).toMatchObject({ maxTransfersPerClient: 8, maxTransfers: 256, maxTimeout: 10 });
  });

  it('takes values in range', async () => {
    const c = await validateConfig(
      { token, targets: 't.csv', tftp: { maxTransfersPerClient: 2, maxTransfers: 32, maxTimeout: 255 } },
      '/',
    );
    expect(c.tftp).toMatchObject({ maxTransfersPerClient: 2, maxTransfers: 32, maxTimeout: 255 });
  });

  it('refuses values out of range, and more per client than in all', async () => {
    const problems = async (tftp: Record<string, unknown>) =>
      ((await validateConfig({ token, targets: 't.csv', tftp }, '/').catch((e: unknown) => e)) as ConfigError).problems;
    expect(await problems({ maxTransfersPerClient: 0, maxTransfers: 'many', maxTimeout: 256 })).toEqual([
      '"tftp.maxTransfersPerClient" must be an integer from 1 to 1024, got 0',
      '"tftp.maxTransfers" must be an integer from 1 to 4096, got "many"',
      '"tftp.maxTimeout" must be an integer from 1 to 255, got 256',
    ]);
    expect(await problems({ maxTransfersPerClient: 16, maxTransfers: 8 })).toEqual([
      '"tftp.maxTransfersPerClient" (16) must not exceed "tftp.maxTransfers" (8)',
    ]);
  });
});
