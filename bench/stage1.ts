/**
 * The delay stage 1 adds to a normal boot (issue 5, "Speed"): a real U-Boot 2023.01 under QEMU
 * boots from its card, runs uboot/boot.cmd, finds no job and goes on to boot the installed system.
 * Measured from stage 1's first line to the line it prints when it leaves the network step
 * (`rpi-flash: no job …`) — the whole cost of asking the server — in the cases a lab meets:
 *
 *   server up, no job       the agent answers "File not found" at once
 *   … static address        the same without DHCP (rpf_ipaddr in rpi-flash.env)
 *   server down             the host answers ARP but nothing listens on the TFTP port
 *   server host absent      nobody answers ARP for the server's address (rpf_serverip=10.0.2.99)
 *
 * The kernel is not booted (the card names a dummy one): only stage 1's own time is measured.
 * Runnable alone: `npx tsx bench/stage1.ts`, or with the others: `npm run bench -- stage1`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  bootFromCard,
  buildDiskImage,
  DHCP_ONLY_ENV,
  stage1EnvText,
  stage1ScriptImage,
  STAGE1_ENV_FILE,
  type CardBootOptions,
} from '../test/qemu/os-image.js';
import { findTestUboot, HOW_TO_BUILD } from '../test/qemu/test-uboot.js';

const MAC = '52:54:00:be:4c:01';
const RUNS = 3;
const TIMEOUT_MS = 90_000;

interface Case {
  name: string;
  server: CardBootOptions['server'];
  env: Record<string, string>;
}

const CASES: Case[] = [
  { name: 'server up, no job (DHCP)', server: 'up', env: {} },
  {
    name: 'server up, no job (static address)',
    server: 'up',
    env: { rpf_ipaddr: '10.0.2.15', rpf_netmask: '255.255.255.0', rpf_serverip: '10.0.2.2' },
  },
  { name: 'server down (TFTP port closed)', server: 'down', env: {} },
  { name: 'server host absent (no ARP answer)', server: 'up', env: { rpf_serverip: '10.0.2.99' } },
];

function stats(values: number[]): { median: number; min: number; max: number } {
  const s = [...values].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)]!, min: s[0]!, max: s[s.length - 1]! };
}

export async function runStage1Bench(): Promise<void> {
  const found = await findTestUboot();
  if (!found.ok) throw new Error(`${found.reason} (${HOW_TO_BUILD})`);
  const stage1 = await stage1ScriptImage();
  const rows: { name: string; network: ReturnType<typeof stats>; toBoot: ReturnType<typeof stats> }[] = [];
  for (const c of CASES) {
    const network: number[] = [];
    const toBoot: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-bench-stage1-'));
      try {
        const sdImage = join(workDir, 'sd.img');
        const env = stage1EnvText({
          rpf_kernel: 'kernel8.img',
          rpf_arm64: '1',
          rpf_bootargs: 'console=ttyAMA0',
          ...c.env,
        });
        await buildDiskImage({
          path: sdImage,
          size: 8 * 1024 * 1024,
          bootPartitionSize: 4 * 1024 * 1024,
          files: {
            'boot.scr': stage1,
            [STAGE1_ENV_FILE]: env,
            'kernel8.img': 'not a kernel: the bench stops at booti',
          },
        });
        const result = await bootFromCard({
          ubootBin: found.ubootBin,
          workDir,
          mac: MAC,
          sdImage,
          server: c.server,
          env: DHCP_ONLY_ENV,
          until: /rpi-flash: booting [^\n]*\n/,
          timeoutMs: TIMEOUT_MS,
        });
        const { stage1: start, networkDone, booting } = result.at;
        if (start === undefined || networkDone === undefined || booting === undefined)
          throw new Error(`${c.name}: stage 1's lines are missing from the console`);
        network.push(networkDone - start);
        toBoot.push(booting - start);
      } finally {
        await rm(workDir, { recursive: true, force: true });
      }
    }
    rows.push({ name: c.name, network: stats(network), toBoot: stats(toBoot) });
  }
  const ref = rows[0]!.network.median;
  const ms = (n: number) => `${Math.round(n)}`.padStart(6);
  console.log(
    `stage 1 under QEMU (U-Boot 2023.01, tftptimeout 1000 ms × tftptimeoutcountmax 2), ${RUNS} runs each; ` +
      'ms, median (min–max)',
  );
  console.log(
    `${'case'.padEnd(40)} ${'network step'.padStart(22)} ${'stage 1 → booti'.padStart(22)} ${'× ref'.padStart(7)}`,
  );
  for (const r of rows) {
    const cell = (s: ReturnType<typeof stats>) =>
      `${ms(s.median)} (${Math.round(s.min)}–${Math.round(s.max)})`.padStart(22);
    console.log(
      `${r.name.padEnd(40)} ${cell(r.network)} ${cell(r.toBoot)} ${(r.network.median / ref).toFixed(1).padStart(7)}`,
    );
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runStage1Bench().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error((err as Error)?.stack ?? String(err));
      process.exit(1);
    },
  );
}
