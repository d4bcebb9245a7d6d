/**
 * `rpi-flash-agent board`: the lab operator's word on a board, from the lab server's shell, to the
 * agent that runs there. It reads the agent's own config (the listen address and the token) and
 * speaks the agent's protocol over its WebSocket (`board` → `board-status`), so it needs no channel
 * of its own and no root: whoever can read the token may use it, as whoever can read it may flash
 * the boards (`sudo -u rpi-flash rpi-flash-agent board …` on a packaged install).
 */
import { parseArgs } from 'node:util';
import { readFile } from 'node:fs/promises';
import { codeOf, messageOf } from '../../src/protocol/errors.js';
import { connectAgent } from '../../src/protocol/client.js';
import { BOARD_ACTIONS, type BoardAction, type BoardStatusInfo } from '../../src/protocol/messages.js';
import { loadConfig, type AgentConfig } from './config.js';

export const DEFAULT_CONFIG = '/etc/rpi-flash/config.json';

/** Exit codes, documented in the README and the help. */
export const BOARD_EXIT = {
  /** Done; for `health`, the check passed. */
  ok: 0,
  /** `health` ran and failed: the board is unhealthy (or stays in maintenance). */
  unhealthy: 1,
  /** Bad arguments or an unreadable config. */
  usage: 2,
  /** The agent could not be reached, or refused the request (its code is printed). */
  refused: 3,
} as const;

export const BOARD_HELP = `\
rpi-flash-agent board — take a board out of service, bring it back, check it, or list the boards

Usage:
  rpi-flash-agent board [options] TARGET maintenance [--reason TEXT]
  rpi-flash-agent board [options] TARGET resume
  rpi-flash-agent board [options] TARGET health
  rpi-flash-agent board [options] TARGET status
  rpi-flash-agent board [options] list

  maintenance  refuse new jobs on the board at once (BOARD_IN_MAINTENANCE); a running job finishes
  resume       back to idle from maintenance or unhealthy, its failure count cleared
  health       flash and boot the config's health.image now (waits its turn for the board) and
               wait for the result: passed = idle, failed = unhealthy (a board in maintenance stays)
  status, list one board's state, or every board's

TARGET is a name, MAC or IP from the targets database. The command talks to the running agent
over its WebSocket with the config's token; it needs read access to the config and token file
(run it as the agent's user: sudo -u rpi-flash rpi-flash-agent board …), never root.

Options:
  -c, --config FILE   the agent's config (default ${DEFAULT_CONFIG})
      --url URL       the agent's address (default from listen in the config, on this host)
      --ca FILE       CA certificate (PEM) for a wss:// agent (default: the config's listen.tls.cert)
      --reason TEXT   why, kept in the board's status (maintenance)
      --json          print the answer as JSON
  -h, --help          this help

Exit codes: 0 done (health: passed), 1 health failed, 2 bad arguments or config,
3 the agent could not be reached or refused (its code is printed).
`;

export interface BoardIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

/** The agent's URL on this host from its listen settings: a wildcard address is reached on loopback. */
export function localUrl(config: AgentConfig): string {
  const { host, port, tls } = config.listen;
  const reach = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `${tls ? 'wss' : 'ws'}://${reach.includes(':') ? `[${reach}]` : reach}:${port}`;
}

function when(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** One board on one line: name, state, since, failures, last health, reason. */
export function formatStatus(s: BoardStatusInfo): string {
  const parts = [s.name.padEnd(16), s.state.padEnd(11), `since ${when(s.since)}`];
  if (s.consecutiveFailures) parts.push(`failures in a row: ${s.consecutiveFailures}`);
  if (s.lastHealth) {
    const outcome = s.lastHealth.ok ? 'passed' : `failed (${s.lastHealth.code ?? '?'})`;
    parts.push(`last health check ${outcome} ${when(s.lastHealth.at)}`);
  }
  if (s.reason) parts.push(`— ${s.reason}`);
  return parts.join('  ');
}

export async function boardMain(argv: string[], io: BoardIo = process): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: {
        config: { type: 'string', short: 'c' },
        url: { type: 'string' },
        ca: { type: 'string' },
        reason: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: true,
    }));
  } catch (err) {
    io.stderr.write(`rpi-flash-agent board: ${messageOf(err)} (see --help)\n`);
    return BOARD_EXIT.usage;
  }
  if (values.help) {
    io.stdout.write(BOARD_HELP);
    return BOARD_EXIT.ok;
  }
  let action: BoardAction;
  let target: string | undefined;
  if (positionals.length === 1 && positionals[0] === 'list') action = 'status';
  else if (positionals.length === 2 && (BOARD_ACTIONS as readonly string[]).includes(positionals[1]!)) {
    target = positionals[0]!;
    action = positionals[1] as BoardAction;
  } else {
    io.stderr.write(
      `rpi-flash-agent board: expected TARGET ${BOARD_ACTIONS.filter((a) => a !== 'status').join('|')}|status ` +
        `or list, got "${positionals.join(' ')}" (see --help)\n`,
    );
    return BOARD_EXIT.usage;
  }
  if (values.reason !== undefined && action !== 'maintenance') {
    io.stderr.write('rpi-flash-agent board: --reason goes with maintenance (see --help)\n');
    return BOARD_EXIT.usage;
  }

  let config: AgentConfig;
  try {
    config = await loadConfig(typeof values.config === 'string' ? values.config : DEFAULT_CONFIG);
  } catch (err) {
    io.stderr.write(`rpi-flash-agent board: ${messageOf(err)}\n`);
    return BOARD_EXIT.usage;
  }
  const url = typeof values.url === 'string' ? values.url : localUrl(config);
  const caFile = typeof values.ca === 'string' ? values.ca : config.listen.tls?.cert;

  try {
    const ca = url.startsWith('wss:') && caFile ? await readFile(caFile, 'utf8') : undefined;
    const conn = await connectAgent({
      url,
      token: config.token,
      client: `rpi-flash-agent board (${process.env.SUDO_USER ?? process.env.USER ?? 'operator'})`,
      ...(ca ? { ca } : {}),
      log: (line) => io.stderr.write(`rpi-flash-agent board: ${line}\n`),
    });
    try {
      const answer = await conn.board({
        action,
        ...(target !== undefined ? { target } : {}),
        ...(typeof values.reason === 'string' ? { reason: values.reason } : {}),
      });
      if (values.json)
        io.stdout.write(JSON.stringify({ boards: answer.boards, health: answer.health }, null, 2) + '\n');
      else {
        if (answer.health)
          io.stdout.write(
            `health check ${answer.health.ok ? 'passed' : `failed: ${answer.health.code}: ${answer.health.message}`}\n`,
          );
        for (const s of answer.boards) io.stdout.write(formatStatus(s) + '\n');
      }
      return answer.health && !answer.health.ok ? BOARD_EXIT.unhealthy : BOARD_EXIT.ok;
    } finally {
      conn.close();
    }
  } catch (err) {
    io.stderr.write(`rpi-flash-agent board: ${codeOf(err)}: ${messageOf(err)}\n`);
    return BOARD_EXIT.refused;
  }
}
