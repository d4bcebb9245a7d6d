/**
 * The boot-check grammar (DESIGN §3.1), the one both sides parse: the action checks its
 * `boot-check` input with it before it connects, the agent checks its `bootCheck` setting and each
 * job's spec with it. One parser, so that a spec the agent would refuse after the lease and the
 * whole upload is refused by the action at once.
 *
 *   none               skip the check
 *   tcp:<port>         a TCP connection to the target's IP on that port succeeds (tcp:22: sshd is up)
 *   tcp:<host>:<port>  the same against another host
 *   console:<regex>    a line of the board's console matches the regular expression (JavaScript
 *                      syntax, no flags; write [Ll]ogin for either case)
 *
 * The rules: the spec is trimmed at its ends; `none`, `tcp:` and `console:` are case-insensitive;
 * a port is 1–65535 in decimal; a host is an IPv4 address (dotted quad), an IPv6 address in
 * brackets (tcp:[fd00::5]:22), or a host name as RFC 1123 has it: labels of letters, digits and
 * inner hyphens, at most 63 characters each. An IPv6 address may carry a zone (fe80::1%eth0), as
 * Node's net.isIPv6 takes it. An underscore is refused: host names have none (RFC 1123), and DHCP
 * servers such as dnsmasq will not register one, so such a name is a typo rather than a board. The
 * pattern of a console check is everything after `console:`, colons and spaces included.
 */
import net from 'node:net';

export type BootCheck =
  { kind: 'none' } | { kind: 'tcp'; host?: string; port: number } | { kind: 'console'; pattern: RegExp };

/** Longest spec either side takes: the protocol's limit for a job's `bootCheck` field. */
export const BOOT_CHECK_MAX_LENGTH = 256;

const FORMS = 'tcp:<port>, tcp:<host>:<port>, console:<regex> or none';

/**
 * A spec that is not in the grammar. `problem` starts with the spec in quotes and says what is
 * wrong; each side puts its own name for the setting in front of it.
 */
export class BootCheckError extends Error {
  override name = 'BootCheckError';
  readonly problem: string;
  /** `detail` says what is wrong; without it the spec is none of the forms. */
  constructor(
    readonly spec: string,
    detail?: string,
  ) {
    const problem = detail === undefined ? `"${spec}" is not ${FORMS}` : `"${spec}": ${detail}`;
    super(detail === undefined ? `unknown boot check ${problem}` : `boot check ${problem}`);
    this.problem = problem;
  }
}

export function parseBootCheck(text: string): BootCheck {
  const spec = text.trim();
  if (spec.length > BOOT_CHECK_MAX_LENGTH)
    throw new BootCheckError(
      `${spec.slice(0, 40)}…`,
      `${spec.length} characters long, more than the ${BOOT_CHECK_MAX_LENGTH} a boot check may have`,
    );
  if (spec.toLowerCase() === 'none') return { kind: 'none' };
  const consoleCheck = /^console:(.*)$/is.exec(spec);
  if (consoleCheck) return { kind: 'console', pattern: parsePattern(consoleCheck[1]!, spec) };
  const tcp = /^tcp:(.*)$/is.exec(spec);
  if (!tcp) throw new BootCheckError(spec);
  return { kind: 'tcp', ...parseTcpTarget(tcp[1]!, spec) };
}

function parsePattern(source: string, spec: string): RegExp {
  if (!source) throw new BootCheckError(spec, 'console: needs a regular expression, e.g. console:login:');
  try {
    return new RegExp(source);
  } catch (err) {
    throw new BootCheckError(spec, `not a valid regular expression: ${(err as Error).message}`);
  }
}

function parseTcpTarget(rest: string, spec: string): { host?: string; port: number } {
  if (!rest) throw new BootCheckError(spec, 'tcp: needs a port, e.g. tcp:22');
  const bracketed = /^\[([^\]]*)\](.*)$/.exec(rest);
  if (bracketed) {
    const host = bracketed[1]!;
    if (!net.isIPv6(host)) throw new BootCheckError(spec, `"${host}" is not an IPv6 address`);
    const port = /^:(.*)$/s.exec(bracketed[2]!);
    if (!port) throw new BootCheckError(spec, `the host [${host}] needs a port after it, e.g. tcp:[${host}]:22`);
    return { host, port: parsePort(port[1]!, spec) };
  }
  const parts = rest.split(':');
  if (parts.length === 1) {
    if (!isPortText(rest) && hostProblem(rest) === undefined)
      throw new BootCheckError(spec, `"${rest}" is a host without a port; write tcp:${rest}:<port>`);
    return { port: parsePort(rest, spec) };
  }
  if (parts.length === 2) {
    const [host, port] = parts as [string, string];
    const problem = hostProblem(host);
    if (problem !== undefined) throw new BootCheckError(spec, problem);
    return { host, port: parsePort(port, spec) };
  }
  throw new BootCheckError(spec, `write an IPv6 host in brackets, e.g. tcp:[::1]:22`);
}

function isPortText(text: string): boolean {
  return /^\d{1,5}$/.test(text) && Number(text) >= 1 && Number(text) <= 65535;
}

function parsePort(text: string, spec: string): number {
  if (!isPortText(text)) throw new BootCheckError(spec, `"${text}" is not a TCP port (1–65535)`);
  return Number(text);
}

const LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/;

/**
 * What keeps `host` from being an IPv4 address or an RFC 1123 host name; undefined when it is one.
 * Its 253-character limit needs no check: the spec's own limit leaves no room for a longer host.
 */
function hostProblem(host: string): string | undefined {
  if (host === '') return 'the host before the port is empty';
  const notHost = `"${host}" is not a host name`;
  const stray = /[^A-Za-z0-9.-]/.exec(host)?.[0];
  if (stray !== undefined) return `${notHost}: "${stray}" is not allowed in one (letters, digits, "-" and "." only)`;
  const labels = host.split('.');
  if (labels.every((label) => /^\d+$/.test(label)))
    return net.isIPv4(host) ? undefined : `"${host}" is not an IPv4 address`;
  for (const label of labels) {
    if (label === '') return `${notHost}: it has an empty label (".." or a "." at an end)`;
    if (label.length > 63) return `${notHost}: the label "${label}" is longer than 63 characters`;
    if (!LABEL.test(label)) return `${notHost}: the label "${label}" starts or ends with "-"`;
  }
  return undefined;
}
