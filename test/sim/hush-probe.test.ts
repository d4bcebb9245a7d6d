import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SparseMemory } from '../../runner-agent/src/sim/memory.js';
import { UBootShell } from '../../runner-agent/src/sim/uboot-shell.js';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8');

describe('the simulated shell against the real U-Boot', () => {
  it(
    'prints what U-Boot 2023.01 printed for the hush probe ' + '(quoting, chains, if, $?, setexpr, itest, crc32)',
    async () => {
      // The expected lines were recorded on the QEMU test build (test/sim/record-hush-probe.ts),
      // whose crc32 stores big-endian: the model runs with the same store.
      const printed: string[] = [];
      const shell = new UBootShell({
        memory: new SparseMemory(0x8000_0000),
        crcStore: 'be32',
        env: { ipaddr: '10.0.2.15', serverip: '10.0.2.2' },
        tftp: async () => null,
        print: (line) => {
          if (line.startsWith('P:')) printed.push(line);
        },
      });
      await shell.runScript(fixture('uboot-commands-hush-probe.txt'));
      expect(printed).toEqual(fixture('uboot-commands-hush-probe.expected').trimEnd().split('\n'));
    },
  );
});
