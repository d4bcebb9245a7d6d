/**
 * The board models the lab knows, the Debian `u-boot-rpi` build that serves each one, and what the
 * Pi firmware does on it by default (which config.txt sections apply, which kernel it loads).
 *
 * Debian's `u-boot-rpi` installs one build per directory, `/usr/lib/u-boot/<build>/u-boot.bin`:
 *   rpi_0_w (32-bit, Zero W) · rpi_2 (32-bit, Pi 2) · rpi_3_32b / rpi_3 (Pi 3, 32/64-bit) ·
 *   rpi_4_32b / rpi_4 (Pi 4, 32/64-bit) · rpi_arm64 (64-bit, one build for Pi 3, Pi 4, Zero 2 W).
 * A 64-bit U-Boot can only `booti` a 64-bit kernel and a 32-bit one only `bootz` a 32-bit
 * kernel, so the model also fixes which images a board can run through U-Boot.
 */
import { FIRMWARE_DTB_WINDOW, RAM_MARGIN, UBOOT_RESERVE } from '../board/ram.js';

export type Tri = true | false | 'unknown';

export interface PiModel {
  name: string;
  description: string;
  /** Directory of the Debian `u-boot-rpi` build under /usr/lib/u-boot/. */
  ubootBuild: string;
  /** The U-Boot build (and so the kernel it boots) is 64-bit: `arm_64bit=1`. */
  arm64: boolean;
  /** config.txt model filters that certainly apply to this board. */
  filters: readonly string[];
  /** Model filters that apply to some boards of this model only (a Pi 4 may be a CM4 or a 400). */
  maybeFilters: readonly string[];
  /** The firmware's `arm_64bit` default on this board (1 on Pi 4 since the 2022 firmware). */
  firmwareDefault64: boolean;
  /** The 32-bit kernels the firmware tries, in order, when it boots 32-bit. */
  kernels32: readonly string[];
  /** The least RAM a board of this model may have, in MiB (a Pi 3 may be a 512 MB 3A+). */
  minRamMiB: number;
  /** The firmware's default `gpu_mem` on this board, in MiB: the ARM cores get the rest. */
  gpuMemMiB: number;
  /**
   * Whether a board of this model has Ethernet on board (Pi 3B/3B+ yes, 3A+ no: `unknown` for
   * `pi3`). Without it, U-Boot needs a USB adapter with a driver of `usbEthernet`.
   */
  onboardEthernet: Tri;
  /** The USB Ethernet chips the model's Debian U-Boot build drives (2023.01). */
  usbEthernet: readonly string[];
}

const PI3_32 = ['kernel7.img', 'kernel.img'];
/**
 * USB Ethernet drivers of Debian's Pi builds (CONFIG_USB_ETHER_*, read from the .config each ships):
 * rpi, rpi_0_w and rpi_2 have SMSC95xx only; rpi_3, rpi_3_32b and rpi_arm64 SMSC95xx and LAN78xx;
 * rpi_4 and rpi_4_32b none (the Pi 4's own GENET only).
 */
const USB_NET = ['SMSC95xx', 'LAN78xx'];
const PI4_32 = ['kernel7l.img', 'kernel7.img', 'kernel.img'];

export const PI_MODELS: Readonly<Record<string, PiModel>> = {
  pi0w: {
    name: 'pi0w',
    description: 'Raspberry Pi Zero W (32-bit)',
    ubootBuild: 'rpi_0_w',
    arm64: false,
    filters: ['pi0', 'pi0w'],
    maybeFilters: [],
    firmwareDefault64: false,
    kernels32: ['kernel.img'],
    minRamMiB: 512,
    gpuMemMiB: 64,
    onboardEthernet: false,
    usbEthernet: ['SMSC95xx'],
  },
  pi02: {
    name: 'pi02',
    description: 'Raspberry Pi Zero 2 W (64-bit)',
    ubootBuild: 'rpi_arm64',
    arm64: true,
    filters: ['pi0', 'pi02'],
    maybeFilters: ['pi0w', 'pi3'],
    firmwareDefault64: false,
    kernels32: PI3_32,
    minRamMiB: 512,
    gpuMemMiB: 64,
    onboardEthernet: false,
    usbEthernet: USB_NET,
  },
  pi2: {
    name: 'pi2',
    description: 'Raspberry Pi 2 (32-bit)',
    ubootBuild: 'rpi_2',
    arm64: false,
    filters: ['pi2'],
    maybeFilters: [],
    firmwareDefault64: false,
    kernels32: PI3_32,
    minRamMiB: 1024,
    gpuMemMiB: 64,
    onboardEthernet: true,
    usbEthernet: ['SMSC95xx'],
  },
  pi3: {
    name: 'pi3',
    description: 'Raspberry Pi 3 (64-bit)',
    ubootBuild: 'rpi_3',
    arm64: true,
    filters: ['pi3'],
    maybeFilters: ['pi3+'],
    firmwareDefault64: false,
    kernels32: PI3_32,
    minRamMiB: 512,
    gpuMemMiB: 64,
    onboardEthernet: 'unknown',
    usbEthernet: USB_NET,
  },
  'pi3-32': {
    name: 'pi3-32',
    description: 'Raspberry Pi 3 (32-bit)',
    ubootBuild: 'rpi_3_32b',
    arm64: false,
    filters: ['pi3'],
    maybeFilters: ['pi3+'],
    firmwareDefault64: false,
    kernels32: PI3_32,
    minRamMiB: 512,
    gpuMemMiB: 64,
    onboardEthernet: 'unknown',
    usbEthernet: USB_NET,
  },
  pi4: {
    name: 'pi4',
    description: 'Raspberry Pi 4 / 400 / CM4 (64-bit)',
    ubootBuild: 'rpi_4',
    arm64: true,
    filters: ['pi4'],
    maybeFilters: ['pi400', 'cm4', 'cm4s'],
    firmwareDefault64: true,
    kernels32: PI4_32,
    minRamMiB: 1024,
    gpuMemMiB: 76,
    onboardEthernet: true,
    usbEthernet: [],
  },
  'pi4-32': {
    name: 'pi4-32',
    description: 'Raspberry Pi 4 / 400 / CM4 (32-bit)',
    ubootBuild: 'rpi_4_32b',
    arm64: false,
    filters: ['pi4'],
    maybeFilters: ['pi400', 'cm4', 'cm4s'],
    firmwareDefault64: true,
    kernels32: PI4_32,
    minRamMiB: 1024,
    gpuMemMiB: 76,
    onboardEthernet: true,
    usbEthernet: [],
  },
  arm64: {
    name: 'arm64',
    description: 'any 64-bit Pi 3 / 4 / Zero 2 W (one generic build)',
    ubootBuild: 'rpi_arm64',
    arm64: true,
    filters: [],
    maybeFilters: ['pi0', 'pi02', 'pi0w', 'pi3', 'pi3+', 'pi4', 'pi400', 'cm4', 'cm4s'],
    firmwareDefault64: true,
    kernels32: PI4_32,
    minRamMiB: 512,
    gpuMemMiB: 64,
    onboardEthernet: 'unknown',
    usbEthernet: USB_NET,
  },
};

/** Debian's u-boot-rpi builds with CONFIG_CMD_UNZIP (`help` on each under QEMU: uboot/README.md). */
const UNZIP_BUILDS: ReadonlySet<string> = new Set(['rpi_3', 'rpi_4', 'rpi_arm64']);

/** The model's Debian U-Boot has `unzip`: its parts may travel gzip'd (layouts/stage2-flash.ts). */
export function modelHasUnzip(model: PiModel): boolean {
  return UNZIP_BUILDS.has(model.ubootBuild);
}

/** The largest gzip stream of `n` bytes (zlib's deflateBound, plus gzip's 18-byte wrapper). */
export function gzipBound(n: number): number {
  return n + (n >>> 12) + (n >>> 14) + (n >>> 25) + 13 + 18;
}

/** Looks a model up by name (case-insensitive); throws naming the known ones. */
export function getPiModel(name: string): PiModel {
  const model = PI_MODELS[name.toLowerCase()];
  if (!model) throw new Error(`unknown board model "${name}"; known: ${Object.keys(PI_MODELS).join(', ')}`);
  return model;
}

/** Where Debian's `u-boot-rpi` package puts the model's U-Boot. */
export function debianUbootPath(model: PiModel): string {
  return `/usr/lib/u-boot/${model.ubootBuild}/u-boot.bin`;
}

/** config.txt model filters (the ones that name a board); other filters test other things. */
export const MODEL_FILTER = /^(pi\d+\+?|pi0w|pi02|pi400|pi500|cm\d+s?)$/;

/** Whether a model filter applies to this board; without a model, nothing is certain. */
export function modelFilterApplies(filter: string, model: PiModel | undefined): Tri {
  if (!model) return 'unknown';
  if (model.filters.includes(filter)) return true;
  if (model.maybeFilters.includes(filter)) return 'unknown';
  return false;
}

const MiB = 1024 * 1024;

/**
 * The end of the RAM stage 2 may use on every board of the model (a byte address), for the
 * firmware's default `gpu_mem` or the one given: the ARM's share, less the device-tree window,
 * U-Boot's reserve and the margin.
 */
export function safeRamEnd(model: PiModel, gpuMemMiB = model.gpuMemMiB): number {
  return (model.minRamMiB - gpuMemMiB) * MiB - FIRMWARE_DTB_WINDOW - UBOOT_RESERVE - RAM_MARGIN;
}

/** The largest part stage 2 can download at `loadAddr` on every board of the model (0: none fits). */
export function safePartSizeMax(model: PiModel, loadAddr: number, gpuMemMiB = model.gpuMemMiB): number {
  const room = safeRamEnd(model, gpuMemMiB) - loadAddr;
  return room > 0 ? Math.floor(room / 512) * 512 : 0;
}
