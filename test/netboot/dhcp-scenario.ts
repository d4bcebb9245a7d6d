/**
 * The DHCP responder on the real ports (67/68) in a private network namespace, run by
 * dhcp-responder.test.ts through test/support/netns.ts (`node --import tsx
 * test/netboot/dhcp-scenario.ts '<ScenarioOptions>'`, the result as JSON on stdout).
 *
 * The lab is a veth pair: `dh0` is the agent's interface (10.77.0.1/24, the responder bound to
 * 0.0.0.0:67 and replying from 10.77.0.1), `dh1` the board's, with no address.
 *
 * - `replay`: `proxy` mode. The board is a second namespace at the far end of the veth (`probe`:
 *   a Node socket on 0.0.0.0:68 whose DISCOVERs leave from 0.0.0.0, as the firmware's do). It
 *   broadcasts captured DISCOVERs: first a Pi 3 ROM's from a MAC the database does not hold, then
 *   a plain DISCOVER from a board the database holds, then the Pi 3 ROM's and the Pi 4 EEPROM's
 *   own. The responder handles datagrams in order, so when the first reply is the Pi 3's, the two
 *   before it were dropped, not merely slow.
 * - `dnsmasq`: the README's dnsmasq alternative (dnsmasqProxyConf) answering the same board, for
 *   comparison with the agent's replies (dnsmasq ignores requests from its own host's addresses:
 *   the board's own namespace matters here).
 * - `agent`: the whole agent (startAgent) with `dhcp.mode` proxy, the board's socket in the
 *   agent's namespace.
 * - `udhcpc`: Debian's busybox udhcpc on `dh1` (raw sockets, as on a board) with a script that
 *   prints what it was given: in `full` mode it must get its row's lease; with `dh1`'s MAC missing
 *   from the database (`unknown`), or in `proxy` mode (a plain client is the lab server's to
 *   answer), it must give up.
 */
import dgram from 'node:dgram';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { createLogger, formatRecord } from '../../runner-agent/src/log.js';
import { DhcpResponder, type DhcpAnswer, type DhcpBoard } from '../../runner-agent/src/netboot/dhcp-responder.js';
import { macDir } from '../../src/protocol/tftp-names.js';
import { parseSubnet, type Ipv4Subnet } from '../../runner-agent/src/netboot/ipv4-subnet.js';
import { addVethPair, ip, peerNamespace, printResult, scenarioArgs } from '../support/netns.js';
import { startLab, targetsCsv, type LabBoard } from '../support/lab.js';
import {
  PI3_ROM_MAC,
  PI3_ROM_XID,
  PI4_EEPROM_MAC,
  pi3RomDiscover,
  pi4EepromDiscover,
  plainDiscover,
} from './dhcp-captures.js';

const execFileAsync = promisify(execFile);

export const SERVER_IP = '10.77.0.1';
export const SUBNET = '10.77.0.0/24';
export const ROUTER = '10.77.0.254';
export const LEASE_SECONDS = 600;
export const UNKNOWN_MAC = 'b8:27:eb:99:99:99';
/** A board the database holds that sends an ordinary DISCOVER (an OS's client). */
export const PLAIN_BOARD_MAC = '02:00:00:00:00:30';
/** dh1's MAC in the udhcpc scenarios: a locally administered one, as a test board's. */
export const UDHCPC_MAC = '02:00:00:00:00:20';
export const BOARDS: Record<string, DhcpBoard> = {
  [PI3_ROM_MAC]: { name: 'pi3', ip: '10.77.0.13', firmwareJob: true },
  [PI4_EEPROM_MAC]: { name: 'pi4', ip: '10.77.0.14', firmwareJob: true },
  [PLAIN_BOARD_MAC]: { name: 'plain', ip: '10.77.0.30', firmwareJob: false },
  [UDHCPC_MAC]: { name: 'uboard', ip: '10.77.0.20', firmwareJob: false },
};

export type ScenarioOptions =
  | { scenario: 'replay' }
  | { scenario: 'agent' }
  | { scenario: 'dnsmasq' }
  /** Internal: the board's side of `dnsmasq`, run in the peer namespace. */
  | { scenario: 'probe'; send: string[]; waitFor: number }
  | { scenario: 'udhcpc'; mode: 'proxy' | 'full'; unknown?: boolean };

export interface ReceivedReply {
  xid: number;
  hex: string;
  from: string;
  fromPort: number;
}

export interface ScenarioResult {
  /** replay: every datagram the client port received, in order. */
  replies?: ReceivedReply[];
  /** udhcpc: the script's lines (`event=bound`, `ip=…`), and udhcpc's exit code. */
  udhcpc?: { code: number; vars: Record<string, string>; output: string };
  answers: DhcpAnswer[];
  log: string[];
}

async function startResponder(mode: 'proxy' | 'full', lines: string[], answers: DhcpAnswer[], drop?: string) {
  const log = createLogger({ level: 'debug', sink: (r) => lines.push(formatRecord(r)) });
  const responder = new DhcpResponder({
    mode,
    serverIp: SERVER_IP,
    lookup: (mac) => (mac === drop ? undefined : BOARDS[mac]),
    subnet: parseSubnet(SUBNET) as Ipv4Subnet,
    router: ROUTER,
    leaseSeconds: LEASE_SECONDS,
    log,
  });
  responder.onAnswered((_board, _kind, _message, answer) => answers.push(answer));
  await responder.start();
  return responder;
}

/**
 * The board's side in `replay`, `agent` and `probe`: a socket on 0.0.0.0:68 whose broadcasts
 * leave by `dh1` (a route sends 255.255.255.255 there, as a board's only NIC); `veth` makes the
 * link first.
 */
async function boardSocket(lines: string[], veth = true) {
  if (veth) await addVethPair({ name: 'dh0', peer: 'dh1', address: `${SERVER_IP}/24` });
  await ip('route', 'add', '255.255.255.255/32', 'dev', 'dh1');
  const client = dgram.createSocket('udp4');
  const replies: ReceivedReply[] = [];
  client.on('message', (msg, rinfo) =>
    replies.push({ xid: msg.readUInt32BE(4), hex: msg.toString('hex'), from: rinfo.address, fromPort: rinfo.port }),
  );
  await new Promise<void>((resolve) => client.bind(68, '0.0.0.0', resolve));
  client.setBroadcast(true);
  return {
    replies,
    send: (bytes: Buffer) =>
      new Promise<void>((resolve, reject) =>
        client.send(bytes, 67, '255.255.255.255', (err) => (err ? reject(err) : resolve())),
      ),
    async until(xid: number) {
      const deadline = Date.now() + 20_000;
      while (!replies.some((r) => r.xid === xid)) {
        if (Date.now() > deadline) throw new Error(`no reply for xid ${xid.toString(16)}\n${lines.join('\n')}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    close: () => client.close(),
  };
}

/**
 * The lab link with the board in a namespace of its own at the far end (`dh1`, no address): what
 * it sends leaves from 0.0.0.0, as the firmware's DISCOVERs do, and nothing is looped back to it.
 * `probe` sends datagrams in order and returns every reply until the one for `waitFor`.
 */
async function peerBoard() {
  await addVethPair({ name: 'dh0', peer: 'dh1', address: `${SERVER_IP}/24` });
  const peer = await peerNamespace();
  try {
    await peer.moveLink('dh1');
    await peer.exec('ip', ['link', 'set', 'dh1', 'up']);
  } catch (err) {
    peer.close();
    throw err;
  }
  return {
    async probe(send: Buffer[], waitFor: number): Promise<ReceivedReply[]> {
      const o: ScenarioOptions = { scenario: 'probe', send: send.map((b) => b.toString('hex')), waitFor };
      const args = ['--import', 'tsx', 'test/netboot/dhcp-scenario.ts', JSON.stringify(o)];
      const { stdout } = await peer.exec(process.execPath, args);
      return (JSON.parse(stdout) as ScenarioResult).replies!;
    },
    close: () => peer.close(),
  };
}

async function replay(): Promise<ScenarioResult> {
  const lines: string[] = [];
  const answers: DhcpAnswer[] = [];
  const board = await peerBoard();
  const responder = await startResponder('proxy', lines, answers);
  try {
    const replies = await board.probe(
      [
        pi3RomDiscover(UNKNOWN_MAC, 0x1111_1111),
        plainDiscover(PLAIN_BOARD_MAC, 0x2222_2222),
        pi3RomDiscover(),
        pi4EepromDiscover(),
        // The ROM sends five DISCOVERs when nothing boots: the same board is answered every time.
        pi3RomDiscover(PI3_ROM_MAC, 0x3333_3333),
      ],
      0x3333_3333,
    );
    return { replies, answers, log: lines };
  } finally {
    board.close();
    await responder.close();
  }
}

/**
 * The agent's composition root with `dhcp.mode` proxy on port 67: the targets CSV is the lookup
 * (the Pi 3's row first, the Pi 4's added and reloaded as SIGHUP does), `agent.dhcp.onAnswered`
 * hears each reply, and the stop closes the responder.
 */
async function agent(): Promise<ScenarioResult> {
  const lines: string[] = [];
  const answers: DhcpAnswer[] = [];
  const board = await boardSocket(lines);
  const pi3: LabBoard = { name: 'pi3', mac: PI3_ROM_MAC, reset: 'cmd:true' };
  const pi4: LabBoard = { name: 'pi4', mac: PI4_EEPROM_MAC, reset: 'cmd:true' };
  const lab = await startLab({ boards: [pi3], config: { dhcp: { mode: 'proxy', serverIp: SERVER_IP } } });
  try {
    lab.agent.dhcp!.onAnswered((_b, _k, _m, answer) => answers.push(answer));
    // The agent answers a board's firmware only while a network-boot job of that board is staged.
    for (const [b, ip] of [
      [pi3, '10.77.0.13'],
      [pi4, '10.77.0.14'],
    ] as const)
      await lab.agent.files.stage(
        macDir(b.mac),
        {
          jobId: `dhcp-${b.name}`,
          targetIp: ip,
          files: new Map(),
          onRead: () => {},
          onProgress: () => {},
          onBeacon: () => {},
          firmware: { folder: macDir(b.mac), files: new Map(), blksize: 512 },
        },
        {},
      );
    await board.send(pi4EepromDiscover());
    await board.send(pi3RomDiscover());
    await board.until(PI3_ROM_XID);
    await writeFile(path.join(lab.dir, 'targets.csv'), targetsCsv([pi3, pi4]));
    await lab.agent.reloadTargets();
    await board.send(pi4EepromDiscover(PI4_EEPROM_MAC, 0x4444_4444));
    await board.until(0x4444_4444);
  } finally {
    board.close();
    await lab.stop();
    lines.push(...lab.logs.map(formatRecord));
  }
  return { replies: board.replies, answers, log: lines };
}

/**
 * The README's dnsmasq alternative for a lab that already runs dnsmasq: ProxyDHCP beside the
 * lab's DHCP server, only for the boards named (one dhcp-host line each, from targets.csv), the
 * agent as their TFTP server (next-server); dnsmasq serves no TFTP and no DNS.
 */
export function dnsmasqProxyConf(o: { iface: string; network: string; agentIp: string; macs: string[] }): string {
  return [
    'port=0',
    `interface=${o.iface}`,
    `dhcp-range=${o.network},proxy`,
    ...o.macs.map((mac) => `dhcp-host=${mac},set:rpiflash`),
    'pxe-service=tag:rpiflash,0,"Raspberry Pi Boot   "',
    `dhcp-boot=tag:rpiflash,bootcode.bin,,${o.agentIp}`,
    'dhcp-ignore=tag:!rpiflash',
    '',
  ].join('\n');
}

/** The agent's address in the dnsmasq scenario: another host than dnsmasq's, to show next-server is the agent. */
export const DNSMASQ_AGENT_IP = '10.77.0.2';

async function dnsmasq(): Promise<ScenarioResult> {
  const board = await peerBoard();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dnsmasq-'));
  const lines: string[] = [];
  let server: ChildProcess | undefined;
  try {
    const conf = path.join(dir, 'dnsmasq.conf');
    // The Pi 3 is in the database; the Pi 4 is not, and must get nothing.
    await writeFile(
      conf,
      dnsmasqProxyConf({ iface: 'dh0', network: '10.77.0.0', agentIp: DNSMASQ_AGENT_IP, macs: [PI3_ROM_MAC] }),
    );
    const args = [
      '--no-daemon',
      `--conf-file=${conf}`,
      `--pid-file=${path.join(dir, 'pid')}`,
      `--dhcp-leasefile=${path.join(dir, 'leases')}`,
      '--log-facility=-',
      '--log-dhcp',
      // The namespace's root is the test's own user: nobody else to drop privileges to.
      '--user=root',
      '--group=root',
    ];
    const started = spawn('dnsmasq', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    server = started;
    started.stderr.setEncoding('utf8');
    started.stderr.on('data', (chunk: string) => lines.push(...chunk.split('\n').filter(Boolean)));
    const deadline = Date.now() + 20_000;
    while (!lines.some((l) => l.includes('DHCP, proxy on subnet'))) {
      if (started.exitCode !== null || Date.now() > deadline)
        throw new Error(`dnsmasq did not start:\n${lines.join('\n')}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const replies = await board.probe([pi4EepromDiscover(), pi3RomDiscover()], PI3_ROM_XID);
    return { replies, answers: [], log: lines };
  } finally {
    server?.kill();
    board.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function probe(send: string[], waitFor: number): Promise<ScenarioResult> {
  const lines: string[] = [];
  const board = await boardSocket(lines, false);
  try {
    for (const hex of send) await board.send(Buffer.from(hex, 'hex'));
    await board.until(waitFor);
  } finally {
    board.close();
  }
  return { replies: board.replies, answers: [], log: lines };
}

/** Prints the variables udhcpc hands its script, one `name=value` a line. */
const PRINT_SCRIPT = `#!/bin/sh
echo "event=$1"
for v in interface ip subnet mask router serverid lease siaddr sname boot_file tftp broadcast; do
  eval "val=\\$$v"
  [ -n "$val" ] && echo "$v=$val"
done
exit 0
`;

async function udhcpc(mode: 'proxy' | 'full', unknown: boolean): Promise<ScenarioResult> {
  await addVethPair({ name: 'dh0', peer: 'dh1', address: `${SERVER_IP}/24`, peerMac: UDHCPC_MAC });
  const lines: string[] = [];
  const answers: DhcpAnswer[] = [];
  const responder = await startResponder(mode, lines, answers, unknown ? UDHCPC_MAC : undefined);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'udhcpc-'));
  const script = path.join(dir, 'print.sh');
  await writeFile(script, PRINT_SCRIPT);
  await chmod(script, 0o755);
  let code = 0;
  let output: string;
  try {
    // -n: give up when no lease comes (after -t DISCOVERs, -T s apart); -q: quit once bound.
    const r = await execFileAsync(
      'busybox',
      ['udhcpc', '-f', '-i', 'dh1', '-n', '-q', '-s', script, '-t', mode === 'full' && !unknown ? '5' : '2', '-T', '1'],
      { timeout: 30_000 },
    ).catch((err: Error & { code?: number; stdout?: string; stderr?: string }) => {
      code = typeof err.code === 'number' ? err.code : -1;
      return { stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
    });
    output = `${r.stdout}${r.stderr}`;
  } finally {
    await responder.close();
    await rm(dir, { recursive: true, force: true });
  }
  const vars: Record<string, string> = {};
  for (const line of output.split('\n')) {
    const m = /^([a-z_]+)=(.*)$/.exec(line);
    if (m) vars[m[1]!] = m[2]!;
  }
  return { udhcpc: { code, vars, output }, answers, log: lines };
}

// Run only as the namespace's command; the test imports the constants above.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const options = scenarioArgs<ScenarioOptions>();
  const run =
    options.scenario === 'replay'
      ? replay()
      : options.scenario === 'agent'
        ? agent()
        : options.scenario === 'dnsmasq'
          ? dnsmasq()
          : options.scenario === 'probe'
            ? probe(options.send, options.waitFor)
            : udhcpc(options.mode, options.unknown ?? false);
  run.then(printResult, (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}
