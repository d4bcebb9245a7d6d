/**
 * `npm run demo`: the simulated lab end to end. Starts an agent with two simulated boards on
 * loopback, flashes a sample image onto one through the real WebSocket protocol and the real TFTP
 * server, prints the story, the result and the timings, compares the card with the image, and
 * exits 0 only when the job passed.
 */
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import { createGzip } from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import { createWriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { validateConfig } from './config.js';
import { startAgent } from './agent.js';
import { createLogger } from './log.js';
import { writeSampleImage } from './sample-image.js';
import { connectAgent } from '../../src/protocol/client.js';
import type { AgentMessage } from '../../src/protocol/messages.js';

const HELP = `npm run demo [-- options]

Runs the simulated lab: an agent with two simulated boards on loopback, one sample image
flashed onto one board through the real protocol. Exits 0 when the job passes.

  --size MIB        sample image size in MiB (default 24)
  --target NAME     sim-pi3 or sim-pi4 (default sim-pi4)
  --verbose         print the agent's own log lines too
  --keep            keep the temporary lab folder
  -h, --help        this help
`;

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function line(text: string): void {
  process.stdout.write(text + '\n');
}

export async function runDemo(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string' },
      target: { type: 'string' },
      verbose: { type: 'boolean' },
      keep: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const sizeMiB = Number(values.size ?? 24);
  if (!(sizeMiB > 0 && sizeMiB <= 200)) throw new Error(`--size must be between 1 and 200 MiB, got ${values.size}`);
  const targetName = values.target ?? 'sim-pi4';

  const dir = await mkdtemp(path.join(os.tmpdir(), 'rpi-flash-demo-'));
  const token = 'demo-token-0123456789abcdef';
  await writeFile(
    path.join(dir, 'targets.csv'),
    [
      'name,mac,ip,reset,model,labels',
      'sim-pi3,b8:27:eb:00:00:03,127.0.0.13,sim,pi3,demo',
      'sim-pi4,dc:a6:32:00:00:04,127.0.0.14,sim,pi4,demo',
    ].join('\n') + '\n',
  );
  const config = await validateConfig(
    {
      listen: { host: '127.0.0.1', port: 0 },
      token,
      targets: 'targets.csv',
      tftp: { root: 'tftp', address: '127.0.0.1', port: 0 },
      stateDir: 'state',
      flash: { partSize: '8MiB', tftpBlockSize: 1468, tftpWindowSize: 8 },
      timeouts: { boardShow: 20, stall: 30, boot: 20 },
      bootCheck: 'tcp:2222',
      sim: { bootPort: 2222, cardSize: '256MiB' },
      logLevel: values.verbose ? 'debug' : 'warn',
      // The sample image is a bare disk image with no boot files: write it as it is.
      defaultLayout: 'whole',
    },
    dir,
  );
  const log = createLogger({
    level: config.logLevel,
    sink: (r) => process.stderr.write(`  [agent] ${r.level} ${r.msg} ${JSON.stringify(r.fields)}\n`),
  });
  const agent = await startAgent(config, { log });
  let exit = 1;
  try {
    const raw = path.join(dir, 'sample.img');
    await writeSampleImage(raw, sizeMiB * 1024 * 1024 + 1000, 7);
    const image = `${raw}.gz`;
    await pipeline(createReadStream(raw), createGzip({ level: 1 }), createWriteStream(image));
    const { size } = await import('node:fs/promises').then((fs) => fs.stat(image));
    const sha256 = await sha256File(image);
    line(`rpi-flash demo: simulated lab at ${agent.url}, TFTP on ${agent.tftp.address}:${agent.tftp.port}`);
    line(
      `image: ${path.basename(image)} (${(size / 1048576).toFixed(1)} MiB gzip of ${sizeMiB} MiB), ` +
        `sha256 ${sha256.slice(0, 16)}…`,
    );

    let lastPct = -1;
    const onEvent = (m: AgentMessage) => {
      switch (m.type) {
        case 'queued':
          line(`  queued: position ${m.position}${m.holder ? ` (held by ${m.holder})` : ''}`);
          break;
        case 'phase':
          if (m.state === 'start') line(`▶ ${m.phase}`);
          else line(`  ${m.phase} took ${m.seconds?.toFixed(2)} s`);
          break;
        case 'log':
          line(`  ${m.source === 'board' ? '[board]' : '[agent]'} ${m.message}`);
          break;
        case 'progress': {
          if (m.phase !== 'transfer' || !m.total) break;
          const pct = Math.floor((m.done / m.total) * 10) * 10;
          if (pct !== lastPct) {
            lastPct = pct;
            line(`  transfer ${pct}% (part ${m.part}/${m.parts})`);
          }
          break;
        }
      }
    };
    const started = performance.now();
    const conn = await connectAgent({ url: agent.url, token, client: 'rpi-flash-demo', onEvent });
    try {
      const leased = await conn.lease(targetName, { holder: 'demo' });
      line(`leased ${leased.target.name} (${leased.target.mac}, ${leased.target.ip})`);
      const uploadStart = performance.now();
      const done = await conn.upload({ path: image, sha256, size, compression: 'gz', name: path.basename(image) });
      const uploadSeconds = (performance.now() - uploadStart) / 1000;
      const rate = done.skipped ? 'skipped, agent holds it' : `${(size / 1e6 / uploadSeconds).toFixed(1)} MB/s`;
      line(`upload: ${rate}, stored ${done.imageSize} bytes`);
      const result = await conn.flash({ sha256 });
      line('');
      line(`result: ${result.code} — ${result.message}`);
      line(
        `  bytes written: ${result.bytesWritten}, parts: ${result.parts.map((p) => `${p.part}:${p.status}`).join(' ')}`,
      );
      line(
        `  timings (s): ${Object.entries(result.timings)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}; total ${((performance.now() - started) / 1000).toFixed(2)} s`,
      );
      if (result.ok) {
        const card = await readFile(path.join(config.stateDir, 'sim', `${targetName}.card`));
        const original = await readFile(raw);
        const same = card.subarray(0, original.length).equals(original);
        line(`  card check: the simulated card ${same ? 'holds the image byte for byte' : 'DIFFERS from the image'}`);
        exit = same ? 0 : 1;
      }
    } finally {
      conn.close();
    }
  } finally {
    await agent.stop();
    if (!values.keep) await rm(dir, { recursive: true, force: true });
    else line(`lab folder kept: ${dir}`);
  }
  return exit;
}

runDemo(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`demo failed: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
