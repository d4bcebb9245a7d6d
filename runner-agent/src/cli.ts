/**
 * `rpi-flash-agent --config FILE [flags]`: start the lab agent. Flags override the file.
 * SIGTERM/SIGINT stop it in order (a second signal exits at once); SIGHUP reloads the targets.
 * A last-resort guard catches what no handler did: fatal during start-up, logged once serving.
 */
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { ConfigError, loadConfig } from './config.js';
import { startAgent, type RunningAgent } from './agent.js';
import { createLogger, type Logger } from './log.js';
import { AGENT_VERSION } from './ws/server.js';

export const HELP = `rpi-flash-agent ${AGENT_VERSION} — flashes Raspberry Pi boards in a lab
for the rpi-flash GitHub Action

Usage:
  rpi-flash-agent --config FILE [options]
  rpi-flash-agent make-card --image FILE --model MODEL --out card.img|/dev/sdX
                            (a board's first card; make-card --help)
  rpi-flash-agent board TARGET maintenance|resume|health|status, or board list
                            (a board's state, on the running agent; board --help)
  rpi-flash-agent eeprom-config TARGET
                            (a Pi 4's EEPROM settings for network boot; eeprom-config --help)

Options (each overrides the same setting in the config file):
  -c, --config FILE         JSON configuration file (required)
      --listen HOST:PORT    WebSocket listen address              (listen.host/port, default 0.0.0.0:8443)
      --tls-cert FILE       TLS certificate (PEM); with --tls-key  (listen.tls.cert)
      --tls-key FILE        TLS private key (PEM)                 (listen.tls.key)
      --token-file FILE     file holding the client token         (tokenFile)
      --targets FILE        targets database, CSV                  (targets)
      --tftp-root DIR       TFTP root; target folders live here    (tftp.root, default /srv/tftp)
      --tftp-address ADDR   TFTP listen address                    (tftp.address, default 0.0.0.0)
      --tftp-port PORT      TFTP port                              (tftp.port, default 69)
      --state-dir DIR       image store and state                  (stateDir, default /var/lib/rpi-flash)
      --boot-check SPEC     default boot check: tcp:22, tcp:HOST:PORT, none (bootCheck)
      --log-level LEVEL     debug, info, warn, error               (logLevel, default info)
      --allow-root          run even as root (containers and CI only; a lab server should not)
      --check               validate the configuration and targets, print a summary, exit
  -h, --help                this help
  -V, --version             print the version

Signals: SIGTERM/SIGINT stop in order (a second one exits at once); SIGHUP reloads the targets CSV.
Docs: README.md (install on a lab server, wiring, error codes).
`;

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  listen: { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'token-file': { type: 'string' },
  targets: { type: 'string' },
  'tftp-root': { type: 'string' },
  'tftp-address': { type: 'string' },
  'tftp-port': { type: 'string' },
  'state-dir': { type: 'string' },
  'boot-check': { type: 'string' },
  'log-level': { type: 'string' },
  'allow-root': { type: 'boolean' },
  check: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const;

export interface ParsedArgs {
  config?: string;
  overrides: Record<string, unknown>;
  help: boolean;
  version: boolean;
  allowRoot: boolean;
  check: boolean;
}

/** Turn argv into a config path plus dotted overrides; throws with every problem at once. */
export function parseCliArgs(argv: string[]): ParsedArgs {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new ConfigError([`${(err as Error).message} (see --help)`]);
  }
  const problems: string[] = [];
  const overrides: Record<string, unknown> = {};
  const port = (flag: string, v: string) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > 65535) problems.push(`--${flag}: "${v}" is not a port number`);
    return n;
  };
  if (typeof values.listen === 'string') {
    const m = /^(.*):(\d+)$/.exec(values.listen);
    if (!m) problems.push(`--listen: expected HOST:PORT, got "${values.listen}"`);
    else {
      overrides['listen.host'] = m[1]!.replace(/^\[(.*)\]$/, '$1');
      overrides['listen.port'] = port('listen', m[2]!);
    }
  }
  const direct: Record<string, string> = {
    'tls-cert': 'listen.tls.cert',
    'tls-key': 'listen.tls.key',
    'token-file': 'tokenFile',
    targets: 'targets',
    'tftp-root': 'tftp.root',
    'tftp-address': 'tftp.address',
    'state-dir': 'stateDir',
    'boot-check': 'bootCheck',
    'log-level': 'logLevel',
  };
  for (const [flag, key] of Object.entries(direct)) if (typeof values[flag] === 'string') overrides[key] = values[flag];
  if (typeof values['tftp-port'] === 'string') overrides['tftp.port'] = port('tftp-port', values['tftp-port']);
  if (!values.help && !values.version && typeof values.config !== 'string')
    problems.push('--config FILE is required (see --help)');
  if (problems.length) throw new ConfigError(problems);
  return {
    ...(typeof values.config === 'string' ? { config: values.config } : {}),
    overrides,
    help: Boolean(values.help),
    version: Boolean(values.version),
    allowRoot: Boolean(values['allow-root']),
    check: Boolean(values.check),
  };
}

/**
 * The last resort for an exception or rejection no handler caught. During start-up it is a setup or
 * programming error: the stack goes to stderr and the agent exits 1, as for any other start-up
 * failure. Once the agent serves, one peer's or one job's failure must not end every job in flight
 * (systemd would restart the agent and kill them all): it is logged with its stack and the agent
 * keeps serving.
 */
export class LastResortGuard {
  private log: Logger | undefined;

  install(): void {
    process.on('uncaughtException', (err, origin) => this.caught(err, origin));
    process.on('unhandledRejection', (reason) => this.caught(reason, 'unhandledRejection'));
  }

  /** Start-up is over: from now on an uncaught error is logged to `log` and the agent goes on. */
  serving(log: Logger): void {
    this.log = log;
  }

  private caught(err: unknown, origin: string): void {
    const stack = (err instanceof Error ? err.stack : undefined) ?? String(err);
    if (!this.log) {
      process.stderr.write(`rpi-flash-agent: unexpected error during start-up (${origin}): ${stack}\n`);
      process.exit(1);
    }
    this.log.error('unexpected error; the agent keeps serving', { origin, error: stack });
  }
}

export async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'make-card') return (await import('./make-card.js')).makeCardMain(argv.slice(1));
  if (argv[0] === 'board') return (await import('./board-command.js')).boardMain(argv.slice(1));
  if (argv[0] === 'eeprom-config') return (await import('./eeprom-config.js')).eepromConfigMain(argv.slice(1));
  let args: ParsedArgs;
  try {
    args = parseCliArgs(argv);
  } catch (err) {
    process.stderr.write(`rpi-flash-agent: ${(err as Error).message}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (args.version) {
    process.stdout.write(`${AGENT_VERSION}\n`);
    return 0;
  }
  if (process.getuid?.() === 0 && !args.allowRoot) {
    process.stderr.write(
      'rpi-flash-agent: refusing to run as root. Run it as its own user with CAP_NET_BIND_SERVICE and the gpio ' +
        'group (see runner-agent/rpi-flash-agent.service); --allow-root exists for containers and CI.\n',
    );
    return 2;
  }
  const guard = new LastResortGuard();
  if (!args.check) guard.install();
  let config;
  try {
    config = await loadConfig(args.config!, args.overrides);
  } catch (err) {
    process.stderr.write(`rpi-flash-agent: ${(err as Error).message}\n`);
    return 2;
  }
  const log = createLogger({ level: config.logLevel });
  if (args.check) {
    const { loadTargets } = await import('./targets/database.js');
    try {
      const targets = await loadTargets(config.targets, { defaultLayout: config.defaultLayout });
      if (!(await import('./lab-check.js')).reportLabCheck(config, targets, process.stderr)) return 2;
      // A warning, not a refusal: the operator may compile onoff's native part after the check.
      const gpio = targets.filter((t) => t.reset.kind === 'gpio').map((t) => t.name);
      if (gpio.length) {
        const { loadOnoff } = await import('./reset/gpio-sysfs.js');
        await loadOnoff().catch((err: Error) =>
          process.stderr.write(`rpi-flash-agent: warning: ${gpio.join(', ')}: ${err.message}\n`),
        );
      }
      process.stdout.write(
        `configuration OK; ${targets.length} target(s): ` +
          `${targets.map((t) => `${t.name} (${t.mac}, ${t.ip}, ${t.resetText})`).join(', ')}\n`,
      );
      return 0;
    } catch (err) {
      process.stderr.write(`rpi-flash-agent: ${(err as Error).message}\n`);
      return 2;
    }
  }
  // The handlers go in before the agent starts: a signal during start-up (a reload or a stop sent
  // as soon as the unit is up) must not meet Node's default action, which ends the process. What
  // comes during start-up is acted on once the agent serves.
  let agent: RunningAgent | undefined;
  let exit: ((code: number) => void) | undefined;
  let stopAsked = false;
  let reloadAsked = false;
  let signals = 0;
  const shutDown = (running: RunningAgent, resolve: (code: number) => void) =>
    running.stop().then(
      () => resolve(0),
      (err: Error) => {
        log.error('shutdown failed', { error: err.message });
        resolve(1);
      },
    );
  const stop = (signal: string) => {
    signals += 1;
    if (signals > 1) {
      log.warn('second signal: exiting at once', { signal });
      process.exit(130);
    }
    log.info('shutting down', { signal });
    if (agent && exit) void shutDown(agent, exit);
    else stopAsked = true;
  };
  const reload = () => {
    if (!agent) {
      reloadAsked = true;
      return;
    }
    agent
      .reloadTargets()
      .catch((err: Error) => log.error('targets reload failed; keeping the previous database', { error: err.message }));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', reload);
  try {
    agent = await startAgent(config, { log });
  } catch (err) {
    log.error('cannot start', { error: (err as Error).message });
    return 1;
  }
  guard.serving(log);
  const running = agent;
  return new Promise<number>((resolve) => {
    exit = resolve;
    if (stopAsked) void shutDown(running, resolve);
    else if (reloadAsked) reload();
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
