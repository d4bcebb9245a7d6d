/**
 * The DHCP responder (runner-agent/src/netboot/dhcp-responder.ts) over real sockets: first on the
 * host's loopback (ephemeral ports, broadcasts to 127.255.255.255, so nothing leaves the machine),
 * then on the real ports in a private network namespace with the Pi firmware's captured DISCOVERs
 * and Debian's busybox udhcpc (dhcp-scenario.ts).
 */
import dgram from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, formatRecord } from '../../runner-agent/src/log.js';
import {
  BootOp,
  DhcpMessageType,
  DhcpOption,
  chaddrOf,
  decodeDhcpPacket,
  encodeDhcpPacket,
  messageTypeOf,
  optionIpv4,
  optionText,
  type DhcpPacket,
} from '../../runner-agent/src/netboot/dhcp-packet.js';
import { PI_OPTION_43 } from '../../runner-agent/src/netboot/dhcp-clients.js';
import {
  DhcpResponder,
  type DhcpAnswer,
  type DhcpBoard,
  type DhcpResponderOptions,
} from '../../runner-agent/src/netboot/dhcp-responder.js';
import { parseSubnet, type Ipv4Subnet } from '../../runner-agent/src/netboot/ipv4-subnet.js';
import { needCommands, needNetns, runInNetns } from '../support/netns.js';
import { waitUntil } from '../support/wait.js';
import {
  PI3_ROM_MAC,
  PI3_ROM_UUID,
  PI3_ROM_XID,
  PI4_EEPROM_MAC,
  PI4_EEPROM_UUID,
  PI4_EEPROM_XID,
  pi3RomDiscover,
  pi4EepromDiscover,
  plainDiscover,
} from './dhcp-captures.js';
import {
  BOARDS,
  DNSMASQ_AGENT_IP,
  LEASE_SECONDS,
  PLAIN_BOARD_MAC,
  ROUTER,
  SERVER_IP,
  UDHCPC_MAC,
  UNKNOWN_MAC,
  type ReceivedReply,
  type ScenarioOptions,
  type ScenarioResult,
} from './dhcp-scenario.js';

/** What a Pi firmware reply must carry besides its lease (DESIGN §8), in the order sent. */
function expectFirmwareOptions(reply: DhcpPacket, serverIp: string, uuid: Buffer): void {
  expect(optionText(reply, DhcpOption.VENDOR_CLASS)).toBe('PXEClient');
  expect(optionText(reply, DhcpOption.TFTP_SERVER_NAME)).toBe(serverIp);
  expect(reply.options.get(DhcpOption.VENDOR_SPECIFIC)).toEqual(PI_OPTION_43);
  expect(reply.options.get(DhcpOption.CLIENT_UUID)).toEqual(uuid);
}

/** A ProxyDHCP OFFER, field by field: no address, the agent as next server, the boot options. */
function expectProxyOffer(reply: DhcpPacket, o: { xid: number; mac: string; uuid: Buffer; serverIp: string }): void {
  expect(reply).toMatchObject({
    op: BootOp.REPLY,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid: o.xid,
    secs: 0,
    flags: 0,
    ciaddr: '0.0.0.0',
    yiaddr: '0.0.0.0',
    siaddr: o.serverIp,
    giaddr: '0.0.0.0',
    sname: '',
    file: '',
  });
  expect(reply.chaddr).toEqual(chaddrOf(o.mac));
  expect([...reply.options.keys()]).toEqual([53, 54, 60, 66, 43, 97]);
  expect(messageTypeOf(reply)).toBe(DhcpMessageType.OFFER);
  expect(optionIpv4(reply, DhcpOption.SERVER_ID)).toBe(o.serverIp);
  expectFirmwareOptions(reply, o.serverIp, o.uuid);
}

describe('on loopback', () => {
  const cleanup: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  const boards: Record<string, DhcpBoard> = {
    [PI3_ROM_MAC]: { name: 'pi3', ip: '10.77.0.13', firmwareJob: true },
    [PI4_EEPROM_MAC]: { name: 'pi4', ip: '10.77.0.14', firmwareJob: true },
    [PLAIN_BOARD_MAC]: { name: 'plain', ip: '10.77.0.30', firmwareJob: false },
    '02:00:00:00:00:99': { name: 'elsewhere', ip: '10.99.0.5', firmwareJob: true },
  };

  /** A responder on 127.0.0.1 and a client socket that receives its broadcasts (127.255.255.255). */
  async function lab(o: Partial<DhcpResponderOptions> = {}) {
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', sink: (r) => lines.push(formatRecord(r)) });
    const client = dgram.createSocket('udp4');
    const received: DhcpPacket[] = [];
    client.on('message', (msg) => received.push(decodeDhcpPacket(msg)));
    // The wildcard: Linux delivers a broadcast only to sockets bound to it (or to the broadcast address).
    await new Promise<void>((resolve) => client.bind(0, '0.0.0.0', resolve));
    cleanup.push(() => void client.close());
    const responder = new DhcpResponder({
      mode: 'proxy',
      address: '127.0.0.1',
      port: 0,
      clientPort: client.address().port,
      serverIp: '127.0.0.1',
      broadcastAddress: '127.255.255.255',
      lookup: (mac) => boards[mac],
      log,
      ...o,
    });
    const answers: DhcpAnswer[] = [];
    responder.onAnswered((_b, _k, _m, a) => answers.push(a));
    const { port } = await responder.start();
    cleanup.push(() => responder.close());
    const send = (bytes: Buffer) =>
      new Promise<void>((resolve, reject) =>
        client.send(bytes, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())),
      );
    /** The first reply with this xid; all replies before it are in `received` too. */
    const reply = async (xid: number) => {
      await waitUntil(() => received.some((r) => r.xid === xid), `a reply for xid ${xid.toString(16)}`, {
        detail: () => lines.join('\n'),
      });
      return received.find((r) => r.xid === xid)!;
    };
    return { responder, send, reply, received, answers, lines, port };
  }

  const fullMode = (): Partial<DhcpResponderOptions> => ({
    mode: 'full',
    subnet: parseSubnet('10.77.0.0/24') as Ipv4Subnet,
    router: '10.77.0.254',
    leaseSeconds: 900,
  });

  /** A REQUEST as a client sends it after an OFFER: same xid, the address and the server it chose. */
  function request(discover: Buffer, o: { requested?: string; serverId?: string; drop?: number[] }): Buffer {
    const p = decodeDhcpPacket(discover);
    p.options.set(DhcpOption.MESSAGE_TYPE, Buffer.from([DhcpMessageType.REQUEST]));
    for (const code of o.drop ?? []) p.options.delete(code);
    if (o.requested) p.options.set(DhcpOption.REQUESTED_IP, Buffer.from(o.requested.split('.').map(Number)));
    if (o.serverId) p.options.set(DhcpOption.SERVER_ID, Buffer.from(o.serverId.split('.').map(Number)));
    return encodeDhcpPacket(p);
  }

  it("proxy: the Pi 3 ROM's DISCOVER gets a ProxyDHCP OFFER, and the job's listener hears of it", async () => {
    const l = await lab();
    const heard: string[] = [];
    l.responder.onAnswered((board, kind, message) => heard.push(`${board} ${kind} ${message}`));
    await l.send(pi3RomDiscover());
    expectProxyOffer(await l.reply(PI3_ROM_XID), {
      xid: PI3_ROM_XID,
      mac: PI3_ROM_MAC,
      uuid: PI3_ROM_UUID,
      serverIp: '127.0.0.1',
    });
    expect(heard).toEqual(['pi3 pi3-rom OFFER']);
    expect(l.answers).toEqual([
      { board: 'pi3', kind: 'pi3-rom', message: 'OFFER', mac: PI3_ROM_MAC, yiaddr: '0.0.0.0', xid: PI3_ROM_XID },
    ]);
  });

  it('proxy: an unknown MAC, a plain client, a firmware REQUEST get nothing; the next Pi DISCOVER does', async () => {
    const l = await lab();
    await l.send(pi3RomDiscover(UNKNOWN_MAC, 1));
    await l.send(plainDiscover(PLAIN_BOARD_MAC, 2));
    await l.send(request(pi4EepromDiscover(PI4_EEPROM_MAC, 3), { requested: '10.77.0.14', serverId: '10.0.0.1' }));
    await l.send(pi4EepromDiscover());
    expectProxyOffer(await l.reply(PI4_EEPROM_XID), {
      xid: PI4_EEPROM_XID,
      mac: PI4_EEPROM_MAC,
      uuid: PI4_EEPROM_UUID,
      serverIp: '127.0.0.1',
    });
    expect(l.received.map((r) => r.xid)).toEqual([PI4_EEPROM_XID]);
    expect(l.lines.join('\n')).toMatch(
      new RegExp(
        'INFO +"DHCP: not answering a MAC the targets database does not hold.*' +
          'mac=b8:27:eb:99:99:99 message=DISCOVER client="Pi 3 boot ROM"',
      ),
    );
  });

  it('the firmware of a board with no network-boot job gets nothing, in both modes; others still do', async () => {
    for (const mode of ['proxy', 'full'] as const) {
      const noJobs = (mac: string) => boards[mac] && { ...boards[mac], firmwareJob: false };
      const l = await lab({ ...(mode === 'full' ? fullMode() : {}), lookup: noJobs });
      await l.send(pi3RomDiscover(PI3_ROM_MAC, 0x51));
      await l.send(pi4EepromDiscover(PI4_EEPROM_MAC, 0x52));
      if (mode === 'full') {
        // A plain client of the same database is answered: the order of replies proves the two got nothing.
        await l.send(plainDiscover(PLAIN_BOARD_MAC, 0x53));
        await l.reply(0x53);
        expect(l.received.map((r) => r.xid)).toEqual([0x53]);
      } else {
        await l.send(pi3RomDiscover(UNKNOWN_MAC, 0x54));
        // Nothing to wait for in proxy mode: the log line of the second one says both were seen.
        await waitUntil(
          () => l.lines.filter((line) => /no network-boot job/.test(line)).length === 2,
          'both firmware DISCOVERs to be logged as not answered',
        );
        expect(l.received).toEqual([]);
      }
      expect(l.lines.join('\n')).toMatch(/not answering the firmware of a board with no network-boot job.*pi3/);
    }
  });

  it('full: the Pi 4 EEPROM gets its row’s address and the boot options, in the OFFER and in the ACK', async () => {
    const l = await lab(fullMode());
    await l.send(pi4EepromDiscover());
    const offer = await l.reply(PI4_EEPROM_XID);
    expect(offer).toMatchObject({ op: BootOp.REPLY, yiaddr: '10.77.0.14', siaddr: '127.0.0.1', ciaddr: '0.0.0.0' });
    expect([...offer.options.keys()]).toEqual([53, 54, 51, 1, 3, 60, 66, 43, 97]);
    expect(messageTypeOf(offer)).toBe(DhcpMessageType.OFFER);
    expect(offer.options.get(DhcpOption.LEASE_TIME)!.readUInt32BE(0)).toBe(900);
    expect(optionIpv4(offer, DhcpOption.SUBNET_MASK)).toBe('255.255.255.0');
    expect(optionIpv4(offer, DhcpOption.ROUTER)).toBe('10.77.0.254');
    expectFirmwareOptions(offer, '127.0.0.1', PI4_EEPROM_UUID);

    // The EEPROM's REQUEST carries no option 60 (rpi-eeprom #82), here not even 93/94/97: the
    // DISCOVER of the same transaction said what it is.
    l.received.length = 0;
    await l.send(
      request(pi4EepromDiscover(), { requested: '10.77.0.14', serverId: '127.0.0.1', drop: [60, 93, 94, 97] }),
    );
    const ack = await l.reply(PI4_EEPROM_XID);
    expect(messageTypeOf(ack)).toBe(DhcpMessageType.ACK);
    expect(ack.yiaddr).toBe('10.77.0.14');
    expect(optionText(ack, DhcpOption.VENDOR_CLASS)).toBe('PXEClient');
    expect(ack.options.get(DhcpOption.VENDOR_SPECIFIC)).toEqual(PI_OPTION_43);
    expect(l.answers.map((a) => `${a.board} ${a.kind} ${a.message} ${a.yiaddr}`)).toEqual([
      'pi4 pi-eeprom OFFER 10.77.0.14',
      'pi4 pi-eeprom ACK 10.77.0.14',
    ]);
  });

  it('full: a plain client of the database gets a lease without boot options', async () => {
    const l = await lab(fullMode());
    await l.send(plainDiscover(PLAIN_BOARD_MAC, 5));
    const offer = await l.reply(5);
    expect(offer.yiaddr).toBe('10.77.0.30');
    expect([...offer.options.keys()]).toEqual([53, 54, 51, 1, 3]);
  });

  it('full: a REQUEST for another address is NAKed, one for another server is left alone', async () => {
    const l = await lab(fullMode());
    await l.send(request(plainDiscover(PLAIN_BOARD_MAC, 6), { requested: '10.77.0.31', serverId: '127.0.0.1' }));
    const nak = await l.reply(6);
    expect(messageTypeOf(nak)).toBe(DhcpMessageType.NAK);
    expect(nak).toMatchObject({ yiaddr: '0.0.0.0', siaddr: '0.0.0.0', ciaddr: '0.0.0.0' });
    expect([...nak.options.keys()]).toEqual([53, 54]);
    expect(l.answers.at(-1)).toMatchObject({ board: 'plain', message: 'NAK' });

    await l.send(request(plainDiscover(PLAIN_BOARD_MAC, 7), { requested: '10.77.0.30', serverId: '10.77.0.2' }));
    await l.send(request(plainDiscover(PLAIN_BOARD_MAC, 8), { requested: '10.77.0.30' }));
    const ack = await l.reply(8);
    expect(messageTypeOf(ack)).toBe(DhcpMessageType.ACK);
    expect(l.received.map((r) => r.xid)).toEqual([6, 8]);
  });

  it('full: a board whose IP is outside dhcp.subnet gets nothing, and the operator is told', async () => {
    const l = await lab(fullMode());
    await l.send(plainDiscover('02:00:00:00:00:99', 9));
    await l.send(plainDiscover(PLAIN_BOARD_MAC, 10));
    await l.reply(10);
    expect(l.received.map((r) => r.xid)).toEqual([10]);
    expect(l.lines.join('\n')).toMatch(
      new RegExp(
        'WARN +"DHCP: not answering a board whose IP is outside dhcp.subnet" ' +
          'target=elsewhere ip=10.99.0.5 subnet=10.77.0.0/24',
      ),
    );
  });

  it('malformed datagrams are logged once a minute per sender and dropped; the responder keeps answering', async () => {
    const l = await lab();
    const good = pi3RomDiscover();
    await l.send(Buffer.alloc(0));
    await l.send(Buffer.from('not dhcp at all'));
    await l.send(Buffer.concat([good.subarray(0, 240), Buffer.from([60, 200, 1, 2])]));
    await l.send(Buffer.alloc(5000, 0xff));
    await l.send(good);
    await l.reply(PI3_ROM_XID);
    const bad = l.lines.filter((line) => line.includes('malformed'));
    expect(bad).toHaveLength(1);
    expect(bad[0]).toMatch(/from=127.0.0.1 bytes=0 error="packet of 0 bytes is shorter than a DHCP header/);
    expect(l.lines.join('\n')).not.toMatch(/handler failed/);
  });

  it('an unknown MAC is logged once a minute, with bounded memory', async () => {
    let now = 0;
    const l = await lab({ now: () => now });
    const said = () => l.lines.filter((line) => line.includes(`mac=${UNKNOWN_MAC}`)).length;
    let xid = 100;
    const unknownThenKnown = async (mac = UNKNOWN_MAC) => {
      await l.send(pi3RomDiscover(mac, xid++));
      await l.send(pi3RomDiscover(PI3_ROM_MAC, xid));
      await l.reply(xid++);
    };
    await unknownThenKnown();
    await unknownThenKnown();
    expect(said()).toBe(1);
    now = 59_999;
    await unknownThenKnown();
    expect(said()).toBe(1);
    now = 60_000;
    await unknownThenKnown();
    expect(said()).toBe(2);
    // 1024 other MACs later the first is forgotten: the memory stays bounded, the log says it again.
    const hex2 = (n: number) => n.toString(16).padStart(2, '0');
    // Sent 32 at a time, each batch followed by an answered DISCOVER: none is lost to a full socket buffer.
    for (let i = 0; i < 1024; i++) {
      await l.send(pi3RomDiscover(`02:00:00:01:${hex2(i >> 8)}:${hex2(i & 255)}`, 5000 + i));
      if (i % 32 === 31) {
        await l.send(pi3RomDiscover(PI3_ROM_MAC, xid));
        await l.reply(xid++);
      }
    }
    await unknownThenKnown();
    expect(said()).toBe(3);
  });

  it('a throwing listener costs a log line; the reply and the other listeners go on; unsubscribing works', async () => {
    const l = await lab();
    const heard: string[] = [];
    l.responder.onAnswered(() => {
      throw new Error('listener bug');
    });
    const off = l.responder.onAnswered((board) => heard.push(board));
    await l.send(pi3RomDiscover());
    await l.reply(PI3_ROM_XID);
    expect(heard).toEqual(['pi3']);
    expect(l.lines.join('\n')).toMatch(/ERROR "DHCP answer listener failed" error="listener bug"/);
    off();
    await l.send(pi3RomDiscover(PI3_ROM_MAC, 77));
    await l.reply(77);
    expect(heard).toEqual(['pi3']);
  });

  it('a port it cannot bind is a start-up error that names the address, the port and what to do', async () => {
    const holder = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => holder.bind(0, '127.0.0.1', resolve));
    cleanup.push(() => void holder.close());
    const port = holder.address().port;
    const responder = new DhcpResponder({
      mode: 'proxy',
      address: '127.0.0.1',
      port,
      serverIp: '127.0.0.1',
      lookup: () => undefined,
    });
    await expect(responder.start()).rejects.toThrow(
      new RegExp(
        `^DHCP responder cannot bind 127.0.0.1:${port}: bind EADDRINUSE .*another DHCP server on this host holds it`,
      ),
    );
    await responder.close();
  });

  it('full mode without a subnet, or a serverIp that is no address, is refused at construction', () => {
    const lookup = () => undefined;
    expect(() => new DhcpResponder({ mode: 'full', serverIp: '127.0.0.1', lookup })).toThrow(/needs a subnet/);
    expect(() => new DhcpResponder({ mode: 'proxy', serverIp: 'lab-server', lookup })).toThrow(/not an IPv4 address/);
  });
});

describe('in a private network namespace (unshare -rn), on ports 67 and 68', () => {
  const scenario = (o: ScenarioOptions) => runInNetns<ScenarioResult>('test/netboot/dhcp-scenario.ts', o);
  const decoded = (r: ReceivedReply) => decodeDhcpPacket(Buffer.from(r.hex, 'hex'));

  it(
    'proxy: the replayed Pi 3 ROM and Pi 4 EEPROM DISCOVERs get their OFFERs over the veth; ' +
      'the unknown MAC and the plain client nothing',
    async (ctx) => {
      await needNetns(ctx);
      await needCommands(ctx, ['ip', 'nsenter']);
      const { result } = await scenario({ scenario: 'replay' });
      const replies = result.replies!;
      // The first reply is the Pi 3's: the two DISCOVERs sent before it were answered by nothing.
      expect(replies[0]?.xid, result.log.join('\n')).toBe(PI3_ROM_XID);
      expect(replies.some((r) => r.xid === 0x1111_1111 || r.xid === 0x2222_2222)).toBe(false);
      for (const r of replies)
        expect({ from: r.from, fromPort: r.fromPort }).toEqual({ from: SERVER_IP, fromPort: 67 });
      expectProxyOffer(decoded(replies.find((r) => r.xid === PI3_ROM_XID)!), {
        xid: PI3_ROM_XID,
        mac: PI3_ROM_MAC,
        uuid: PI3_ROM_UUID,
        serverIp: SERVER_IP,
      });
      expectProxyOffer(decoded(replies.find((r) => r.xid === PI4_EEPROM_XID)!), {
        xid: PI4_EEPROM_XID,
        mac: PI4_EEPROM_MAC,
        uuid: PI4_EEPROM_UUID,
        serverIp: SERVER_IP,
      });
      expect(result.answers.map((a) => `${a.board} ${a.kind} ${a.message}`)).toEqual([
        'pi3 pi3-rom OFFER',
        'pi4 pi-eeprom OFFER',
        'pi3 pi3-rom OFFER',
      ]);
      expect(result.log.join('\n')).toMatch(/DHCP responder listening" mode=proxy address=0.0.0.0 port=67/);
    },
    90_000,
  );

  it('the dnsmasq alternative answers a listed board alike: the same option 43, next server the agent', async (ctx) => {
    await needNetns(ctx);
    await needCommands(ctx, ['ip', 'nsenter', 'dnsmasq']);
    const { result } = await scenario({ scenario: 'dnsmasq' });
    const log = result.log.join('\n');
    // The Pi 4 asked first and is not in dnsmasq's dhcp-host lines: ignored, so the first reply is the Pi 3's.
    expect(
      result.replies!.map((r) => r.xid),
      log,
    ).toEqual([PI3_ROM_XID]);
    expect(log).toMatch(/PXE\(dh0\) dc:a6:32:a7:ed:89 proxy-ignored/);
    const reply = decoded(result.replies![0]!);
    expect(reply).toMatchObject({ op: BootOp.REPLY, xid: PI3_ROM_XID, yiaddr: '0.0.0.0', siaddr: DNSMASQ_AGENT_IP });
    expect(messageTypeOf(reply)).toBe(DhcpMessageType.OFFER);
    expect(reply.options.get(DhcpOption.VENDOR_SPECIFIC)!.toString('hex')).toBe(PI_OPTION_43.toString('hex'));
    expect(optionText(reply, DhcpOption.VENDOR_CLASS)).toBe('PXEClient');
    expect(reply.options.get(DhcpOption.CLIENT_UUID)).toEqual(PI3_ROM_UUID);
  }, 90_000);

  it("full: busybox udhcpc on the board's end of the veth gets its row's lease", async (ctx) => {
    await needNetns(ctx);
    await needCommands(ctx, ['ip', 'busybox']);
    const { result } = await scenario({ scenario: 'udhcpc', mode: 'full' });
    const u = result.udhcpc!;
    expect(u.code, u.output).toBe(0);
    expect(u.vars).toMatchObject({
      event: 'bound',
      interface: 'dh1',
      ip: BOARDS[UDHCPC_MAC]!.ip,
      subnet: '255.255.255.0',
      router: ROUTER,
      serverid: SERVER_IP,
      siaddr: SERVER_IP,
      lease: String(LEASE_SECONDS),
    });
    expect(result.answers.map((a) => `${a.board} ${a.kind} ${a.message} ${a.yiaddr}`)).toEqual([
      'uboard generic OFFER 10.77.0.20',
      'uboard generic ACK 10.77.0.20',
    ]);
  }, 90_000);

  it('full: udhcpc from a MAC not in the database gets nothing, gives up; the MAC is logged once', async (ctx) => {
    await needNetns(ctx);
    await needCommands(ctx, ['ip', 'busybox']);
    const { result } = await scenario({ scenario: 'udhcpc', mode: 'full', unknown: true });
    const u = result.udhcpc!;
    expect(u.code, u.output).toBe(1);
    expect(u.vars.event).toBe('leasefail');
    expect(u.output).toMatch(/broadcasting discover[\s\S]*broadcasting discover/);
    expect(result.answers).toEqual([]);
    expect(result.log.filter((line) => line.includes(`mac=${UDHCPC_MAC}`))).toHaveLength(1);
  }, 90_000);

  it("proxy: udhcpc of a board in the database gets nothing (its address is the lab server's to give)", async (ctx) => {
    await needNetns(ctx);
    await needCommands(ctx, ['ip', 'busybox']);
    const { result } = await scenario({ scenario: 'udhcpc', mode: 'proxy' });
    expect(result.udhcpc!.code, result.udhcpc!.output).toBe(1);
    expect(result.answers).toEqual([]);
  }, 90_000);
});
