import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InputError, parseSettings } from '../../src/action/settings.js';
import { BOOT_CHECK_MAX_LENGTH } from '../../src/protocol/boot-check.js';
import { ConfigError, validateConfig } from '../../runner-agent/src/config.js';

const PEM = '-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ\n-----END CERTIFICATE-----\n';

function inputs(values: Record<string, string>) {
  const all: Record<string, string> = {
    'agent-url': 'wss://lab.example:8443',
    token: 's3cret',
    target: 'pi4-03',
    image: 'out/sdcard.img.xz',
    ...values,
  };
  return (name: string) => all[name] ?? '';
}

function problemsOf(values: Record<string, string>, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseSettings(inputs(values), { env });
  } catch (err) {
    expect(err).toBeInstanceOf(InputError);
    expect(err).toMatchObject({ code: 'INPUT_INVALID' });
    return (err as InputError).problems;
  }
  throw new Error('parseSettings accepted the inputs');
}

describe('parseSettings', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('parses valid inputs into typed settings with defaults', () => {
    const secrets: string[] = [];
    const s = parseSettings(inputs({}), {
      env: {
        GITHUB_REPOSITORY: 'org/repo',
        GITHUB_RUN_ID: '42',
        GITHUB_RUN_ATTEMPT: '2',
        GITHUB_JOB: 'flash',
        GITHUB_WORKSPACE: '/ws',
      },
      registerSecret: (s) => secrets.push(s),
    });
    expect(s.agentUrl.href).toBe('wss://lab.example:8443/');
    expect(s.token).toBe('s3cret');
    expect(secrets).toEqual(['s3cret']);
    expect(s.target).toBe('pi4-03');
    expect(s.connectTimeoutMs).toBe(30_000);
    expect(s.queueTimeoutMs).toBe(1_800_000);
    expect(s.jobTimeoutMs).toBe(1_800_000);
    expect(s.bootCheck).toBeUndefined();
    expect(s.bootTimeoutSeconds).toBeUndefined();
    expect(s.holder).toBe('org/repo run 42.2 job flash');
    expect(s.workspace).toBe('/ws');
    expect(s.method).toBe('flash');
  });

  it('takes method netboot, and refuses a method it does not know by name', () => {
    expect(parseSettings(inputs({ method: 'netboot' }), { env: {} }).method).toBe('netboot');
    expect(parseSettings(inputs({ method: 'flash' }), { env: {} }).method).toBe('flash');
    expect(problemsOf({ method: 'pxe' })).toEqual(['method: "pxe" is not one of flash, netboot']);
  });

  it('accepts boot checks, fractional timeouts and a trailing newline on the token', () => {
    const s = parseSettings(
      inputs({ 'boot-check': 'NONE', 'connect-timeout': '2.5', 'boot-timeout': '120', token: 'abc\n' }),
      { env: {} },
    );
    expect(s.bootCheck).toBe('none');
    expect(s.connectTimeoutMs).toBe(2500);
    expect(s.bootTimeoutSeconds).toBe(120);
    expect(s.token).toBe('abc');
    expect(parseSettings(inputs({ 'boot-check': 'tcp:10.0.0.5:2222' }), { env: {} }).bootCheck).toBe(
      'tcp:10.0.0.5:2222',
    );
    expect(parseSettings(inputs({ 'boot-check': 'tcp:22' }), { env: {} }).bootCheck).toBe('tcp:22');
  });

  it.each([
    [{ 'agent-url': '' }, 'agent-url: required'],
    [{ 'agent-url': 'https://lab.example' }, 'agent-url: scheme "https" is not ws or wss (use wss://'],
    [{ 'agent-url': 'lab.example:8443' }, 'agent-url: scheme "lab.example" is not ws or wss'],
    [{ 'agent-url': 'not a url' }, 'agent-url: "not a url" is not a URL'],
    [{ 'agent-url': 'wss://user:pw@lab.example' }, 'agent-url: must not carry credentials'],
    [{ token: '' }, 'token: required'],
    [{ token: '   ' }, 'token: required'],
    [{ token: 'ab cd' }, 'token: contains whitespace'],
    [{ target: '' }, 'target: required'],
    [{ image: '' }, 'image: required'],
    [{ image: 'ftp://host/a.img' }, 'image: URL scheme "ftp" is not supported'],
    [{ image: 's3://bucket/a.img' }, 'image: URL scheme "s3" is not supported'],
    [{ 'boot-check': 'ssh' }, 'boot-check: "ssh" is not tcp:<port>, tcp:<host>:<port>, console:<regex> or none'],
    [{ 'boot-check': 'tcp:70000' }, 'boot-check: "tcp:70000": "70000" is not a TCP port (1–65535)'],
    [{ 'boot-check': 'tcp:my_host:22' }, 'boot-check: "tcp:my_host:22": "my_host" is not a host name: "_"'],
    [{ 'boot-check': 'console:(' }, 'boot-check: "console:(": not a valid regular expression'],
    [{ 'connect-timeout': 'soon' }, 'connect-timeout: "soon" is not a number'],
    [{ 'queue-timeout': '-5' }, 'queue-timeout: "-5" is not a number'],
    [{ 'job-timeout': '0' }, 'job-timeout: must be more than 0'],
    [{ 'boot-timeout': '1e3' }, 'boot-timeout: "1e3" is not a number'],
    [{ 'board-timeout': '99999999' }, 'board-timeout: 99999999 seconds is too long'],
    [{ 'ca-cert': 'no-such-file.pem' }, 'ca-cert: neither PEM text nor a readable file'],
    [{ 'ca-cert': '-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----' }, 'ca-cert: holds no PEM certificate'],
    [{ 'ca-cert': PEM, 'agent-url': 'ws://lab.example' }, 'ca-cert: given, but agent-url is ws://'],
  ])('refuses %j naming the input', (values, expected) => {
    const problems = problemsOf(values, { GITHUB_WORKSPACE: tmpdir() });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain(expected);
  });

  describe("boot-check: the agent's grammar, refused before connecting", () => {
    // Specs the two sides once parsed differently, and the edges of each rule.
    const specs = [
      'tcp:22',
      'http:80',
      'tcp:my_host:22',
      'tcp:[::1]:22',
      'tcp:::1:22',
      'tcp:[nope]:22',
      'tcp:a b:22',
      'tcp:-pi:22',
      'tcp:10.0.0.256:22',
      'tcp:pi4-a.lab:22',
      'tcp:[fe80::1%eth0]:22',
      'console:login:',
      'console:',
      `console:${'x'.repeat(BOOT_CHECK_MAX_LENGTH)}`,
    ];

    /** What the agent makes of the spec as its bootCheck setting: the same words, or undefined when taken. */
    async function agentProblem(spec: string): Promise<string | undefined> {
      const err = await validateConfig(
        { token: 'a-token-of-sufficient-length', targets: 't.csv', bootCheck: spec },
        '/',
      )
        .then(() => undefined)
        .catch((e: unknown) => e);
      if (err === undefined) return undefined;
      expect(err).toBeInstanceOf(ConfigError);
      const problems = (err as ConfigError).problems.filter((p) => p.startsWith('"bootCheck"'));
      expect(problems).toHaveLength(1);
      return problems[0]!.replace(/^"bootCheck": (unknown )?boot check /, '');
    }

    it.each(specs)('%j: the action refuses it, with the same problem, exactly when the agent does', async (spec) => {
      const agent = await agentProblem(spec);
      let action: string | undefined;
      try {
        parseSettings(inputs({ 'boot-check': spec }), { env: {} });
      } catch (err) {
        expect(err).toBeInstanceOf(InputError);
        const problems = (err as InputError).problems;
        expect(problems).toHaveLength(1);
        action = problems[0]!.replace(/^boot-check: /, '');
      }
      expect(action).toBe(agent);
    });

    it('refuses tcp:my_host:22 among the inputs (what main.ts reports as INPUT_INVALID), before connecting', () => {
      expect(problemsOf({ 'boot-check': 'tcp:my_host:22' })).toEqual([
        'boot-check: "tcp:my_host:22": "my_host" is not a host name: "_" is not allowed in one ' +
          '(letters, digits, "-" and "." only)',
      ]);
    });
  });

  it('reports every bad input at once, each by name', () => {
    const problems = problemsOf({ 'agent-url': 'http://x', token: '', 'job-timeout': 'x' });
    expect(problems.map((p) => p.split(':')[0])).toEqual(['agent-url', 'token', 'job-timeout']);
    try {
      parseSettings(inputs({ 'agent-url': 'http://x', token: '' }), { env: {} });
    } catch (err) {
      expect((err as Error).message).toMatch(/^Invalid inputs:\n- agent-url: .*\n- token: /);
    }
  });

  it('masks the query of a signed image URL', () => {
    const secrets: string[] = [];
    parseSettings(inputs({ image: 'https://files.example/a.img.xz?X-Sig=abc123' }), {
      env: {},
      registerSecret: (s) => secrets.push(s),
    });
    expect(secrets).toEqual(['s3cret', 'X-Sig=abc123']);
  });

  it('reads ca-cert from a file relative to the workspace, or takes PEM text', () => {
    dir = mkdtempSync(path.join(tmpdir(), 'settings-'));
    writeFileSync(path.join(dir, 'lab-ca.pem'), PEM);
    expect(parseSettings(inputs({ 'ca-cert': 'lab-ca.pem' }), { env: { GITHUB_WORKSPACE: dir } }).caCert).toBe(PEM);
    expect(parseSettings(inputs({ 'ca-cert': PEM.trim() }), { env: {} }).caCert).toBe(PEM.trim());
  });
});
