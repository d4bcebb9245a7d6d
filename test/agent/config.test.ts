import { describe, expect, it } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, parseSize, validateConfig } from '../../runner-agent/src/config.js';
import { parseCliArgs } from '../../runner-agent/src/cli.js';

const token = 'a-token-of-sufficient-length';

describe('agent configuration', () => {
  it('fills defaults and resolves paths against the config folder', async () => {
    const c = await validateConfig({ token, targets: 'targets.csv' }, '/etc/rpi-flash');
    expect(c.targets).toBe('/etc/rpi-flash/targets.csv');
    expect(c.tftp.port).toBe(69);
    expect(c.listen.port).toBe(8443);
    expect(c.bootCheck).toBe('tcp:22');
    expect(c.timeouts.leaseGrace).toBe(60);
    expect(c.flash.partSize).toBe(64 * 1024 * 1024);
  });

  it('lists every problem at once', async () => {
    const err = await validateConfig(
      {
        targets: 'x.csv',
        tftp: { port: 70000, bogus: 1 },
        flash: { partSize: '1000' },
        bootCheck: 'http:80',
        logLevel: 'loud',
        extra: true,
      },
      '/',
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    expect(problems).toMatch(/"token" or "tokenFile" is required/);
    expect(problems).toMatch(/"tftp.port" must be an integer from 0 to 65535/);
    expect(problems).toMatch(/unknown setting "tftp.bogus"/);
    expect(problems).toMatch(/"flash.partSize" must be a multiple of 512/);
    expect(problems).toMatch(/"bootCheck": unknown boot check "http:80"/);
    expect(problems).toMatch(/"logLevel"/);
    expect(problems).toMatch(/unknown setting "extra"/);
    expect((err as ConfigError).problems.length).toBeGreaterThanOrEqual(7);
  });

  it('flash.tftpWindowSize is a window of 1 to 64 blocks or "auto"', async () => {
    const window = async (tftpWindowSize: unknown) =>
      (await validateConfig({ token, targets: 't.csv', flash: { tftpWindowSize } }, '/')).flash.tftpWindowSize;
    expect(await window('auto')).toBe('auto');
    expect(await window(8)).toBe(8);
    expect(await window(undefined)).toBeUndefined();
    for (const [bad, said] of [
      ['fast', /"flash.tftpWindowSize" must be a window of 1 to 64 blocks or "auto", got "fast"/],
      [65, /"flash.tftpWindowSize" must be an integer from 1 to 64, got 65/],
    ] as const) {
      const err = await window(bad).catch((e: unknown) => e);
      expect((err as ConfigError).problems).toContainEqual(expect.stringMatching(said));
    }
  });

  it('reads the token from a file and applies flag overrides', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cfg-'));
    await writeFile(path.join(dir, 'token'), `${token}\n`);
    await writeFile(
      path.join(dir, 'agent.json'),
      JSON.stringify({ tokenFile: 'token', targets: 't.csv', tftp: { port: 6969 } }),
    );
    const args = parseCliArgs([
      '--config',
      path.join(dir, 'agent.json'),
      '--tftp-port',
      '1069',
      '--listen',
      '127.0.0.1:9000',
    ]);
    const c = await loadConfig(args.config!, args.overrides);
    expect(c.token).toBe(token);
    expect(c.tftp.port).toBe(1069);
    expect(c.listen).toMatchObject({ host: '127.0.0.1', port: 9000 });
  });

  it('names a missing config file and malformed flags', async () => {
    await expect(loadConfig('/nonexistent/agent.json')).rejects.toThrow(
      'config file /nonexistent/agent.json does not exist',
    );
    expect(() => parseCliArgs(['--config', 'a.json', '--tftp-port', 'sixty-nine'])).toThrow(
      '--tftp-port: "sixty-nine" is not a port number',
    );
    expect(() => parseCliArgs(['--tftp-port', '69'])).toThrow('--config FILE is required');
    expect(() => parseCliArgs(['--config', 'a', '--nope'])).toThrow(/Unknown option '--nope'/);
  });

  it('parses sizes', () => {
    expect(parseSize('64MiB')).toBe(64 * 1024 ** 2);
    expect(parseSize('1 GiB')).toBe(1024 ** 3);
    expect(parseSize(4096)).toBe(4096);
    expect(parseSize('12 parsecs')).toBeUndefined();
  });
});
