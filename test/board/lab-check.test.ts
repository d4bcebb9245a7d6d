/**
 * Issue 10 items 4 and 5: what `--check` refuses (a part that does not fit a model's RAM) and
 * warns about (boards without onboard Ethernet, a TFTP port a Pi cannot ask, the DHCP address
 * checkClientIp needs), first as `checkLab` sees it, then as the operator does: the CLI's output.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { validateConfig } from '../../runner-agent/src/config.js';
import { UBOOT_RESERVE } from '../../runner-agent/src/board/ram.js';
import { PI_MODELS, safePartSizeMax } from '../../runner-agent/src/image/models.js';
import { checkLab } from '../../runner-agent/src/lab-check.js';
import { loadTargets } from '../../runner-agent/src/targets/database.js';

const MiB = 1024 ** 2;
const CLI = path.resolve('runner-agent/src/cli.ts');
let dir: string | undefined;

afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** A lab folder: agent.json with `settings` over a minimal config, targets.csv with `rows`. */
async function lab(
  rows: string[],
  settings: Record<string, unknown> = {},
  header = 'name,mac,ip,reset,model',
): Promise<string> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-lab-check-'));
  await writeFile(path.join(dir, 'targets.csv'), [header, ...rows].join('\n') + '\n');
  await writeFile(
    path.join(dir, 'agent.json'),
    JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 },
      token: 'lab-check-token-0123456789',
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 69 },
      stateDir: 'state',
      ...settings,
    }),
  );
  return path.join(dir, 'agent.json');
}

async function findings(rows: string[], settings: Record<string, unknown> = {}, header?: string) {
  const file = await lab(rows, settings, header);
  const raw = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  const config = await validateConfig(raw, path.dirname(file));
  return checkLab(config, await loadTargets(config.targets));
}

describe('the largest part per model', () => {
  it('leaves room for U-Boot, the firmware device tree and a margin below the ARM share', () => {
    const at = 0x1000_0000; // flash.loadAddr's default
    // 512 MB, gpu_mem 64: 448 MiB for the ARM; 103 MiB above 256 MiB stay free in the worst case.
    expect(safePartSizeMax(PI_MODELS.pi0w!, at)).toBe(103 * MiB);
    expect(safePartSizeMax(PI_MODELS.pi0w!, at, 128)).toBe(39 * MiB);
    expect(safePartSizeMax(PI_MODELS.pi2!, at)).toBe(615 * MiB);
    expect(safePartSizeMax(PI_MODELS.pi4!, at)).toBe(603 * MiB); // gpu_mem 76 by default
    expect(safePartSizeMax(PI_MODELS.pi0w!, 0x2000_0000)).toBe(0);
    // What bdinfo showed on QEMU's 448 MiB board (reserve from 0x1ab65000) lies within the figure.
    expect(448 * MiB - 0x1ab6_5000).toBeLessThan(UBOOT_RESERVE);
  });
});

describe('checkLab', () => {
  it('refuses parts that do not fit a model its boards may be, naming the largest that does', async () => {
    const f = await findings(['zero,b8:27:eb:00:00:01,10.0.0.11,gpio:17,pi0w'], { flash: { partSize: '128MiB' } });
    expect(f.errors).toHaveLength(1);
    expect(f.errors[0]).toMatch(/flash\.partSize 128\.0 MiB at flash\.loadAddr 0x10000000 runs past/);
    expect(f.errors[0]).toContain('(zero): the largest part there is 103.0 MiB');
    // A 1 GB Pi 2 takes the same parts.
    const two = await findings(['two,b8:27:eb:00:00:02,10.0.0.12,gpio:17,pi2'], { flash: { partSize: '128MiB' } });
    expect(two.errors).toEqual([]);
  });

  it("checks the compressed parts' buffer on models whose U-Boot unzips, not on others or compress off", async () => {
    const pi3 = ['three,b8:27:eb:00:00:03,10.0.0.13,gpio:17,pi3'];
    // The default (0x03000000 + a 64 MiB part's worst-case gzip stream) fits below the CRC slot.
    expect((await findings(pi3)).errors).toEqual([]);
    const over = await findings(pi3, { flash: { zipAddr: '0x0e000000' } });
    expect(over.errors).toHaveLength(1);
    expect(over.errors[0]).toMatch(
      /flash\.zipAddr 0xe000000 \+ a compressed part of up to 64\.0 MiB overlaps the load buffer/,
    );
    const top = await findings(pi3, { flash: { zipAddr: '0x14000000' } });
    expect(top.errors[0]).toMatch(/flash\.zipAddr 0x14000000 .* runs past the RAM stage 2 may use on a 512 MB/);
    expect((await findings(pi3, { flash: { zipAddr: '0x0e000000', compress: 'off' } })).errors).toEqual([]);
    const pi2 = ['two,b8:27:eb:00:00:02,10.0.0.12,gpio:17,pi2'];
    expect((await findings(pi2, { flash: { zipAddr: '0x0e000000' } })).errors).toEqual([]);
  });

  it('warns about gpu_mem=128, boards without onboard Ethernet, the TFTP port and the DHCP address', async () => {
    const f = await findings(
      [
        'zero,b8:27:eb:00:00:01,10.0.0.11,gpio:17,pi0w',
        'three,b8:27:eb:00:00:02,10.0.0.12,gpio:27,pi3',
        'four,dc:a6:32:00:00:03,10.0.0.13,gpio:22,pi4',
      ],
      { tftp: { root: 'tftp', address: '127.0.0.1', port: 6969 } },
    );
    expect(f.errors).toEqual([]);
    const text = f.warnings.join('\n');
    expect(text).toMatch(/zero: a 512 MB board whose config\.txt sets gpu_mem=128 .* parts of 39\.0 MiB only/);
    expect(text).toContain(
      'zero: a Raspberry Pi Zero W (32-bit) has no Ethernet on board: U-Boot (rpi_0_w) needs a USB Ethernet ' +
        "adapter with SMSC95xx (no other chip works), and the row's MAC b8:27:eb:00:00:01 must be that adapter's",
    );
    expect(text).toMatch(/three: .* may have no Ethernet on board: U-Boot \(rpi_3\) .* with SMSC95xx or LAN78xx/);
    expect(text).not.toMatch(/four: .*Ethernet/);
    expect(text).toMatch(/tftp\.port is 6969: real boards ask port 69 only .* zero, three, four will not find/);
    expect(text).toMatch(/checkClientIp is on: each board's DHCP address must be its row's IP/);
  });

  it('leaves simulated and QEMU boards alone', async () => {
    const f = await findings(['sim0,02:00:00:00:00:01,127.0.0.21,sim,pi0w', 'vm,52:54:00:00:00:01,127.0.0.1,qmp:/x,'], {
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      flash: { partSize: '512MiB' },
    });
    expect(f).toEqual({ errors: [], warnings: [] });
  });
});

describe('rpi-flash-agent --check', () => {
  const check = (config: string) =>
    spawnSync(process.execPath, ['--import', 'tsx', CLI, '--config', config, '--check', '--allow-root'], {
      encoding: 'utf8',
      timeout: 60_000,
    });

  it('prints the warnings and still passes the configuration', async () => {
    const r = check(
      await lab(['zero,b8:27:eb:00:00:01,10.0.0.11,gpio:17,pi0w'], {
        tftp: { root: 'tftp', address: '127.0.0.1', port: 6969 },
      }),
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('configuration OK; 1 target(s): zero');
    expect(r.stderr).toMatch(/^rpi-flash-agent: warning: zero: a Raspberry Pi Zero W .* has no Ethernet on board/m);
    expect(r.stderr).toMatch(/^rpi-flash-agent: warning: tftp\.port is 6969/m);
    expect(r.stderr).toMatch(/^rpi-flash-agent: warning: tftp\.checkClientIp is on/m);
  });

  it('refuses a part size a model cannot hold, and exits 2', async () => {
    const r = check(await lab(['zero,b8:27:eb:00:00:01,10.0.0.11,gpio:17,pi0w'], { flash: { partSize: '128MiB' } }));
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^rpi-flash-agent: flash\.partSize 128\.0 MiB .* the largest part there is 103\.0 MiB/m);
  });
});

describe('network boot', () => {
  const header = 'name,mac,ip,reset,model,serial,layout,netboot';
  const full = { dhcp: { mode: 'full', serverIp: '10.42.0.1', subnet: '10.42.0.0/24' } };

  it('refuses netflash without a netboot folder and a model whose firmware cannot boot from the network', async () => {
    const { errors } = await findings(
      [
        'pi4-a,dc:a6:32:00:00:01,10.42.0.11,gpio:17,pi4,,netflash,',
        'zero,b8:27:eb:00:00:02,10.42.0.12,gpio:18,pi0w,,,mac',
        'pi4-b,dc:a6:32:00:00:03,10.42.0.13,gpio:19,pi4,,netflash,mac',
      ],
      full,
      header,
    );
    expect(errors).toEqual([
      expect.stringMatching(/^pi4-a: layout netflash serves the board's firmware from its netboot folder/),
      'zero: a pi0w cannot boot from the network by its firmware; clear its netboot column',
    ]);
  });

  it("warns of a Pi 3's ROM, DHCP off, no address for the NBD root, and nbdkit missing", async () => {
    const rows = ['pi3-a,b8:27:eb:00:00:04,10.42.0.14,gpio:17,pi3,00000000deadbeef,,serial'];
    const ok = await findings(rows, full, header);
    expect(ok.errors).toEqual([]);
    expect(ok.warnings).toContainEqual(
      expect.stringMatching(/^pi3-a: a Pi 3's boot ROM tries the network only once its OTP bit is set/),
    );
    expect(ok.warnings.filter((w) => /dhcp|nbdkit|where its root is/.test(w))).toEqual([]);
    const off = await findings(rows, { tftp: { root: 'tftp', address: '0.0.0.0', port: 69 } }, header);
    expect(off.warnings).toContainEqual(expect.stringMatching(/^dhcp.mode is off: pi3-a boot from the network only/));
    expect(off.warnings).toContainEqual(
      expect.stringMatching(/^pi3-a: method netboot tells the board where its root is/),
    );
    const path0 = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      const none = await findings(rows, full, header);
      expect(none.warnings).toContainEqual(expect.stringMatching(/nbdkit, which is not installed/));
    } finally {
      process.env.PATH = path0;
    }
  });
});

describe('the in-place update (layout ota)', () => {
  const header = 'name,mac,ip,reset,model,layout,ssh,sshkey,hostkey';
  const key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Rh3SEu9rG2m7v9gMW7xHG7p1PQ1x4cEjXWdC4XJ0Y';
  const row = `ota-a,dc:a6:32:00:00:09,10.42.0.19,none,pi0w,ota,root,keys/id,${key}`;

  it('holds ota boards to no U-Boot memory or TFTP-port rule, only to a busybox that exists', async () => {
    // A pi0w whose U-Boot could not hold a 256 MiB part, on a TFTP port U-Boot cannot ask: ota uses neither.
    const settings = { flash: { partSize: '256MiB' }, tftp: { root: 'tftp', address: '127.0.0.1', port: 6969 } };
    const none = await findings([row], { ...settings, ota: { busybox: {} } }, header);
    expect(none.errors).toEqual([
      expect.stringMatching(
        /^ota-a: layout ota uploads a static busybox for the board's architecture, but ota\.busybox/,
      ),
    ]);
    expect(none.warnings.filter((w) => /tftp\.port|Ethernet/.test(w))).toEqual([]);
    const missing = await findings([row], { ...settings, ota: { busybox: { armel: 'no-such-busybox' } } }, header);
    expect(missing.errors).toEqual([
      `ota.busybox.armel ${path.join(dir!, 'no-such-busybox')} does not exist (ota-a need it for layout ota)`,
    ]);
    const there = await findings([row], { ...settings, ota: { busybox: { armel: 'targets.csv' } } }, header);
    expect(there.errors).toEqual([]);
  });

  it('refuses an ota row with a reset other than none, naming its line', async () => {
    await expect(findings([row.replace(',none,', ',gpio:17,')], {}, header)).rejects.toThrow(
      /targets\.csv:2: layout ota reboots the board itself: its reset must be none, not gpio:17/,
    );
  });
});
