/**
 * `rpi-flash-agent eeprom-config TARGET`: the EEPROM settings follow the targets row (its netboot
 * folder, its IP) and the agent's config (where TFTP is, the subnet), and a target that cannot take
 * them is refused with a message that says why.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { eepromConfigMain } from '../../runner-agent/src/eeprom-config.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

const TARGETS = [
  'name,mac,ip,reset,model,serial,netboot',
  'pi4-serial,dc:a6:32:01:36:c2,10.42.0.43,sim,pi4,10000000b1c2d3e4,serial',
  'pi4-mac,dc:a6:32:01:36:c3,10.42.0.44,sim,pi4,,mac',
  'pi4-prefix,dc:a6:32:01:36:c4,10.42.0.45,sim,pi4,,prefix:lab-a/pi4-prefix',
  'pi3-rom,b8:27:eb:28:f6:6d,10.42.0.31,sim,pi3,00000000deadbeef,serial',
  'pi4-plain,dc:a6:32:01:36:c5,10.42.0.46,sim,pi4,,',
].join('\n');

async function run(args: string[], dhcp: Record<string, unknown> = {}) {
  dir ??= await mkdtemp(path.join(os.tmpdir(), 'eeprom-config-'));
  await writeFile(path.join(dir, 'targets.csv'), TARGETS + '\n');
  await writeFile(path.join(dir, 'token'), 'a-token-of-enough-length-0123456789\n');
  const config = path.join(dir, 'config.json');
  await writeFile(
    config,
    JSON.stringify({
      tokenFile: 'token',
      targets: 'targets.csv',
      stateDir: dir,
      dhcp: { mode: 'full', serverIp: '10.42.0.1', subnet: '10.42.0.0/24', ...dhcp },
    }),
  );
  let out = '';
  let err = '';
  const sink = (f: (s: string) => void) =>
    new Writable({
      write(chunk: Buffer, _enc, done) {
        f(chunk.toString());
        done();
      },
    });
  const code = await eepromConfigMain(
    ['--config', config, ...args],
    sink((s) => (out += s)),
    sink((s) => (err += s)),
  );
  return { code, out, err };
}

/** The `KEY=value` lines of the output, comments left out. */
function settings(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split('\n')
      .filter((l) => /^[A-Z_0-9]+=/.test(l))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
}

describe('eeprom-config', () => {
  it('serial folder, network first: TFTP_PREFIX 0, the agent as TFTP_IP, a short DHCP wait', async () => {
    const r = await run(['pi4-serial']);
    expect(r).toMatchObject({ code: 0, err: '' });
    expect(r.out).toMatch(/^# rpi-flash: EEPROM bootloader settings for pi4-serial/);
    expect(r.out).toContain('[all]\n');
    expect(settings(r.out)).toEqual({
      BOOT_UART: '1',
      BOOT_ORDER: '0xf12',
      DHCP_TIMEOUT: '5000',
      DHCP_REQ_TIMEOUT: '500',
      TFTP_PREFIX: '0',
      TFTP_IP: '10.42.0.1',
    });
  });

  it('mac and string folders, sd-first, and --static with the row address and the subnet mask', async () => {
    expect(settings((await run(['pi4-mac', '--order', 'sd-first'])).out)).toEqual({
      BOOT_UART: '1',
      BOOT_ORDER: '0xf21',
      TFTP_PREFIX: '2',
      TFTP_IP: '10.42.0.1',
    });
    const prefix = await run(['pi4-prefix', '--static'], { router: '10.42.0.254' });
    expect(settings(prefix.out)).toMatchObject({
      TFTP_PREFIX: '1',
      TFTP_PREFIX_STR: 'lab-a/pi4-prefix/',
      CLIENT_IP: '10.42.0.45',
      SUBNET: '255.255.255.0',
      GATEWAY: '10.42.0.254',
      TFTP_IP: '10.42.0.1',
    });
  });

  it('refuses a Pi 3, a board without a netboot folder, and an unknown target, saying why (exit 2)', async () => {
    const pi3 = await run(['pi3-rom']);
    expect(pi3).toMatchObject({ code: 2, out: '' });
    expect(pi3.err).toContain('only a Pi 4 or Pi 5 has an EEPROM bootloader');
    const plain = await run(['pi4-plain']);
    expect(plain).toMatchObject({ code: 2, out: '' });
    expect(plain.err).toContain('has no netboot folder');
    expect((await run(['nope'])).err).toContain('no target "nope"');
    expect((await run(['pi4-mac', '--order', 'usb-first'])).code).toBe(2);
    expect((await run([])).err).toContain('name one TARGET');
  });

  it('--help says what it prints and how to apply it', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('rpi-eeprom-config --apply');
    expect(r.out).toContain('--static');
  });
});
