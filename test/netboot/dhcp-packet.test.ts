/** BOOTP/DHCP decoding and encoding (RFC 2131/2132), the Pi firmware's own DISCOVERs, and malformed input. */
import { describe, expect, it } from 'vitest';
import {
  BootOp,
  DhcpMessageType,
  DhcpOption,
  DhcpPacketError,
  MAX_PACKET_LENGTH,
  MIN_REPLY_LENGTH,
  chaddrOf,
  clientMac,
  decodeDhcpPacket,
  encodeDhcpPacket,
  messageTypeOf,
  optionIpv4,
  optionText,
  type DhcpPacket,
} from '../../runner-agent/src/netboot/dhcp-packet.js';
import { classifyClient, describeClient, PI_OPTION_43 } from '../../runner-agent/src/netboot/dhcp-clients.js';
import { isHostOf, parseSubnet, type Ipv4Subnet } from '../../runner-agent/src/netboot/ipv4-subnet.js';
import {
  PI3_ROM_DISCOVER_LENGTH,
  PI3_ROM_MAC,
  PI3_ROM_UUID,
  PI3_ROM_XID,
  PI4_EEPROM_DISCOVER_LENGTH,
  PI4_EEPROM_MAC,
  pi3RomDiscover,
  pi4EepromDiscover,
  plainDiscover,
} from './dhcp-captures.js';

function sample(): DhcpPacket {
  return {
    op: BootOp.REPLY,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid: 0xdeadbeef,
    secs: 7,
    flags: 0x8000,
    ciaddr: '0.0.0.0',
    yiaddr: '10.77.0.20',
    siaddr: '10.77.0.1',
    giaddr: '0.0.0.0',
    chaddr: chaddrOf('b8:27:eb:00:00:01'),
    sname: 'lab',
    file: 'bootcode.bin',
    options: new Map<number, Buffer>([
      [DhcpOption.MESSAGE_TYPE, Buffer.from([DhcpMessageType.OFFER])],
      [DhcpOption.SERVER_ID, Buffer.from([10, 77, 0, 1])],
      [DhcpOption.VENDOR_SPECIFIC, PI_OPTION_43],
    ]),
  };
}

describe('the Pi 3 boot ROM DISCOVER from the network-boot documentation', () => {
  const bytes = pi3RomDiscover();

  it('is as long as the capture says (320 bytes of UDP payload)', () => {
    expect(bytes.length).toBe(PI3_ROM_DISCOVER_LENGTH);
  });

  it('decodes field by field to what tcpdump printed', () => {
    const p = decodeDhcpPacket(bytes);
    expect(p).toMatchObject({
      op: BootOp.REQUEST,
      htype: 1,
      hlen: 6,
      hops: 0,
      xid: PI3_ROM_XID,
      secs: 0,
      flags: 0,
      ciaddr: '0.0.0.0',
      yiaddr: '0.0.0.0',
      siaddr: '0.0.0.0',
      giaddr: '0.0.0.0',
      sname: '',
      file: '',
    });
    expect(clientMac(p)).toBe(PI3_ROM_MAC);
    expect(messageTypeOf(p)).toBe(DhcpMessageType.DISCOVER);
    expect([...p.options.keys()]).toEqual([53, 55, 93, 94, 97, 60]);
    expect([...p.options.get(55)!]).toEqual([43, 60, 67, 128, 129, 130, 131, 132, 133, 134, 135, 66]);
    expect([...p.options.get(93)!]).toEqual([0, 0]);
    expect([...p.options.get(94)!]).toEqual([1, 2, 1]);
    expect(p.options.get(97)).toEqual(PI3_ROM_UUID);
    expect(optionText(p, 60)).toBe('PXEClient:Arch:00000:UNDI:002001');
  });

  it('is the Pi 3 ROM to the classifier; the Pi 4 capture is the EEPROM, a PC is generic', () => {
    expect(classifyClient(decodeDhcpPacket(bytes))).toMatchObject({ kind: 'pi3-rom' });
    const pi4 = pi4EepromDiscover();
    expect(pi4.length).toBe(PI4_EEPROM_DISCOVER_LENGTH);
    expect(clientMac(decodeDhcpPacket(pi4))).toBe(PI4_EEPROM_MAC);
    expect(classifyClient(decodeDhcpPacket(pi4))).toMatchObject({ kind: 'pi-eeprom', fourcc: 'RPi4' });
    expect(classifyClient(decodeDhcpPacket(plainDiscover('00:11:22:33:44:55', 1)))).toMatchObject({
      kind: 'generic',
    });
  });

  it('re-encodes to the same bytes', () => {
    // The capture is already over BOOTP's 300-byte minimum, so encoding adds no padding.
    expect(encodeDhcpPacket(decodeDhcpPacket(bytes))).toEqual(bytes);
  });

  it('the vendor class decides (a U-Boot stand-in sends it without 93/94/97); another PXE class is generic', () => {
    const p = decodeDhcpPacket(bytes);
    for (const code of [93, 94, 97]) p.options.delete(code);
    expect(classifyClient(p).kind).toBe('pi3-rom');
    p.options.set(60, Buffer.from('PXEClient:Arch:00011:UNDI:003000'));
    expect(classifyClient(p)).toEqual({ kind: 'generic', vendorClass: 'PXEClient:Arch:00011:UNDI:003000' });
  });
});

describe('describeClient', () => {
  it('names the firmware, and shows a vendor class only as printable ASCII, cut at 64 characters', () => {
    expect(describeClient({ kind: 'pi3-rom' })).toBe('Pi 3 boot ROM');
    expect(describeClient({ kind: 'pi-eeprom', fourcc: 'RPi5' })).toBe('Pi EEPROM (RPi5)');
    expect(describeClient({ kind: 'generic', vendorClass: 'udhcp 1.35.0' })).toBe('generic (udhcp 1.35.0)');
    expect(describeClient({ kind: 'generic', vendorClass: '\x1b[31mred\n' })).toBe('generic (?[31mred?)');
    expect(describeClient({ kind: 'generic', vendorClass: 'x'.repeat(255) })).toBe(`generic (${'x'.repeat(64)}…)`);
  });
});

describe('option 43 for the Pi firmware', () => {
  it("is dnsmasq's pxe-service=0 form with the menu text's three trailing spaces", () => {
    const hex = [
      '060103', // discovery control: 3
      '0a0400' + Buffer.from('PXE').toString('hex'), // menu prompt: timeout 0, "PXE"
      '0917000014' + Buffer.from('Raspberry Pi Boot   ').toString('hex'), // boot menu: type 0, 20-byte text
      'ff',
    ].join('');
    expect(PI_OPTION_43.toString('hex')).toBe(hex);
  });
});

describe('encode and decode', () => {
  it('round-trips every header field and option', () => {
    const p = sample();
    const bytes = encodeDhcpPacket(p);
    expect(decodeDhcpPacket(bytes)).toEqual(p);
  });

  it('pads a short reply to 300 bytes with zeros after the end option, never pad options among them', () => {
    const p = sample();
    p.options = new Map([[DhcpOption.MESSAGE_TYPE, Buffer.from([DhcpMessageType.ACK])]]);
    const bytes = encodeDhcpPacket(p);
    expect(bytes.length).toBe(MIN_REPLY_LENGTH);
    expect([...bytes.subarray(240, 244)]).toEqual([53, 1, 5, 255]);
    expect(bytes.subarray(244).every((b) => b === 0)).toBe(true);
  });

  it('splits an option longer than 255 bytes and joins the parts back (RFC 3396)', () => {
    const p = sample();
    const long = Buffer.alloc(600, 7);
    p.options.set(DhcpOption.BOOTFILE_NAME, long);
    const bytes = encodeDhcpPacket(p);
    const decoded = decodeDhcpPacket(bytes);
    expect(decoded.options.get(DhcpOption.BOOTFILE_NAME)).toEqual(long);
  });

  it('skips pad options between options and tolerates a missing end option', () => {
    const bytes = Buffer.concat([
      pi3RomDiscover().subarray(0, 240),
      Buffer.from([0, 0, 53, 1, 3, 0, 54, 4, 10, 0, 0, 1]),
    ]);
    const p = decodeDhcpPacket(bytes);
    expect(messageTypeOf(p)).toBe(DhcpMessageType.REQUEST);
    expect(optionIpv4(p, DhcpOption.SERVER_ID)).toBe('10.0.0.1');
  });

  it('reads no option after the end option', () => {
    const bytes = Buffer.concat([pi3RomDiscover().subarray(0, 240), Buffer.from([53, 1, 1, 255, 54, 4, 1, 2, 3, 4])]);
    expect([...decodeDhcpPacket(bytes).options.keys()]).toEqual([53]);
  });

  it('refuses to encode what cannot be sent', () => {
    const p = sample();
    expect(() => encodeDhcpPacket({ ...p, yiaddr: '10.0.0.300' })).toThrow(DhcpPacketError);
    expect(() => encodeDhcpPacket({ ...p, sname: 'x'.repeat(64) })).toThrow(/sname is 64 bytes/);
    expect(() => encodeDhcpPacket({ ...p, options: new Map([[255, Buffer.alloc(1)]]) })).toThrow(/cannot carry/);
    expect(() => chaddrOf('not-a-mac')).toThrow(DhcpPacketError);
  });
});

describe('malformed input gives a DhcpPacketError, never another exception', () => {
  const good = pi3RomDiscover();
  const cases: [string, Buffer, RegExp][] = [
    ['empty', Buffer.alloc(0), /shorter than a DHCP header/],
    ['a header without the cookie', good.subarray(0, 239), /shorter than a DHCP header/],
    ['plain BOOTP (no magic cookie)', Buffer.concat([good.subarray(0, 236), Buffer.alloc(64)]), /no DHCP magic cookie/],
    ['op 3', Buffer.concat([Buffer.from([3]), good.subarray(1)]), /op 3/],
    [
      'hlen 17',
      Buffer.concat([good.subarray(0, 2), Buffer.from([17]), good.subarray(3)]),
      /hardware address length 17/,
    ],
    ['an option without its length', Buffer.concat([good.subarray(0, 240), Buffer.from([53])]), /has no length/],
    [
      'an option longer than the datagram',
      Buffer.concat([good.subarray(0, 240), Buffer.from([60, 200]), Buffer.from('PXEClient')]),
      /claims 200 bytes, 9 remain/,
    ],
    ['a datagram over the limit', Buffer.concat([good, Buffer.alloc(MAX_PACKET_LENGTH)]), /longer than/],
  ];
  it.each(cases)('%s', (_name, bytes, reason) => {
    expect(() => decodeDhcpPacket(bytes)).toThrow(DhcpPacketError);
    expect(() => decodeDhcpPacket(bytes)).toThrow(reason);
  });

  it('every truncation and every single-byte change of the ROM DISCOVER decodes or throws DhcpPacketError', () => {
    const outcomes = new Set<string>();
    const attempt = (bytes: Buffer) => {
      try {
        decodeDhcpPacket(bytes);
        outcomes.add('decoded');
      } catch (err) {
        expect(err).toBeInstanceOf(DhcpPacketError);
        outcomes.add('refused');
      }
    };
    for (let n = 0; n <= good.length; n++) attempt(good.subarray(0, n));
    for (let at = 0; at < good.length; at++)
      for (const value of [0x00, 0x01, 0x35, 0xff]) {
        const changed = Buffer.from(good);
        changed[at] = value;
        attempt(changed);
      }
    expect(outcomes).toEqual(new Set(['decoded', 'refused']));
  });

  it('a chaddr that is not a 6-byte Ethernet address has no MAC (the responder ignores it)', () => {
    const p = decodeDhcpPacket(good);
    expect(clientMac({ ...p, htype: 6 })).toBeUndefined();
    expect(clientMac({ ...p, hlen: 16 })).toBeUndefined();
  });
});

describe('subnets (dhcp.subnet)', () => {
  it('parses CIDR and tells host addresses from the network and broadcast addresses', () => {
    const s = parseSubnet('192.168.7.0/24') as Ipv4Subnet;
    expect(s).toEqual({ network: '192.168.7.0', prefix: 24, mask: '255.255.255.0', cidr: '192.168.7.0/24' });
    expect(isHostOf(s, '192.168.7.20')).toBe(true);
    expect(isHostOf(s, '192.168.7.0')).toBe(false);
    expect(isHostOf(s, '192.168.7.255')).toBe(false);
    expect(isHostOf(s, '192.168.8.20')).toBe(false);
    expect(isHostOf(parseSubnet('10.64.0.0/10') as Ipv4Subnet, '10.127.255.254')).toBe(true);
  });

  it('says what is wrong with a subnet that is not one', () => {
    expect(parseSubnet('192.168.7.1/24')).toEqual({
      problem: '"192.168.7.1/24" has host bits set (the network is 192.168.7.0/24)',
    });
    expect(parseSubnet('192.168.7.0')).toHaveProperty('problem');
    expect(parseSubnet('192.168.7.0/31')).toEqual({ problem: '"192.168.7.0/31": the prefix must be from /8 to /30' });
    expect(parseSubnet('300.1.1.0/24')).toHaveProperty('problem');
  });
});
