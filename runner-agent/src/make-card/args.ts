/** `make-card`'s command line: the help text and the parsing of the options into MakeCardOptions. */
import { parseArgs } from 'node:util';
import { getPiModel, PI_MODELS, type PiModel } from '../image/models.js';

// The backslash continues the literal, so the help's first line starts a source line and fits in 120 columns.
export const MAKE_CARD_HELP = `\
rpi-flash-agent make-card — write a board's first card: an OS image with U-Boot and stage 1

Usage:
  rpi-flash-agent make-card --image FILE --model MODEL --out card.img|/dev/sdX [options]

Options:
  --image FILE      OS image: raw, .gz, .xz or .zst (Raspberry Pi OS style: MBR, FAT boot partition)
  --model MODEL     board model, picks the U-Boot build and the config.txt sections:
${Object.values(PI_MODELS)
  .map((m) => `                      ${m.name.padEnd(7)} ${m.description}, Debian u-boot-rpi build ${m.ubootBuild}`)
  .join('\n')}
  --out PATH        a file (written whole, then renamed into place) or a whole block device
  --uboot FILE      U-Boot binary; default /usr/lib/u-boot/<build>/u-boot.bin from Debian's
                    u-boot-rpi package (apt-get install u-boot-rpi)
  --boot-scr FILE   stage 1 script image; default the project's uboot/boot.scr (built from
                    uboot/boot.cmd when boot.scr is missing)
  --env KEY=VALUE   extra line for the card's rpi-flash.env, e.g. --env rpf_serverip=10.0.0.1
                    (static network values for stage 1: rpf_ipaddr, rpf_netmask, rpf_gatewayip,
                    rpf_serverip); repeatable
  --yes             write a block device without asking
  -h, --help        this help

A device is written only when it is a whole disk, nothing on it is mounted, and you confirm
after seeing its size, model and partitions. A path under /dev that is not a block device is
refused (a typo must not create a file in /dev).
`;

export interface MakeCardOptions {
  image: string;
  model: PiModel;
  out: string;
  uboot?: string;
  bootScr?: string;
  env?: Record<string, string>;
  yes?: boolean;
  /** Timestamp of the files written into the boot partition; default now (tests fix it). */
  now?: Date;
}

/** The options, or 'help'; throws (a usage error, exit 2) on a missing or malformed option. */
export function parseMakeCardArgs(argv: string[]): MakeCardOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      image: { type: 'string' },
      model: { type: 'string' },
      out: { type: 'string' },
      uboot: { type: 'string' },
      'boot-scr': { type: 'string' },
      env: { type: 'string', multiple: true },
      yes: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const missing = (['image', 'model', 'out'] as const).filter((k) => !values[k]);
  if (missing.length) throw new Error(`missing ${missing.map((m) => `--${m}`).join(', ')}`);
  const env: Record<string, string> = {};
  for (const kv of values.env ?? []) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(kv);
    if (!m) throw new Error(`--env "${kv}": expected KEY=VALUE with a U-Boot variable name`);
    env[m[1]!] = m[2]!;
  }
  return {
    image: values.image!,
    model: getPiModel(values.model!),
    out: values.out!,
    ...(values.uboot ? { uboot: values.uboot } : {}),
    ...(values['boot-scr'] ? { bootScr: values['boot-scr'] } : {}),
    env,
    yes: Boolean(values.yes),
  };
}
