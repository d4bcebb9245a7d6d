/**
 * An IPv4 subnet written as CIDR (`192.168.7.0/24`): what the config's `dhcp.subnet` names and
 * what the DHCP responder's `full` mode hands out addresses in.
 */
import { ipv4Bytes } from './dhcp-packet.js';

export interface Ipv4Subnet {
  /** The network address, host bits zero: `192.168.7.0`. */
  network: string;
  prefix: number;
  /** Dotted mask (option 1): `255.255.255.0`. */
  mask: string;
  /** As written, for messages: `192.168.7.0/24`. */
  cidr: string;
}

function toNumber(ip: string): number | undefined {
  const b = ipv4Bytes(ip);
  return b ? b.readUInt32BE(0) : undefined;
}

function toDotted(n: number): string {
  return [24, 16, 8, 0].map((shift) => (n >>> shift) & 0xff).join('.');
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffff_ffff << (32 - prefix)) >>> 0;
}

/**
 * `192.168.7.0/24` → the subnet; a reason when it is not one. Prefixes /8 to /30 only: shorter is
 * no lab network, longer leaves no room for a server and a board. Host bits must be zero, so a
 * typo (`192.168.7.1/24` meant as a router) is caught rather than silently widened.
 */
export function parseSubnet(cidr: string): Ipv4Subnet | { problem: string } {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(cidr.trim());
  const address = m ? toNumber(m[1]!) : undefined;
  if (!m || address === undefined) return { problem: `"${cidr}" is not a subnet like 192.168.7.0/24` };
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 30) return { problem: `"${cidr}": the prefix must be from /8 to /30` };
  const mask = maskOf(prefix);
  if ((address & ~mask) >>> 0 !== 0)
    return { problem: `"${cidr}" has host bits set (the network is ${toDotted((address & mask) >>> 0)}/${prefix})` };
  return { network: toDotted(address), prefix, mask: toDotted(mask), cidr: `${toDotted(address)}/${prefix}` };
}

/** A host address of the subnet: inside it, and neither its network nor its broadcast address. */
export function isHostOf(subnet: Ipv4Subnet, ip: string): boolean {
  const n = toNumber(ip);
  const network = toNumber(subnet.network)!;
  const mask = maskOf(subnet.prefix);
  if (n === undefined || (n & mask) >>> 0 !== network) return false;
  const host = (n & ~mask) >>> 0;
  return host !== 0 && host !== ~mask >>> 0;
}
