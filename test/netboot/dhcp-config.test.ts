/** The config's `dhcp` section: off by default, `proxy` and `full` with what each needs, every problem listed. */
import { describe, expect, it } from 'vitest';
import { ConfigError, validateConfig } from '../../runner-agent/src/config.js';

const base = { token: 'a-token-of-sufficient-length', targets: 'targets.csv' };

async function problems(dhcp: unknown): Promise<string[]> {
  const err = await validateConfig({ ...base, dhcp }, '/').catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ConfigError);
  return (err as ConfigError).problems;
}

describe('dhcp settings', () => {
  it('are off unless set: no responder, port 67 on the wildcard, a one-hour lease', async () => {
    const c = await validateConfig(base, '/');
    expect(c.dhcp).toEqual({ mode: 'off', address: '0.0.0.0', port: 67, leaseSeconds: 3600 });
  });

  it('proxy needs only the agent address the boards see', async () => {
    const c = await validateConfig({ ...base, dhcp: { mode: 'proxy', serverIp: '192.168.1.10' } }, '/');
    expect(c.dhcp).toEqual({
      mode: 'proxy',
      address: '0.0.0.0',
      port: 67,
      leaseSeconds: 3600,
      serverIp: '192.168.1.10',
    });
  });

  it('full takes the subnet, router, lease, bind address and port', async () => {
    const dhcp = {
      mode: 'full',
      address: '0.0.0.0',
      port: 6767,
      serverIp: '10.77.0.1',
      subnet: '10.77.0.0/24',
      router: '10.77.0.254',
      leaseSeconds: 600,
    };
    expect((await validateConfig({ ...base, dhcp }, '/')).dhcp).toEqual(dhcp);
  });

  it('proxy and full without a serverIp, full without a subnet, are refused saying what is missing', async () => {
    expect(await problems({ mode: 'proxy' })).toEqual([
      `"dhcp.serverIp" is required when "dhcp.mode" is "proxy" (the agent's address on the boards' network)`,
    ]);
    expect(await problems({ mode: 'full', serverIp: '10.77.0.1' })).toEqual([
      '"dhcp.subnet" is required when "dhcp.mode" is "full" (the lab network, e.g. "192.168.7.0/24")',
    ]);
  });

  it('lists every bad value at once, with the config’s other problems', async () => {
    const err = await validateConfig(
      {
        ...base,
        tftp: { port: -1 },
        dhcp: {
          mode: 'relay',
          address: '::',
          port: 70000,
          serverIp: '0.0.0.0',
          subnet: '10.77.0.1/24',
          router: 'gateway',
          leaseSeconds: 5,
          pool: '10.77.0.100-200',
        },
      },
      '/',
    ).catch((e: unknown) => e);
    expect((err as ConfigError).problems).toEqual([
      '"tftp.port" must be an integer from 0 to 65535, got -1',
      'unknown setting "dhcp.pool"',
      '"dhcp.port" must be an integer from 0 to 65535, got 70000',
      '"dhcp.leaseSeconds" must be an integer from 60 to 604800, got 5',
      '"dhcp.mode" must be "off", "proxy" or "full", got "relay"',
      '"dhcp.address" must be an IPv4 address, got "::"',
      '"dhcp.serverIp" must be an IPv4 address, got "0.0.0.0"',
      '"dhcp.router" must be an IPv4 address, got "gateway"',
      '"dhcp.subnet": "10.77.0.1/24" has host bits set (the network is 10.77.0.0/24)',
    ]);
  });

  it('the server and the router must be hosts of the subnet', async () => {
    expect(
      await problems({ mode: 'full', serverIp: '10.78.0.1', subnet: '10.77.0.0/24', router: '10.77.0.255' }),
    ).toEqual([
      '"dhcp.serverIp" 10.78.0.1 is not a host address of "dhcp.subnet" 10.77.0.0/24',
      '"dhcp.router" 10.77.0.255 is not a host address of "dhcp.subnet" 10.77.0.0/24',
    ]);
  });

  it('off keeps a serverIp and a subnet for other uses (the EEPROM config), checked all the same', async () => {
    const c = await validateConfig({ ...base, dhcp: { serverIp: '10.77.0.1', subnet: '10.77.0.0/24' } }, '/');
    expect(c.dhcp).toMatchObject({ mode: 'off', serverIp: '10.77.0.1', subnet: '10.77.0.0/24' });
    expect(await problems({ subnet: 'lab' })).toEqual(['"dhcp.subnet": "lab" is not a subnet like 192.168.7.0/24']);
  });
});
