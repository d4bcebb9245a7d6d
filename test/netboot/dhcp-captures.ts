/**
 * DHCP DISCOVERs of real Pi firmware, rebuilt byte for byte from published captures. Both
 * captures exist only as tcpdump's decoded text, not as hex, so each packet is built field by
 * field from that text; the UDP payload length tcpdump printed is then checked against the result
 * (it leaves no byte unaccounted for: no padding, no other option).
 *
 * - The Pi 3 boot ROM: the Raspberry Pi documentation's network-boot page (boot-net.adoc,
 *   "DHCP request / reply"): `Request from b8:27:eb:28:f6:6d, length 320, xid 0x26f30339,
 *   Flags [none]`, options 53 Discover; 55 (12): Vendor-Option, Vendor-Class, BF, 128–135, TFTP;
 *   93 (2): 0; 94 (3): 1.2.1; 97 (17): 0 and sixteen 68s (the first 3B's constant UUID);
 *   60 (32): "PXEClient:Arch:00000:UNDI:002001"; END.
 * - A Pi 4 EEPROM: a published capture (a lab write-up; its MAC redacted): `length 322, xid
 *   0xd5ec86d6, Flags [none]`, options 53 Discover; 55 (14): Subnet-Mask, Default-Gateway,
 *   Vendor-Option, Vendor-Class, TFTP, BF, 128–135; 60 (32) as above; 93: 0; 94: 1.2.1;
 *   97 (17): 0.82.80.105.52.18.49.192.0.50.167.237.137.157.110.239.229 (`RPi4`, revision
 *   0x00c03112 little-endian, the MAC's low bytes 32:a7:ed:89, the serial). The MAC here is
 *   dc:a6:32:a7:ed:89: Raspberry Pi's OUI and the low bytes option 97 carries. tcpdump printed no
 *   END line, but 322 bytes hold exactly the options and one END byte.
 */
import { chaddrOf } from '../../runner-agent/src/netboot/dhcp-packet.js';

const PXE_VENDOR_CLASS = Buffer.from('PXEClient:Arch:00000:UNDI:002001', 'latin1');

function header(xid: number, mac: string): Buffer {
  const h = Buffer.alloc(236);
  h[0] = 1; // BOOTREQUEST
  h[1] = 1; // Ethernet
  h[2] = 6;
  h[3] = 0; // hops
  h.writeUInt32BE(xid, 4);
  // secs 0, flags 0 (Flags [none]), ciaddr/yiaddr/siaddr/giaddr 0.0.0.0, sname and file empty.
  chaddrOf(mac).copy(h, 28);
  return h;
}

const option = (code: number, data: Buffer | number[]) => {
  const bytes = Buffer.from(data);
  return Buffer.concat([Buffer.from([code, bytes.length]), bytes]);
};
const COOKIE = Buffer.from([0x63, 0x82, 0x53, 0x63]);
const END = Buffer.from([255]);

export const PI3_ROM_MAC = 'b8:27:eb:28:f6:6d';
export const PI3_ROM_XID = 0x26f30339;
export const PI3_ROM_UUID = Buffer.from([0, ...Array<number>(16).fill(68)]);
/** tcpdump's "length 320": the UDP payload. */
export const PI3_ROM_DISCOVER_LENGTH = 320;

export function pi3RomDiscover(mac = PI3_ROM_MAC, xid = PI3_ROM_XID): Buffer {
  return Buffer.concat([
    header(xid, mac),
    COOKIE,
    option(53, [1]),
    option(55, [43, 60, 67, 128, 129, 130, 131, 132, 133, 134, 135, 66]),
    option(93, [0, 0]),
    option(94, [1, 2, 1]),
    option(97, PI3_ROM_UUID),
    option(60, PXE_VENDOR_CLASS),
    END,
  ]);
}

export const PI4_EEPROM_MAC = 'dc:a6:32:a7:ed:89';
export const PI4_EEPROM_XID = 0xd5ec86d6;
export const PI4_EEPROM_UUID = Buffer.from([0, 82, 80, 105, 52, 18, 49, 192, 0, 50, 167, 237, 137, 157, 110, 239, 229]);
export const PI4_EEPROM_DISCOVER_LENGTH = 322;

export function pi4EepromDiscover(mac = PI4_EEPROM_MAC, xid = PI4_EEPROM_XID): Buffer {
  return Buffer.concat([
    header(xid, mac),
    COOKIE,
    option(53, [1]),
    option(55, [1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135]),
    option(60, PXE_VENDOR_CLASS),
    option(93, [0, 0]),
    option(94, [1, 2, 1]),
    option(97, PI4_EEPROM_UUID),
    END,
  ]);
}

/** A PC's DHCP client (what a laptop on the lab network sends): no PXE options. */
export function plainDiscover(
  mac: string,
  xid: number,
  vendorClass = 'dhcpcd-9.4.1:Linux-6.1.0:x86_64:GenuineIntel',
): Buffer {
  return Buffer.concat([
    header(xid, mac),
    COOKIE,
    option(53, [1]),
    option(55, [1, 3, 6, 15, 28, 51, 58, 59]),
    option(60, Buffer.from(vendorClass, 'latin1')),
    END,
  ]);
}
