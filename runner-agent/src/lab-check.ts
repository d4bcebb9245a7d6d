/**
 * What `--check` knows about the lab beyond the syntax of its files (issue 10): the boards' memory
 * against the stage-2 buffers, their network, and the TFTP server they must reach. Refusals are
 * configurations that cannot work on a model; warnings are what the agent cannot see from here
 * (a board's DHCP address, its USB adapter, its gpu_mem) and the operator must make true.
 *
 * Only real boards are checked: `sim` boards and QEMU boards (`qmp` reset) have their own memory
 * map and network. Seed-layout boards run the seed system's recovery card, not stage 2.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { formatBytes } from '../../src/protocol/units.js';
import type { AgentConfig } from './config.js';
import { getPiModel, gzipBound, modelHasUnzip, safePartSizeMax, safeRamEnd, type PiModel } from './image/models.js';
import type { Target } from './targets/database.js';

export interface LabFindings {
  /** Configurations no board of the model can run: `--check` exits 2. */
  errors: string[];
  warnings: string[];
}

/** TFTP's well-known port: Debian's Pi builds have no CONFIG_TFTP_PORT, so they ask nothing else. */
const TFTP_PORT = 69;
/** The `gpu_mem` camera setups use: a 512 MB board then leaves the ARM 384 MiB. */
const CAMERA_GPU_MEM_MIB = 128;

const hex = (n: number) => `0x${n.toString(16)}`;

/** Boards whose U-Boot runs stage 2 (not `seed`'s recovery card, not `ota`'s running system). */
function isRealBoard(t: Target, config: AgentConfig): boolean {
  const layout = t.layout ?? config.defaultLayout;
  return t.reset.kind !== 'sim' && t.reset.kind !== 'qmp' && layout !== 'seed' && layout !== 'ota';
}

export function checkLab(config: AgentConfig, targets: readonly Target[]): LabFindings {
  const errors: string[] = [];
  const warnings: string[] = [];
  const real = targets.filter((t) => isRealBoard(t, config));
  const byModel = new Map<PiModel, Target[]>();
  for (const t of real) {
    let model: PiModel;
    try {
      model = getPiModel(t.model ?? config.uboot.defaultModel);
    } catch {
      warnings.push(
        `${t.name}: model "${t.model}" is not one the agent knows, so its memory and network are not checked`,
      );
      continue;
    }
    byModel.set(model, [...(byModel.get(model) ?? []), t]);
  }

  const { loadAddr, partSize } = config.flash;
  const end = loadAddr + partSize;
  for (const [model, boards] of byModel) {
    const names = boards.map((t) => t.name).join(', ');
    const max = safePartSizeMax(model, loadAddr);
    if (end > safeRamEnd(model))
      errors.push(
        `flash.partSize ${formatBytes(partSize)} at flash.loadAddr ${hex(loadAddr)} runs past the RAM stage 2 may ` +
          `use on a ${model.minRamMiB} MB ${model.description} (${names}): the largest part there is ` +
          `${formatBytes(max)} (${model.minRamMiB - model.gpuMemMiB} MiB for the ARM, less U-Boot's reserve, ` +
          "the firmware device tree's window and a margin)",
      );
    else if (model.minRamMiB <= 512 && end > safeRamEnd(model, CAMERA_GPU_MEM_MIB))
      warnings.push(
        `${names}: a ${model.minRamMiB} MB board whose config.txt sets gpu_mem=${CAMERA_GPU_MEM_MIB} (camera ` +
          `setups) has room for parts of ${formatBytes(safePartSizeMax(model, loadAddr, CAMERA_GPU_MEM_MIB))} ` +
          `only; flash.partSize is ${formatBytes(partSize)}`,
      );
    if (config.flash.compress !== 'off' && modelHasUnzip(model)) {
      // Compressed parts: the gzip stream of a part (at worst a little larger than the part) lands at
      // flash.zipAddr before unzip inflates it into the load buffer; both must fit, apart.
      const { zipAddr, crcAddr, beaconAddr } = config.flash;
      const zipEnd = zipAddr + gzipBound(partSize);
      const clash = (
        [
          ['the load buffer', loadAddr, end],
          ['flash.crcAddr', crcAddr, crcAddr + 8],
          ['flash.beaconAddr', beaconAddr, beaconAddr + 0x1000],
        ] as const
      ).find(([, from, to]) => zipAddr < to && from < zipEnd);
      if (zipEnd > safeRamEnd(model) || clash)
        errors.push(
          `flash.zipAddr ${hex(zipAddr)} + a compressed part of up to ${formatBytes(gzipBound(partSize))} ` +
            (clash
              ? `overlaps ${clash[0]} (${hex(clash[1])}–${hex(clash[2])})`
              : `runs past the RAM stage 2 may use on a ${model.minRamMiB} MB ${model.description}`) +
            ` (${names}): move flash.zipAddr, or set flash.compress "off"`,
        );
    }
    if (model.onboardEthernet !== true) {
      const none = model.onboardEthernet === false ? 'has no Ethernet on board' : 'may have no Ethernet on board';
      for (const t of boards)
        warnings.push(
          `${t.name}: a ${model.description} ${none}: U-Boot (${model.ubootBuild}) needs a USB Ethernet adapter ` +
            `with ${model.usbEthernet.join(' or ')} (no other chip works), and the row's MAC ${t.mac} must be ` +
            "that adapter's",
        );
    }
  }

  if (real.length && config.tftp.port !== TFTP_PORT)
    warnings.push(
      `tftp.port is ${config.tftp.port}: real boards ask port ${TFTP_PORT} only (Debian's Pi U-Boot cannot use ` +
        `another), so ${real.map((t) => t.name).join(', ')} will not find their jobs`,
    );
  if (real.length && config.tftp.checkClientIp)
    warnings.push(
      "tftp.checkClientIp is on: each board's DHCP address must be its row's IP (a reservation by MAC); a board " +
        'that asks from another address is refused and its job fails with BOARD_IP_MISMATCH',
    );
  checkNetboot(config, targets, errors, warnings);
  checkOta(config, targets, errors);
  return { errors, warnings };
}

/** Models whose firmware cannot boot from the network at all (no Ethernet, or a ROM without it). */
const NO_FIRMWARE_NETBOOT = new Set(['pi0w', 'pi02', 'pi2']);
/** Models whose boot ROM tries the network only when the card holds no bootcode.bin (DESIGN §8). */
const ROM_NETBOOT = new Set(['pi3', 'pi3-32']);

/** Network boot (issue 11): what a `netboot` row, the `netflash` layout and `method: netboot` need. */
function checkNetboot(config: AgentConfig, targets: readonly Target[], errors: string[], warnings: string[]): void {
  for (const t of targets) {
    const layout = t.layout ?? config.defaultLayout;
    if (layout === 'netflash' && !t.netboot)
      errors.push(
        `${t.name}: layout netflash serves the board's firmware from its netboot folder, but its row has none ` +
          '(netboot column: serial, mac or prefix:<folder>)',
      );
    if (!t.netboot) continue;
    const model = (t.model ?? config.uboot.defaultModel).toLowerCase();
    if (NO_FIRMWARE_NETBOOT.has(model))
      errors.push(`${t.name}: a ${model} cannot boot from the network by its firmware; clear its netboot column`);
    else if (ROM_NETBOOT.has(model))
      warnings.push(
        `${t.name}: a Pi 3's boot ROM tries the network only once its OTP bit is set (a 3B: program_usb_boot_mode=1, ` +
          'one boot; a 3B+ has it) and only when the card holds no bootcode.bin: method netboot needs its card ' +
          'blank or out',
      );
  }
  const netboot = targets.filter((t) => t.netboot).map((t) => t.name);
  if (!netboot.length) return;
  if (config.dhcp.mode === 'off')
    warnings.push(
      `dhcp.mode is off: ${netboot.join(', ')} boot from the network only with a DHCP answer that names the agent ` +
        "(dhcp.mode proxy or full, the lab's dnsmasq as the README shows, or a Pi 4 EEPROM set with " +
        'eeprom-config --static)',
    );
  if (!config.dhcp.serverIp && (config.tftp.address === '0.0.0.0' || config.tftp.address === '::'))
    warnings.push(
      `${netboot.join(', ')}: method netboot tells the board where its root is: set dhcp.serverIp (or tftp.address) ` +
        "to the agent's address on the boards' network, else such jobs fail with LAB_MISCONFIGURED",
    );
  if (!onPath('nbdkit'))
    warnings.push(
      `${netboot.join(', ')}: method netboot serves the root file system with nbdkit, which is not installed ` +
        '(Debian: apt install nbdkit); such jobs fail with LAB_MISCONFIGURED',
    );
}

/** The in-place update (issue 12): the static busybox it carries to the board. */
function checkOta(config: AgentConfig, targets: readonly Target[], errors: string[]): void {
  const rows = targets.filter((t) => (t.layout ?? config.defaultLayout) === 'ota');
  if (!rows.length) return;
  const names = rows.map((t) => t.name).join(', ');
  const busybox = Object.entries(config.ota.busybox);
  if (!busybox.length)
    errors.push(
      `${names}: layout ota uploads a static busybox for the board's architecture, but ota.busybox names none ` +
        '(e.g. "ota": { "busybox": { "arm64": "/srv/rpi-flash/busybox-arm64" } }, from Debian\'s busybox-static)',
    );
  for (const [arch, file] of busybox)
    if (!existsSync(file)) errors.push(`ota.busybox.${arch} ${file} does not exist (${names} need it for layout ota)`);
}

function onPath(command: string): boolean {
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .some((dir) => path.isAbsolute(dir) && existsSync(path.join(dir, command)));
}

/** `--check`'s report: warnings and refusals on `out`, one a line; false when a refusal stops the agent. */
export function reportLabCheck(
  config: AgentConfig,
  targets: readonly Target[],
  out: { write(text: string): unknown },
): boolean {
  const { errors, warnings } = checkLab(config, targets);
  for (const w of warnings) out.write(`rpi-flash-agent: warning: ${w}\n`);
  for (const e of errors) out.write(`rpi-flash-agent: ${e}\n`);
  return errors.length === 0;
}
