/**
 * The composition root: one place wires config, logger, targets database, image store, TFTP
 * server, WebSocket server, reset lines and (when the database has `sim` targets) the simulated
 * lab. Tests and the demo build the same graph; `stop()` tears it down in a fixed order.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { AgentConfig } from './config.js';
import { createLogger, type Logger } from './log.js';
import { loadTargets, type Target } from './targets/database.js';
import { ImageStore } from './store/image-store.js';
import { TftpServer } from './tftp/server.js';
import { tftpGet } from './tftp/client.js';
import { BoardFiles } from './staging/board-files.js';
import { macDir } from '../../src/protocol/tftp-names.js';
import { AgentService } from './agent-service.js';
import { AGENT_VERSION, WsServer } from './ws/server.js';
import { Dashboard } from './dashboard/dashboard.js';
import { LabMetrics } from './metrics/lab-metrics.js';
import { metricsRoute } from './metrics/metrics-route.js';
import { SimBoard, SimLab } from './sim/index.js';
import { builtinLayouts, type LayoutRegistry } from './layouts/registry.js';
import { BoardStates } from './lab/board-states.js';
import { DhcpResponder } from './netboot/dhcp-responder.js';
import { removeOverlayLeftovers } from './netboot/nbd-export.js';
import { isHostOf, parseSubnet, type Ipv4Subnet } from './netboot/ipv4-subnet.js';

export interface RunningAgent {
  config: AgentConfig;
  log: Logger;
  /** Where clients connect, e.g. ws://127.0.0.1:40123 */
  url: string;
  /** The same port over HTTP(S): the dashboard is at `${httpUrl}/dashboard/`, metrics at `/metrics`. */
  httpUrl: string;
  /** Present when `dashboard.enabled`. */
  dashboard?: Dashboard;
  /** Present when `metrics.enabled`. */
  metrics?: LabMetrics;
  tftp: { address: string; port: number };
  /**
   * The DHCP responder, when `dhcp.mode` is not `off`. `dhcp.onAnswered((board, kind, message) =>
   * …)` tells each reply it sends (returns the unsubscribe): how a network-boot job sees that its
   * board's firmware asked.
   */
  dhcp?: DhcpResponder;
  service: AgentService;
  store: ImageStore;
  files: BoardFiles;
  simLab?: SimLab;
  targets(): readonly Target[];
  /** Re-read the targets CSV; on any problem the old database stays and the error is thrown. */
  reloadTargets(): Promise<void>;
  /** Orderly shutdown: refuse new work, end jobs, release leases, delete staged folders, close sockets. */
  stop(): Promise<void>;
}

export interface StartOptions {
  log?: Logger;
  /** The layouts jobs may use, by name; the built-in ones unless given (tests add their own). */
  layouts?: LayoutRegistry;
  /** How long a new WebSocket connection may take to send its HTTP request head (10 s unless given). */
  headersTimeoutMs?: number;
  /** Test-only hooks passed to the TFTP server (e.g. corrupt a block once). */
  tftpFaults?: ConstructorParameters<typeof TftpServer>[0]['faults'];
}

export async function startAgent(config: AgentConfig, o: StartOptions = {}): Promise<RunningAgent> {
  const log = o.log ?? createLogger({ level: config.logLevel });
  const layouts = o.layouts ?? builtinLayouts;
  // Full-mode DHCP gives each board its row's IP: the rows must lie in the subnet it serves.
  const dhcpSubnet = config.dhcp.mode === 'full' ? (parseSubnet(config.dhcp.subnet!) as Ipv4Subnet) : undefined;
  const checkDhcpRows = (list: readonly Target[]) => {
    const outside = dhcpSubnet ? list.filter((t) => !isHostOf(dhcpSubnet, t.ip)) : [];
    if (outside.length)
      throw new Error(
        `dhcp.subnet ${dhcpSubnet!.cidr} must hold every target's IP (dhcp.mode full hands them out): ` +
          outside.map((t) => `${t.name} (${t.ip}, ${t.source.file}:${t.source.line})`).join(', '),
      );
  };
  const targetsOptions = { layouts: Object.keys(layouts), defaultLayout: config.defaultLayout };
  let targets = await loadTargets(config.targets, targetsOptions);
  checkDhcpRows(targets);
  log.info('targets loaded', { file: config.targets, count: targets.length });

  await mkdir(config.stateDir, { recursive: true });
  const store = new ImageStore({
    dir: path.join(config.stateDir, 'store'),
    maxBytes: config.store.maxBytes,
    log: log.child({ part: 'store' }),
  });
  await store.init();

  const files = new BoardFiles({
    root: config.tftp.root,
    log: log.child({ part: 'tftp' }),
    checkClientIp: config.tftp.checkClientIp,
  });
  const leftovers = await files.removeLeftovers();
  if (leftovers.length) log.warn('removed target folders left by an earlier run', { folders: leftovers.join(',') });
  const overlays = await removeOverlayLeftovers(config.stateDir);
  if (overlays.length) log.warn('removed NBD overlays left by an earlier run', { jobs: overlays.join(',') });

  // Before the TFTP server, so a port it cannot bind stops the start with nothing else listening.
  let dhcp: DhcpResponder | undefined;
  if (config.dhcp.mode !== 'off') {
    dhcp = new DhcpResponder({
      mode: config.dhcp.mode,
      address: config.dhcp.address,
      port: config.dhcp.port,
      serverIp: config.dhcp.serverIp!,
      ...(dhcpSubnet ? { subnet: dhcpSubnet } : {}),
      ...(config.dhcp.router ? { router: config.dhcp.router } : {}),
      leaseSeconds: config.dhcp.leaseSeconds,
      lookup: (mac) => {
        const t = targets.find((row) => row.mac === mac);
        return t && { name: t.name, ip: t.ip, firmwareJob: files.servesFirmware(macDir(t.mac)) };
      },
      log: log.child({ part: 'dhcp' }),
    });
    try {
      await dhcp.start();
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  // Bytes the boards acknowledged, for the metrics; the lab feed that counts them exists only below.
  let tftpServed: (bytes: number) => void = () => {};
  const tftpLog = log.child({ part: 'tftp' });
  const tftpServer = new TftpServer({
    address: config.tftp.address,
    port: config.tftp.port,
    resolver: files,
    log: tftpLog,
    maxBlksize: config.tftp.maxBlksize,
    maxWindowsize: config.tftp.maxWindowsize,
    maxTransfersPerClient: config.tftp.maxTransfersPerClient,
    maxTransfers: config.tftp.maxTransfers,
    maxTimeout: config.tftp.maxTimeout,
    ...(o.tftpFaults ? { faults: o.tftpFaults } : {}),
    // The server logs each transfer itself; the job that owns the file reports it in its story.
    onTransferEnd: (t) => {
      if (t.kind === 'read') tftpServed(t.bytes);
      files.transferEnded(t);
    },
    onProgress: (p) => files.transferProgress(p),
    // The Pi 3 ROM's one-block start.elf probe is how it asks whether its folder exists.
    expectedEnd: (t) => files.isFirmwareProbe(t),
  });
  const tftpAddress = await tftpServer.listen();
  log.info('tftp listening', { address: tftpAddress.address, port: tftpAddress.port, root: config.tftp.root });

  let simLab: SimLab | undefined;
  const buildSimLab = async (list: readonly Target[]) => {
    const sims = list.filter((t) => t.reset.kind === 'sim');
    await simLab?.close();
    simLab = undefined;
    if (!sims.length) return;
    const lab = new SimLab();
    const host = tftpAddress.address === '0.0.0.0' ? '127.0.0.1' : tftpAddress.address;
    await mkdir(path.join(config.stateDir, 'sim'), { recursive: true });
    for (const t of sims) {
      lab.add(
        new SimBoard({
          name: t.name,
          mac: t.mac,
          ip: t.ip,
          bootPort: config.sim.bootPort,
          cardPath: path.join(config.stateDir, 'sim', `${t.name}.card`),
          cardSize: config.sim.cardSize,
          faults: t.reset.kind === 'sim' ? t.reset.options : [],
          log: log.child({ target: t.name, part: 'sim-board' }),
          // Each simulated board sends from its own address, as a real one does.
          fetch: (p, opts) => tftpGet({ host, port: tftpAddress.port, path: p, localAddress: t.ip, ...opts }),
        }),
      );
    }
    simLab = lab;
    log.info('simulated lab ready', { boards: sims.map((t) => t.name).join(',') });
  };
  await buildSimLab(targets);

  // An unreadable state file puts every board in maintenance (lab/board-states.ts says why) rather
  // than stopping the agent, which systemd would only restart into the same failure.
  const opened = await BoardStates.open({
    file: path.join(config.stateDir, 'boards.json'),
    names: targets.map((t) => t.name),
    onCorrupt: 'maintenance',
  });
  if (opened.setAside)
    log.error('the board-state file was unreadable: every board is in maintenance until an operator resumes it', {
      keptAs: opened.setAside,
    });
  if (opened.interrupted.length)
    log.warn('boards were mid-job when the agent stopped; their jobs are gone and they are idle again', {
      boards: opened.interrupted.join(','),
    });
  const boards = opened.states;

  const service = new AgentService({
    config,
    log,
    boards,
    store,
    files,
    tftpPort: tftpAddress.port,
    targets: () => targets,
    layouts,
    resetContext: {
      pulseMs: config.flash.resetPulseMs,
      sim: {
        reset: (name: string) =>
          simLab ? simLab.reset(name) : Promise.reject(new Error('no simulated lab is running')),
      },
    },
  });

  tftpServed = (bytes) => service.lab.tftpServed(bytes);
  await service.lab.loadRecords(path.join(config.stateDir, 'jobs'));
  const dashboard = config.dashboard.enabled
    ? new Dashboard({
        lab: service.lab,
        log: log.child({ part: 'dashboard' }),
        recordDir: path.join(config.stateDir, 'jobs'),
        tokens: [config.token, ...(config.dashboard.token ? [config.dashboard.token] : [])],
        secure: Boolean(config.listen.tls),
        maxClients: config.dashboard.maxClients,
        runLinkBase: config.dashboard.runLinkBase,
        agentVersion: AGENT_VERSION,
      })
    : undefined;
  const metrics = config.metrics.enabled ? new LabMetrics(service.lab) : undefined;
  const metricsHttp = metrics
    ? metricsRoute(metrics, [config.token, ...(config.metrics.token ? [config.metrics.token] : [])])
    : undefined;

  const ws = await WsServer.create({
    host: config.listen.host,
    port: config.listen.port,
    ...(config.listen.tls ? { tls: config.listen.tls } : {}),
    token: config.token,
    log,
    handler: service,
    graceMs: config.timeouts.leaseGrace * 1000,
    agentName: config.name,
    maxSendBuffer: config.listen.maxSendBuffer,
    ...(o.headersTimeoutMs !== undefined ? { headersTimeoutMs: o.headersTimeoutMs } : {}),
    routes: (p) => (p === '/metrics' ? metricsHttp : dashboard?.route(p)),
  });
  const wsAddress = await ws.listen();
  const host = wsAddress.address.includes(':') ? `[${wsAddress.address}]` : wsAddress.address;
  const url = `${config.listen.tls ? 'wss' : 'ws'}://${host === '0.0.0.0' ? '127.0.0.1' : host}:${wsAddress.port}`;
  const httpUrl = url.replace(/^ws/, 'http');
  log.info('agent listening', { url, tls: Boolean(config.listen.tls) });
  if (dashboard) log.info('dashboard at', { url: `${httpUrl}/dashboard/` });
  if (metrics) log.info('metrics at', { url: `${httpUrl}/metrics` });

  let stopping: Promise<void> | undefined;
  return {
    config,
    log,
    url,
    httpUrl,
    ...(dashboard ? { dashboard } : {}),
    ...(metrics ? { metrics } : {}),
    tftp: tftpAddress,
    ...(dhcp ? { dhcp } : {}),
    service,
    store,
    files,
    get simLab() {
      return simLab;
    },
    targets: () => targets,
    async reloadTargets() {
      const next = await loadTargets(config.targets, targetsOptions);
      checkDhcpRows(next);
      targets = next;
      await buildSimLab(next);
      service.targetsChanged();
      log.info('targets reloaded', { file: config.targets, count: next.length });
    },
    stop() {
      // One line per step, as it begins: an operator (and the CLI test) can see where a stop hangs.
      stopping ??= (async () => {
        log.info('stopping: refusing new work');
        ws.stopListening();
        log.info('stopping: ending jobs and leases', { jobs: service.activeJobs() });
        await service.shutdown();
        log.info('stopping: closing client connections');
        dashboard?.close();
        await ws.close();
        metrics?.close();
        if (dhcp) log.info('stopping: closing the DHCP responder');
        await dhcp?.close();
        log.info('stopping: closing the TFTP server');
        await tftpServer.close();
        if (simLab) log.info('stopping: closing the simulated lab');
        await simLab?.close();
        log.info('stopping: deleting staged target folders');
        await files.removeLeftovers();
        log.info('stopping: writing the board states');
        await boards
          .flush()
          .catch((err: Error) => log.error('could not write the board states', { error: err.message }));
        log.info('stopping: closing the image store');
        await store.close();
        log.info('stopped');
      })();
      return stopping;
    },
  };
}
