/**
 * The `console` column of the targets database (DESIGN §3.3, issue 5 item 5): where the agent
 * reads a board's serial console.
 *
 *   serial:<device>[@<baud>]  a USB-serial adapter on the lab server, e.g. serial:/dev/ttyUSB0@115200
 *                             (or a stable name: serial:/dev/serial/by-id/usb-FTDI_…-if00-port0).
 *                             The baud rate defaults to 115200, what a Pi's UART runs at.
 *   tcp:<host>:<port>         a ser2net port in raw mode (no telnet negotiation), e.g. tcp:10.0.0.5:2001;
 *                             an IPv6 host goes in brackets: tcp:[fd00::5]:2001
 *   unix:<path>               QEMU's `-serial unix:<path>,server=on,wait=off`
 *
 * Paths must be absolute: the agent's working directory is whatever systemd chose.
 */
import net from 'node:net';
import path from 'node:path';

export type ConsoleSpec =
  | { kind: 'serial'; device: string; baud: number }
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string };

export const CONSOLE_FORMS = 'serial:<device>[@<baud>], tcp:<host>:<port> or unix:<socket path>';

export const DEFAULT_BAUD = 115200;

/**
 * The rates Linux's termios has names for (B50 … B4000000): `stty` refuses anything else, and a
 * typo such as 11520 should fail when the database loads, not at the first job.
 */
export const BAUD_RATES: readonly number[] = [
  50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800,
  500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000,
];

/** sun_path holds 108 bytes including the terminating NUL. */
const UNIX_PATH_MAX = 107;

function parsePort(text: string, spec: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new Error(`console "${spec}": "${text}" is not a TCP port (1–65535)`);
  }
  return Number(text);
}

/** Parses a console spec. Throws an Error whose message says what is wrong. */
export function parseConsoleSpec(text: string): ConsoleSpec {
  const spec = text.trim();
  const colon = spec.indexOf(':');
  if (colon < 0) throw new Error(`unknown console spec "${spec}": expected ${CONSOLE_FORMS}`);
  const kind = spec.slice(0, colon).toLowerCase();
  const rest = spec.slice(colon + 1).trim();
  switch (kind) {
    case 'serial': {
      // The last `@digits` is the rate; device names do not end in one (by-id names use `-port0`).
      const m = /^(.*?)(?:@(\d+))?$/.exec(rest);
      const device = (m?.[1] ?? '').trim();
      if (!device)
        throw new Error(`serial console needs a device after "serial:" (serial:/dev/ttyUSB0@115200), got "${spec}"`);
      if (!path.isAbsolute(device)) throw new Error(`serial console needs an absolute device path, got "${device}"`);
      if (/@/.test(device))
        throw new Error(
          `serial console "${spec}": the baud rate after "@" must be a number (serial:/dev/ttyUSB0@115200)`,
        );
      const baud = m?.[2] === undefined ? DEFAULT_BAUD : Number(m[2]);
      if (!BAUD_RATES.includes(baud)) {
        throw new Error(`serial console "${spec}": ${baud} is not a standard baud rate (e.g. 9600, 115200, 921600)`);
      }
      return { kind: 'serial', device, baud };
    }
    case 'tcp': {
      const bracketed = /^\[([^\]]+)\]:([^:]*)$/.exec(rest);
      if (bracketed) {
        const host = bracketed[1] as string;
        if (!net.isIPv6(host)) throw new Error(`console "${spec}": "${host}" is not an IPv6 address`);
        return { kind: 'tcp', host, port: parsePort(bracketed[2] as string, spec) };
      }
      const parts = rest.split(':');
      if (parts.length !== 2) {
        throw new Error(
          `console "${spec}": expected tcp:<host>:<port> (write an IPv6 host in brackets: tcp:[fd00::5]:2001)`,
        );
      }
      const host = (parts[0] as string).trim();
      if (!host || !/^[A-Za-z0-9.-]+$/.test(host))
        throw new Error(`console "${spec}": "${host}" is not a host name or IPv4 address`);
      return { kind: 'tcp', host, port: parsePort((parts[1] as string).trim(), spec) };
    }
    case 'unix': {
      if (!rest) throw new Error('unix console needs the path of the serial socket after "unix:"');
      if (!path.isAbsolute(rest)) throw new Error(`unix console needs an absolute socket path, got "${rest}"`);
      if (Buffer.byteLength(rest) > UNIX_PATH_MAX) {
        throw new Error(
          'unix console: the socket path is longer than a unix socket allows ' +
            `(${Buffer.byteLength(rest)} > ${UNIX_PATH_MAX} bytes)`,
        );
      }
      return { kind: 'unix', path: rest };
    }
    default:
      throw new Error(`unknown console spec "${spec}": expected ${CONSOLE_FORMS}`);
  }
}

/** The canonical text of a spec (for logs and the job's record). */
export function formatConsoleSpec(spec: ConsoleSpec): string {
  switch (spec.kind) {
    case 'serial':
      return `serial:${spec.device}@${spec.baud}`;
    case 'tcp':
      return `tcp:${net.isIPv6(spec.host) ? `[${spec.host}]` : spec.host}:${spec.port}`;
    case 'unix':
      return `unix:${spec.path}`;
  }
}
