/**
 * Who is asking, from a DHCP request's options, and what the Pi firmware must be told
 * (DESIGN §8; the Raspberry Pi documentation's boot-net page and its DHCP capture).
 *
 * - The Pi 3 boot ROM (also 2B v1.2, 3B+, 3A+, CM3) sends vendor class
 *   `PXEClient:Arch:00000:UNDI:002001` with options 93 (arch 0), 94 (UNDI 2.1) and 97 (17 bytes:
 *   a constant on the first 3B, the serial from the 3B+ on). Five DISCOVERs, never a REQUEST.
 * - The Pi 4/5 EEPROM sends the same vendor class, 93 and 94, but its option 97 starts with a
 *   FourCC, `RPi4` or `RPi5`, then the board revision, the MAC's low 4 bytes and the serial. Its
 *   REQUEST carries no option 60 (rpi-eeprom #82), so option 97 decides.
 * - Anything else (U-Boot's `dhcp`, udhcpc, a kernel's ip=dhcp) is a generic client.
 *
 * The ROM is told by its vendor class alone. Its options 93, 94 and 97 are what a PC's PXE ROM
 * sends too (93 is 0, x86 BIOS, for every Pi), so requiring them would tell nothing apart; it would
 * only refuse a stand-in that asks with the ROM's vendor class, as the QEMU network-boot test's
 * U-Boot does (`bootp_vci`). The MAC in the targets database is what keeps the responder from
 * answering a PC.
 */
import { DhcpOption, optionText, type DhcpPacket } from './dhcp-packet.js';

export const PI3_ROM_VENDOR_CLASS = 'PXEClient:Arch:00000:UNDI:002001';

/** `pi3-rom` and `pi-eeprom` are the Pi firmware; `generic` is U-Boot, udhcpc, a kernel. */
export type DhcpClientKind = 'pi3-rom' | 'pi-eeprom' | 'generic';

export interface DhcpClient {
  kind: DhcpClientKind;
  /** The EEPROM's FourCC (`RPi4`, `RPi5`) when `kind` is `pi-eeprom`. */
  fourcc?: string;
  /** Option 60 as sent, for the log. */
  vendorClass?: string;
}

/** Option 97 of a Pi 4/5 EEPROM: type 0, then the FourCC `RPi<model>`. */
function eepromFourcc(uuid: Buffer | undefined): string | undefined {
  if (uuid?.length !== 17 || uuid[0] !== 0) return undefined;
  const fourcc = uuid.toString('latin1', 1, 5);
  return /^RPi[0-9A-Za-z]$/.test(fourcc) ? fourcc : undefined;
}

export function classifyClient(p: DhcpPacket): DhcpClient {
  const vendorClass = optionText(p, DhcpOption.VENDOR_CLASS);
  const withVendor = vendorClass === undefined ? {} : { vendorClass };
  const fourcc = eepromFourcc(p.options.get(DhcpOption.CLIENT_UUID));
  if (fourcc) return { kind: 'pi-eeprom', fourcc, ...withVendor };
  if (vendorClass === PI3_ROM_VENDOR_CLASS) return { kind: 'pi3-rom', ...withVendor };
  return { kind: 'generic', ...withVendor };
}

export function isPiFirmware(kind: DhcpClientKind): boolean {
  return kind === 'pi3-rom' || kind === 'pi-eeprom';
}

/** For log lines: `Pi 3 boot ROM`, `Pi EEPROM (RPi4)`, `generic (udhcp 1.35.0)`. */
export function describeClient(c: DhcpClient): string {
  if (c.kind === 'pi3-rom') return 'Pi 3 boot ROM';
  if (c.kind === 'pi-eeprom') return `Pi EEPROM (${c.fourcc})`;
  if (!c.vendorClass) return 'generic';
  // A peer's bytes, bound for the log: printable ASCII only, and not all of 255 bytes.
  const shown = c.vendorClass.replace(/[^\x20-\x7e]/g, '?');
  return `generic (${shown.length > 64 ? `${shown.slice(0, 64)}…` : shown})`;
}

/**
 * The boot menu's text. The three trailing spaces are for the first Pi 3 boot ROMs, which get the
 * string's length wrong (boot-net: "requires the extra three spaces due to an error calculating
 * the string length", fixed in the 3B+); later ROMs and the EEPROM match it as a substring
 * (the EEPROM's `PXE_OPTION43`, default `Raspberry Pi Boot`), so the spaces cost them nothing.
 */
export const PI_BOOT_MENU_TEXT = 'Raspberry Pi Boot   ';

/**
 * Option 43 in the PXE form dnsmasq's `pxe-service=0,"Raspberry Pi Boot   "` sends (DESIGN §8
 * gives the bytes of the same form without the spaces, as the docs' capture shows them):
 * sub-option 6 (discovery control) = 3, sub-option 10 (menu prompt) = timeout 0 and "PXE",
 * sub-option 9 (boot menu) = item type 0 and the text, then the end.
 */
export const PI_OPTION_43: Buffer = (() => {
  const text = Buffer.from(PI_BOOT_MENU_TEXT, 'latin1');
  return Buffer.concat([
    Buffer.from([6, 1, 3]),
    Buffer.from([10, 4, 0]),
    Buffer.from('PXE', 'latin1'),
    Buffer.from([9, text.length + 3, 0, 0, text.length]),
    text,
    Buffer.from([255]),
  ]);
})();

/**
 * The options every Pi firmware reply carries, in this order: 60 `PXEClient` (the ROM ignores a
 * reply without it), 66 the TFTP server as an IP string (the EEPROM reads it so; the ROM may ignore
 * `siaddr`, firmware #801, and talk to the server that answered), 43, and the client's own option
 * 97 echoed, as PXE servers do and as the reply in the docs' capture does.
 */
export function piFirmwareOptions(request: DhcpPacket, tftpServerIp: string): [number, Buffer][] {
  const out: [number, Buffer][] = [
    [DhcpOption.VENDOR_CLASS, Buffer.from('PXEClient', 'latin1')],
    [DhcpOption.TFTP_SERVER_NAME, Buffer.from(tftpServerIp, 'latin1')],
    [DhcpOption.VENDOR_SPECIFIC, PI_OPTION_43],
  ];
  const uuid = request.options.get(DhcpOption.CLIENT_UUID);
  if (uuid) out.push([DhcpOption.CLIENT_UUID, uuid]);
  return out;
}
