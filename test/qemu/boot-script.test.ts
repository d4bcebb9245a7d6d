/**
 * Stage 1 as a file (no QEMU needed): the committed uboot/boot.scr is what boot.cmd builds, it is
 * a script image U-Boot's `source` accepts, and boot.cmd runs only commands Debian's stock Pi
 * U-Boot has (test/fixtures/uboot-commands-rpi.txt, read from the real binary).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseScriptImageHeader, IH_TYPE_SCRIPT } from '../../runner-agent/src/board/uimage.js';
import { parseHush, simpleCommands, VAR_MARK } from '../../runner-agent/src/sim/hush-parser.js';
import { STAGE1_CMD, STAGE1_SCR, buildStage1Image, stage1ImageInSync } from '../../scripts/build-boot-scr.js';

const RPI_COMMANDS = new Set(
  readFileSync(new URL('../fixtures/uboot-commands-rpi.txt', import.meta.url), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#')),
);
/**
 * The command list comes from the rpi_arm64 build, which has no `bootz` (32-bit zImages only);
 * stage 1 runs it only for a 32-bit system (rpf_arm64 not 1), i.e. on the 32-bit builds
 * (rpi_2, rpi_3_32b, rpi_4_32b), which do have it.
 */
const ONLY_ON_32_BIT = new Set(['bootz']);

const source = readFileSync(STAGE1_CMD, 'utf8');

/** The first word of every command in a script (commands inside if/then/else included). */
function commandsOf(script: string): Set<string> {
  const found = new Set<string>();
  for (let pos = 0; pos < script.length;) {
    const r = parseHush(script, 'line', pos);
    if (!r.list) throw new Error(`boot.cmd does not parse at offset ${pos}: ${r.error}`);
    for (const cmd of simpleCommands(r.list)) {
      const first = cmd.argv[0];
      if (first === undefined) continue;
      if (first.includes(VAR_MARK)) throw new Error(`a command name is computed at run time: ${cmd.argv.join(' ')}`);
      found.add(first.split('.')[0]!);
    }
    pos = r.next;
  }
  return found;
}

describe('stage 1 (uboot/boot.cmd → uboot/boot.scr)', () => {
  it('the committed boot.scr is built from the current boot.cmd (npm run build:uboot)', () => {
    expect(stage1ImageInSync(), 'uboot/boot.scr is stale: run npm run build:uboot and commit it').toBe(true);
  });

  it('boot.scr is a script image whose payload is boot.cmd', () => {
    const image = readFileSync(STAGE1_SCR);
    const header = parseScriptImageHeader(image);
    expect(header.type).toBe(IH_TYPE_SCRIPT);
    expect(header.name).toBe('rpi-flash stage 1');
    expect(header.timestamp).toBe(0);
    const length = image.readUInt32BE(64);
    expect(image.subarray(72, 72 + length).toString('utf8')).toBe(source);
  });

  it('the sync check notices a change to boot.cmd', () => {
    expect(buildStage1Image(source + '\n').equals(readFileSync(STAGE1_SCR))).toBe(false);
  });

  it("uses only commands that Debian's Pi U-Boot has", () => {
    expect(RPI_COMMANDS.has('tftpput')).toBe(false);
    const used = commandsOf(source);
    expect([...used]).toEqual(
      expect.arrayContaining(['dhcp', 'tftpboot', 'source', 'fatload', 'env', 'booti', 'bootz', 'setexpr']),
    );
    expect([...used].filter((c) => !RPI_COMMANDS.has(c) && !ONLY_ON_32_BIT.has(c))).toEqual([]);
  });

  it('never relies on `exit`, `poweroff` or `saveenv`', () => {
    // exit does nothing in U-Boot 2023.01's hush; a Pi has no poweroff; saving would make one
    // boot's settings (serverip, bootargs …) leak into every later boot.
    const used = commandsOf(source);
    for (const c of ['exit', 'poweroff', 'saveenv', 'tftpput']) expect(used.has(c), c).toBe(false);
  });

  it('reads the keys of the rpi-flash.env contract', () => {
    for (const key of [
      'rpf_kernel',
      'rpf_initrd',
      'rpf_arm64',
      'rpf_bootargs',
      'rpf_ipaddr',
      'rpf_netmask',
      'rpf_gatewayip',
      'rpf_serverip',
    ]) {
      expect(source).toContain(`\${${key}}`);
    }
    expect(source).toContain('rpi-flash.env');
  });
});
