/**
 * `rpi-flash-agent eeprom-config TARGET`: the Pi 4/5 EEPROM bootloader settings that make a board
 * boot from this agent (DESIGN §8), printed for `rpi-eeprom-config --apply` on the board. The
 * settings follow the agent's config (where the TFTP server is, the DHCP mode) and the board's
 * targets row (its `netboot` folder, its IP), so an operator never types a prefix or an address
 * by hand. The program only prints: it changes nothing on the agent or on the board.
 */
import { parseArgs } from 'node:util';
import { loadConfig, type AgentConfig } from './config.js';
import { getPiModel } from './image/models.js';
import { parseSubnet } from './netboot/ipv4-subnet.js';
import { findTarget, loadTargets, type Target } from './targets/database.js';
import { DEFAULT_CONFIG } from './board-command.js';

export const EEPROM_HELP = `\
rpi-flash-agent eeprom-config — print a Pi 4/5's EEPROM settings for network boot from this agent

Usage:
  rpi-flash-agent eeprom-config [options] TARGET

Prints the bootloader settings that match the agent's config and the board's targets row (its
netboot column): BOOT_ORDER, TFTP_PREFIX (and TFTP_PREFIX_STR), TFTP_IP, and with --static the
address settings that skip DHCP. On the board, save the output to a file and apply it once:
  sudo rpi-eeprom-config --apply FILE && sudo reboot
A Pi 3B needs its OTP bit set once instead (program_usb_boot_mode=1 in config.txt, one boot);
a Pi 3B+ network-boots out of the box. The README's "Network boot" section has the details.

Options:
  -c, --config FILE   the agent's config (default ${DEFAULT_CONFIG})
      --order ORDER   network-first (default: a job may boot the board from the network even when
                      its card is bootable) or sd-first (network only when the card cannot boot:
                      rescue flashes only)
      --static        CLIENT_IP, SUBNET, GATEWAY from the targets row and dhcp.subnet/dhcp.router:
                      the bootloader skips DHCP (no DHCP server needed for the firmware)
  -h, --help          this help

Exit codes: 0 printed, 2 bad arguments, config or target (the message says what is missing).
`;

export type BootOrder = 'network-first' | 'sd-first';

export interface EepromChoices {
  order: BootOrder;
  static: boolean;
}

/** BOOT_ORDER nibbles, read right to left: 1 SD, 2 network, f loop (DESIGN §8). */
const BOOT_ORDER: Record<BootOrder, { value: string; says: string }> = {
  'network-first': { value: '0xf12', says: 'network first, then the SD card, then again' },
  'sd-first': { value: '0xf21', says: 'the SD card first, the network when the card cannot boot, then again' },
};

/** Models whose bootloader is an EEPROM with these settings (`arm64` may be a Pi 4: its row says no more). */
const EEPROM_MODELS = new Set(['pi4', 'arm64']);

/** Why this target cannot take EEPROM settings from the agent; undefined when it can. */
function refusal(target: Target, config: AgentConfig, choices: EepromChoices): string | undefined {
  if (!target.netboot)
    return (
      `${target.name} has no netboot folder in the targets database ` +
      '(netboot column: serial, mac or prefix:<folder>)'
    );
  const model = target.model ?? config.uboot.defaultModel;
  let name: string;
  try {
    name = getPiModel(model.toLowerCase()).name;
  } catch {
    name = model.toLowerCase();
  }
  if (!EEPROM_MODELS.has(name))
    return (
      `${target.name} is a ${model}: only a Pi 4 or Pi 5 has an EEPROM bootloader ` +
      '(a Pi 3B needs its OTP bit set once, a 3B+ network-boots as it is; see the README)'
    );
  if (choices.static && !config.dhcp.subnet)
    return '--static needs dhcp.subnet in the config (the SUBNET the board is told)';
  return undefined;
}

/** What the TFTP server's address is for a board: dhcp.serverIp, else tftp.address when it names one. */
function tftpServerIp(config: AgentConfig): string | undefined {
  if (config.dhcp.serverIp) return config.dhcp.serverIp;
  return config.tftp.address !== '0.0.0.0' && config.tftp.address !== '::' ? config.tftp.address : undefined;
}

/** The settings text for one target; throws an Error saying what is missing. */
export function eepromConfigText(target: Target, config: AgentConfig, choices: EepromChoices): string {
  const why = refusal(target, config, choices);
  if (why) throw new Error(why);
  const netboot = target.netboot!;
  const server = tftpServerIp(config);
  const order = BOOT_ORDER[choices.order];
  const lines = [
    `# rpi-flash: EEPROM bootloader settings for ${target.name} (${target.mac}, ${target.ip})`,
    '# Apply on the board: sudo rpi-eeprom-config --apply <this file> && sudo reboot',
    '[all]',
    '# The bootloader on the serial console (GPIO 14/15): what it asks for, when a boot does not start.',
    'BOOT_UART=1',
    `# ${order.says}.`,
    `BOOT_ORDER=${order.value}`,
  ];
  if (choices.order === 'network-first')
    lines.push(
      '# The agent answers only a board it has a network-boot job for: any other boot tries DHCP for',
      '# DHCP_TIMEOUT ms (the least the bootloader takes), then goes on to the card.',
      'DHCP_TIMEOUT=5000',
      'DHCP_REQ_TIMEOUT=500',
    );
  if (netboot.prefixMode === 'serial')
    lines.push("# Files under <serial>/ (the board serial's low 8 hex digits).", 'TFTP_PREFIX=0');
  else if (netboot.prefixMode === 'mac')
    lines.push(`# Files under ${netboot.folder}/ (the board's MAC).`, 'TFTP_PREFIX=2');
  else lines.push(`# Files under ${netboot.folder}/.`, 'TFTP_PREFIX=1', `TFTP_PREFIX_STR=${netboot.folder}/`);
  if (server) lines.push('# The agent serves TFTP here, whatever the DHCP answer names.', `TFTP_IP=${server}`);
  else lines.push('# TFTP_IP: not set (the config names no dhcp.serverIp or tftp.address): DHCP must name the agent.');
  if (choices.static) {
    const subnet = parseSubnet(config.dhcp.subnet!);
    if ('problem' in subnet) throw new Error(`dhcp.subnet: ${subnet.problem}`);
    lines.push(
      '# A fixed address: the bootloader skips DHCP.',
      `CLIENT_IP=${target.ip}`,
      `SUBNET=${subnet.mask}`,
      `GATEWAY=${config.dhcp.router ?? server ?? target.ip}`,
    );
  }
  return lines.join('\n') + '\n';
}

export async function eepromConfigMain(
  argv: string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  let values: { config?: string; order?: string; static?: boolean; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string', short: 'c' },
        order: { type: 'string' },
        static: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    err.write(`rpi-flash-agent eeprom-config: ${(e as Error).message} (see --help)\n`);
    return 2;
  }
  if (values.help) {
    out.write(EEPROM_HELP);
    return 0;
  }
  const order = values.order ?? 'network-first';
  if (order !== 'network-first' && order !== 'sd-first') {
    err.write(`rpi-flash-agent eeprom-config: --order "${order}" is not network-first or sd-first\n`);
    return 2;
  }
  if (positionals.length !== 1) {
    err.write('rpi-flash-agent eeprom-config: name one TARGET (see --help)\n');
    return 2;
  }
  try {
    const config = await loadConfig(values.config ?? DEFAULT_CONFIG, {});
    const targets = await loadTargets(config.targets, { defaultLayout: config.defaultLayout });
    const target = findTarget(targets, positionals[0]!);
    if (!target) throw new Error(`no target "${positionals[0]}" in ${config.targets}`);
    out.write(eepromConfigText(target, config, { order, static: values.static === true }));
    return 0;
  } catch (e) {
    err.write(`rpi-flash-agent eeprom-config: ${(e as Error).message}\n`);
    return 2;
  }
}
