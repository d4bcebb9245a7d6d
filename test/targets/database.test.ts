import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import {
  findTarget,
  serialFolder,
  loadTargets,
  parseResetSpec,
  parseTargets,
  TargetsError,
  type Target,
} from '../../runner-agent/src/targets/database.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/targets');

/** The problems a parse reports, as `line: reason` strings (or [] when it succeeds). */
function problemsOf(csv: string): { line: number; reason: string }[] {
  try {
    parseTargets(csv, 'db.csv');
    return [];
  } catch (err) {
    expect(err).toBeInstanceOf(TargetsError);
    return (err as TargetsError).problems.map(({ line, reason }) => ({ line, reason }));
  }
}

describe('parseResetSpec', () => {
  it('parses every kind', () => {
    expect(parseResetSpec('gpio:17')).toEqual({ kind: 'gpio', bcm: 17 });
    expect(parseResetSpec(' GPIO:0 ')).toEqual({ kind: 'gpio', bcm: 0 });
    expect(parseResetSpec('gpiod:gpiochip0:17')).toEqual({ kind: 'gpiod', chip: 'gpiochip0', line: '17' });
    expect(parseResetSpec('gpiod:gpiochip4:GPIO17')).toEqual({ kind: 'gpiod', chip: 'gpiochip4', line: 'GPIO17' });
    expect(parseResetSpec('cmd:uhubctl -l 1-1 -p 2 -a cycle')).toEqual({
      kind: 'cmd',
      command: 'uhubctl -l 1-1 -p 2 -a cycle',
    });
    expect(parseResetSpec('cmd:echo a:b')).toEqual({ kind: 'cmd', command: 'echo a:b' });
    expect(parseResetSpec('qmp:/tmp/q.sock')).toEqual({ kind: 'qmp', socket: '/tmp/q.sock' });
    expect(parseResetSpec('sim')).toEqual({ kind: 'sim', options: [] });
    expect(parseResetSpec('sim:no-show, fail-write')).toEqual({ kind: 'sim', options: ['no-show', 'fail-write'] });
  });

  it.each([
    ['gpio:', /BCM GPIO number/],
    ['gpio:-1', /BCM GPIO number/],
    ['gpio:1.5', /BCM GPIO number/],
    ['gpio:58', /does not exist/],
    ['gpiod:gpiochip0', /chip and a line/],
    ['gpiod::17', /chip and a line/],
    ['cmd:', /needs a command/],
    ['qmp:', /QMP socket/],
    ['qmp:relative.sock', /absolute/],
    ['sim:no show', /bad flag "no show"/],
    ['sim:a,,b', /bad flag ""/],
    ['relay:3', /unknown reset spec "relay:3".*gpio:<bcm>/],
    ['', /unknown reset spec/],
  ])('refuses %j', (spec, reason) => {
    expect(() => parseResetSpec(spec)).toThrow(reason);
  });
});

describe('parseTargets, native format', () => {
  it('reads every column, with real line numbers', async () => {
    const targets = await loadTargets(path.join(fixtures, 'lab.csv'));
    expect(targets.map((t) => [t.name, t.source.line])).toEqual([
      ['pi4-a', 4],
      ['pi3-b', 5],
      ['relay-c', 7],
      ['qemu-1', 8],
      ['sim-1', 9],
      ['old-seed', 10],
    ]);
    const [pi4, pi3, relay, qemu, sim, seed] = targets as [Target, Target, Target, Target, Target, Target];
    expect(pi4).toEqual({
      name: 'pi4-a',
      mac: 'dc:a6:32:01:02:03',
      ip: '192.168.10.21',
      reset: { kind: 'gpio', bcm: 17 },
      resetText: 'gpio:17',
      model: 'pi4b',
      serial: '1000000012345678',
      labels: ['fast', 'usb3', 'eth-1g'],
      layout: 'whole',
      source: { file: path.join(fixtures, 'lab.csv'), line: 4 },
    });
    expect(pi3.mac).toBe('b8:27:eb:28:f6:6d');
    expect(pi3.reset).toEqual({ kind: 'gpiod', chip: 'gpiochip0', line: 'GPIO27' });
    expect(pi3.serial).toBeUndefined();
    // An empty layout cell leaves the choice to the agent's defaultLayout.
    expect(pi3.layout).toBeUndefined();
    // A quoted field keeps its comma, and a '#' inside a field is data, not a comment.
    expect(relay.reset).toEqual({ kind: 'cmd', command: 'relayctl --channel 3,pulse # comment is data' });
    expect(relay.labels).toEqual([]);
    expect(qemu.reset).toEqual({ kind: 'qmp', socket: '/run/rpi-flash/qemu-1.qmp' });
    expect(sim.reset).toEqual({ kind: 'sim', options: ['no-show', 'fail-write:2'] });
    expect(seed.layout).toBe('seed');
  });

  it('takes columns in any order and header names in any case', () => {
    const [t] = parseTargets('Reset, IP ,MAC,Name\nsim,10.0.0.9,02:00:00:00:00:09,x9\n', 'db.csv');
    expect(t).toMatchObject({ name: 'x9', ip: '10.0.0.9', mac: '02:00:00:00:00:09', reset: { kind: 'sim' } });
  });

  it('reads the optional console column and reports a bad console spec with its line', () => {
    const csv = [
      'name,mac,ip,reset,console',
      'pi4-a,dc:a6:32:01:02:03,10.0.0.1,gpio:17,serial:/dev/ttyUSB0@115200',
      'pi3-b,b8:27:eb:00:00:02,10.0.0.2,gpio:27,tcp:10.0.0.250:2002',
      'qemu-1,52:54:00:00:00:03,10.0.0.3,qmp:/run/q1.qmp,unix:/run/q1.serial',
      'dark,b8:27:eb:00:00:04,10.0.0.4,gpio:22,',
    ].join('\n');
    const targets = parseTargets(csv, 'db.csv');
    expect(targets.map((t) => [t.name, t.console])).toEqual([
      ['pi4-a', { kind: 'serial', device: '/dev/ttyUSB0', baud: 115200 }],
      ['pi3-b', { kind: 'tcp', host: '10.0.0.250', port: 2002 }],
      ['qemu-1', { kind: 'unix', path: '/run/q1.serial' }],
      ['dark', undefined],
    ]);
    expect('console' in (targets[3] as Target)).toBe(false);

    expect(
      problemsOf('name,mac,ip,reset,console\n\nx,b8:27:eb:00:00:05,10.0.0.5,gpio:5,serial:/dev/ttyUSB0@11520\n'),
    ).toEqual([
      {
        line: 3,
        reason:
          'bad console spec: serial console "serial:/dev/ttyUSB0@11520": ' +
          '11520 is not a standard baud rate (e.g. 9600, 115200, 921600)',
      },
    ]);
    expect(problemsOf('name,mac,ip,reset,console\nx,b8:27:eb:00:00:05,10.0.0.5,gpio:5,com1\n')[0]?.reason).toMatch(
      /bad console spec: unknown console spec "com1"/,
    );
  });

  it('accepts a database with a header and no targets', () => {
    expect(parseTargets('# nothing yet\nname,mac,ip,reset\n', 'db.csv')).toEqual([]);
  });

  it('reports every bad row at once, with its real line', async () => {
    const err = await loadTargets(path.join(fixtures, 'bad.csv')).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TargetsError);
    const problems = (err as TargetsError).problems;
    expect(problems.map((p) => p.line)).toEqual([4, 6, 7, 8, 9, 10, 11]);
    expect(problems.every((p) => p.file === path.join(fixtures, 'bad.csv'))).toBe(true);
    const reasons = problems.map((p) => p.reason);
    expect(reasons[0]).toMatch(/"b8:27:eb:00:00" is not a MAC address/);
    expect(reasons[1]).toMatch(/"10\.0\.0\.256" is not a dotted IPv4 address/);
    expect(reasons[2]).toMatch(/bad reset spec: gpio reset needs a BCM GPIO number/);
    expect(reasons[3]).toMatch(/duplicate name "good" \(already used by "good" on line 3\)/);
    expect(reasons[4]).toMatch(/duplicate mac b8:27:eb:00:00:01 .*line 3/);
    expect(reasons[5]).toMatch(/duplicate ip 10\.0\.0\.1 .*line 3/);
    expect(reasons[6]).toMatch(/2 fields where the header has 4/);
    // The message lists every problem as file:line: reason.
    expect((err as Error).message).toContain(
      `${path.join(fixtures, 'bad.csv')}:6: "10.0.0.256" is not a dotted IPv4 address`,
    );
    expect((err as Error).message.split('\n')).toHaveLength(1 + problems.length);
  });

  it.each([
    ['name,mac,ip\n', /header lacks column\(s\) reset/],
    ['name,mac,ip,reset,colour\n', /unknown column\(s\) "colour"/],
    ['name,mac,mac,ip,reset\n', /column "mac" appears twice/],
    ['', /the file is empty/],
    ['# only a comment\n\n', /the file is empty/],
  ])('refuses header %j', (csv, reason) => {
    const problems = problemsOf(csv);
    expect(problems).toHaveLength(1);
    expect(problems[0]?.reason).toMatch(reason);
  });

  it('checks names, layouts and empty cells', () => {
    const csv = [
      'name,mac,ip,reset,layout',
      'has space,02:00:00:00:00:01,10.0.0.1,sim,',
      ',02:00:00:00:00:02,10.0.0.2,sim,',
      'a3,,10.0.0.3,sim,',
      'a4,02:00:00:00:00:04,,sim,',
      'a5,02:00:00:00:00:05,10.0.0.5,,',
      'a6,02:00:00:00:00:06,10.0.0.6,sim,inject',
      'a7,02:00:00:00:00:07,10.0.0.7,sim,sideways',
      'A8,02:00:00:00:00:08,10.0.0.8,sim,',
      'a8,02:00:00:00:00:09,10.0.0.9,sim,',
      '02-00-00-00-00-08,02:00:00:00:00:0a,10.0.0.10,sim,',
      '10.0.0.9,02:00:00:00:00:0b,10.0.0.11,sim,',
      '10.0.0.12,02:00:00:00:00:0c,10.0.0.12,sim,',
    ].join('\n');
    expect(problemsOf(csv)).toEqual([
      { line: 2, reason: expect.stringMatching(/name "has space" may hold only/) as string },
      { line: 3, reason: 'name is empty' },
      { line: 4, reason: 'mac is empty' },
      { line: 5, reason: 'ip is empty' },
      { line: 6, reason: expect.stringMatching(/reset is empty/) as string },
      { line: 8, reason: expect.stringMatching(/unknown layout "sideways"/) as string },
      { line: 10, reason: expect.stringMatching(/duplicate name "a8"/) as string },
      { line: 11, reason: expect.stringMatching(/name "02-00-00-00-00-08" is the MAC or IP of "A8"/) as string },
      { line: 12, reason: expect.stringMatching(/name "10\.0\.0\.9" is the MAC or IP of "a8"/) as string },
    ]);
  });

  it('reports broken CSV quoting with its line', () => {
    const problems = problemsOf('name,mac,ip,reset\na,02:00:00:00:00:01,10.0.0.1,"cmd:echo\n');
    expect(problems).toHaveLength(1);
    expect(problems[0]?.reason).toMatch(/not valid CSV/);
    expect(problems[0]?.line).toBeGreaterThan(0);
  });

  it('refuses an IPv4 with leading zeros (octal or decimal?)', () => {
    expect(problemsOf('name,mac,ip,reset\na,02:00:00:00:00:01,10.0.0.010,sim\n')[0]?.reason).toMatch(
      /not a dotted IPv4/,
    );
  });
});

describe("parseTargets, the seed system's file", () => {
  it('maps wiringPi pins to BCM and names targets by MAC', async () => {
    const targets = await loadTargets(path.join(fixtures, 'seed.csv'));
    expect(
      targets.map((t) => ({
        name: t.name,
        mac: t.mac,
        ip: t.ip,
        reset: t.reset,
        resetText: t.resetText,
        layout: t.layout,
        line: t.source.line,
      })),
    ).toEqual([
      {
        name: 'b8-27-eb-28-f6-6d',
        mac: 'b8:27:eb:28:f6:6d',
        ip: '192.168.1.101',
        reset: { kind: 'gpio', bcm: 17 },
        resetText: 'gpio:17',
        layout: 'seed',
        line: 2,
      },
      {
        name: 'b8-27-eb-28-f6-6e',
        mac: 'b8:27:eb:28:f6:6e',
        ip: '192.168.1.102',
        reset: { kind: 'gpio', bcm: 4 },
        resetText: 'gpio:4',
        layout: 'seed',
        line: 3,
      },
      {
        name: 'b8-27-eb-28-f6-6f',
        mac: 'b8:27:eb:28:f6:6f',
        ip: '192.168.1.103',
        reset: { kind: 'gpio', bcm: 21 },
        resetText: 'gpio:21',
        layout: 'seed',
        line: 5,
      },
    ]);
    expect(targets.every((t) => t.labels.length === 0 && t.model === undefined)).toBe(true);
  });

  it('recognises the header without regard to case or spacing', () => {
    const [t] = parseTargets('macaddress,IPADDRESS,reset  gpio(wiring pi)\n02:00:00:00:00:01,10.0.0.1,8\n', 'seed.csv');
    expect(t?.reset).toEqual({ kind: 'gpio', bcm: 2 });
  });

  it('refuses pins with no BCM line on a 40-pin header, and other bad rows', () => {
    const csv = [
      'mac address,ip address,reset gpio (wiring pi)',
      '02:00:00:00:00:01,10.0.0.1,17',
      '02:00:00:00:00:02,10.0.0.2,32',
      '02:00:00:00:00:03,10.0.0.3,gpio:4',
      '02:00:00:00:00:04,10.0.0.4,',
      '02:00:00:00:00:01,10.0.0.5,1',
      'not-a-mac,10.0.0.6,1',
    ].join('\n');
    expect(problemsOf(csv)).toEqual([
      { line: 2, reason: expect.stringMatching(/wiringPi pin 17 has no BCM GPIO on a 40-pin header/) as string },
      { line: 3, reason: expect.stringMatching(/wiringPi pin 32 has no BCM GPIO/) as string },
      { line: 4, reason: expect.stringMatching(/"gpio:4" is not a wiringPi pin number/) as string },
      { line: 5, reason: expect.stringMatching(/"" is not a wiringPi pin number/) as string },
      { line: 7, reason: expect.stringMatching(/"not-a-mac" is not a MAC address/) as string },
    ]);
    // Line 6 repeats line 2's MAC, but line 2 failed, so the duplicate is not reported twice.
  });

  it('refuses a seed header with extra or missing columns', () => {
    expect(problemsOf('mac address,ip address\n')[0]?.reason).toMatch(/seed-format header lacks resetgpio\(wiringpi\)/);
    expect(problemsOf('mac address,ip address,reset gpio (wiring pi),name\n')[0]?.reason).toMatch(
      /unknown column\(s\) "name"/,
    );
  });
});

describe('loadTargets', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('names a missing file', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'targets-'));
    const file = path.join(dir, 'nope.csv');
    await expect(loadTargets(file)).rejects.toThrow(`${file}:0: cannot read the targets database`);
  });

  it('reads a file with CRLF line ends', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'targets-'));
    const file = path.join(dir, 'crlf.csv');
    await writeFile(file, 'name,mac,ip,reset\r\n\r\nb1,02:00:00:00:00:01,10.0.0.1,gpio:5\r\n');
    const [t] = await loadTargets(file);
    expect(t).toMatchObject({ name: 'b1', resetText: 'gpio:5', source: { file, line: 3 } });
  });
});

describe('findTarget', () => {
  const targets = parseTargets(
    'name,mac,ip,reset\nPi4-A,dc:a6:32:01:02:03,10.0.0.1,sim\npi3,b8:27:eb:28:f6:6d,10.0.0.2,sim\n',
    'db.csv',
  );
  it.each([
    ['Pi4-A', 'Pi4-A'],
    ['pi4-a', 'Pi4-A'],
    [' pi3 ', 'pi3'],
    ['DC-A6-32-01-02-03', 'Pi4-A'],
    ['b8:27:EB:28:f6:6D', 'pi3'],
    ['10.0.0.2', 'pi3'],
  ])('finds %j', (query, name) => {
    expect(findTarget(targets, query)?.name).toBe(name);
  });
  it.each(['', 'pi5', '10.0.0.3', 'b8:27:eb:28:f6:6e'])('finds nothing for %j', (query) => {
    expect(findTarget(targets, query)).toBeUndefined();
  });
});

describe('the windowsize column', () => {
  it("gives a board its own TFTP window (1-64), and refuses anything else naming the row's line", () => {
    const [a, b] = parseTargets(
      'name,mac,ip,reset,windowsize\npi-a,02:00:00:00:00:01,10.0.0.1,sim,16\npi-b,02:00:00:00:00:02,10.0.0.2,sim,\n',
      'db.csv',
    );
    expect(a!.tftpWindowSize).toBe(16);
    expect(b!.tftpWindowSize).toBeUndefined();
    for (const bad of ['0', '65', '8.5', 'x', '-1'])
      expect(() =>
        parseTargets(`name,mac,ip,reset,windowsize\npi-a,02:00:00:00:00:01,10.0.0.1,sim,${bad}\n`, 'db.csv'),
      ).toThrow(
        new RegExp(`db\\.csv:2: windowsize "${bad.replace('.', '\\.')}" must be a TFTP window of 1 to 64 blocks`),
      );
  });
});

describe('the netboot column', () => {
  const header = 'name,mac,ip,reset,serial,netboot';

  it('names the folder the firmware fetches from: serial (low 32 bits, 8 hex digits), mac, prefix string', () => {
    const csv = [
      header,
      'pi3-a,b8:27:eb:00:00:01,10.0.0.1,sim,00000000B1C2D3E4,serial',
      'pi4-a,dc:a6:32:01:36:c2,10.0.0.2,sim,10000000f00d,SERIAL',
      'pi4-b,DC-A6-32-01-36-C3,10.0.0.3,sim,,mac',
      'pi4-c,dc:a6:32:01:36:c4,10.0.0.4,sim,,prefix:lab/pi4-c/',
      'pi4-d,dc:a6:32:01:36:c5,10.0.0.5,sim,0x7,prefix:Pi4-D',
      'plain,dc:a6:32:01:36:c6,10.0.0.6,sim,not-hex-and-fine,',
    ].join('\n');
    const targets = parseTargets(csv, 'db.csv');
    expect(targets.map((t) => [t.name, t.netboot])).toEqual([
      ['pi3-a', { prefixMode: 'serial', folder: 'b1c2d3e4' }],
      // Leading zeros kept: the folder is always 8 digits.
      ['pi4-a', { prefixMode: 'serial', folder: '0000f00d' }],
      ['pi4-b', { prefixMode: 'mac', folder: 'dc-a6-32-01-36-c3' }],
      ['pi4-c', { prefixMode: 'string', folder: 'lab/pi4-c' }],
      ['pi4-d', { prefixMode: 'string', folder: 'Pi4-D' }],
      // A board that does not network-boot keeps a free-text serial.
      ['plain', undefined],
    ]);
    expect('netboot' in targets[5]!).toBe(false);
    expect(serialFolder('10000000b1c2d3e4')).toBe('b1c2d3e4');
    expect(serialFolder('1')).toBe('00000001');
  });

  it('refuses a serial board without a usable serial and a prefix the EEPROM cannot hold, naming the row', () => {
    const long = 'x'.repeat(32); // 33 characters with its trailing "/"
    const csv = [
      header,
      'no-serial,b8:27:eb:00:00:01,10.0.0.1,sim,,serial',
      'bad-serial,b8:27:eb:00:00:02,10.0.0.2,sim,b1c2-d3e4,serial',
      'too-long-serial,b8:27:eb:00:00:03,10.0.0.3,sim,12345678901234567,serial',
      `long,b8:27:eb:00:00:04,10.0.0.4,sim,,prefix:${long}`,
      'dotdot,b8:27:eb:00:00:05,10.0.0.5,sim,,prefix:a/../b',
      'empty,b8:27:eb:00:00:06,10.0.0.6,sim,,prefix:/',
      'abs,b8:27:eb:00:00:07,10.0.0.7,sim,,prefix://etc',
      'other,b8:27:eb:00:00:08,10.0.0.8,sim,,tftp',
      'mac-arg,b8:27:eb:00:00:09,10.0.0.9,sim,,mac:yes',
    ].join('\n');
    expect(problemsOf(csv)).toEqual([
      { line: 2, reason: 'bad netboot: netboot "serial" needs the serial column: the firmware names its folder by it' },
      { line: 3, reason: expect.stringMatching(/^bad netboot: serial "b1c2-d3e4" is not a board serial/) as string },
      { line: 4, reason: expect.stringMatching(/^bad netboot: serial "12345678901234567" is not/) as string },
      {
        line: 5,
        reason: expect.stringMatching(/too long: TFTP_PREFIX_STR holds at most 32 characters .*has 33/) as string,
      },
      { line: 6, reason: expect.stringMatching(/prefix "a\/\.\.\/b" must be a relative folder/) as string },
      { line: 7, reason: expect.stringMatching(/needs the folder/) as string },
      { line: 8, reason: expect.stringMatching(/prefix "\/\/etc" must be a relative folder/) as string },
      {
        line: 9,
        reason: expect.stringMatching(/unknown netboot spec "tftp": expected serial, mac or prefix:<folder>/) as string,
      },
      { line: 10, reason: expect.stringMatching(/unknown netboot spec "mac:yes"/) as string },
    ]);
    // 31 characters and the slash: the most TFTP_PREFIX_STR holds.
    expect(
      parseTargets(`${header}\nok,b8:27:eb:00:00:01,10.0.0.1,sim,,prefix:${'y'.repeat(31)}/\n`, 'db.csv')[0]!.netboot,
    ).toEqual({ prefixMode: 'string', folder: 'y'.repeat(31) });
  });

  it("refuses folders that would serve one board's files to another", () => {
    const csv = [
      header,
      'a,b8:27:eb:00:00:01,10.0.0.1,sim,10000000b1c2d3e4,serial',
      'b,b8:27:eb:00:00:02,10.0.0.2,sim,20000000B1C2D3E4,serial',
      'c,b8:27:eb:00:00:03,10.0.0.3,sim,,prefix:b8-27-eb-00-00-04',
      'd,b8:27:eb:00:00:04,10.0.0.4,sim,,',
      'e,b8:27:eb:00:00:05,10.0.0.5,sim,,prefix:lab',
      'f,b8:27:eb:00:00:06,10.0.0.6,sim,,prefix:LAB/f',
      'g,b8:27:eb:00:00:07,10.0.0.7,sim,,mac',
    ].join('\n');
    expect(problemsOf(csv)).toEqual([
      {
        line: 3,
        reason:
          'netboot folder "b1c2d3e4" overlaps the netboot folder "b1c2d3e4" of "a" (line 2): ' +
          "each board's firmware must have a folder of its own",
      },
      {
        line: 5,
        reason: expect.stringMatching(
          /^macdir b8-27-eb-00-00-04 overlaps the netboot folder "b8-27-eb-00-00-04" of "c"/,
        ) as string,
      },
      {
        line: 7,
        reason: expect.stringMatching(
          /^netboot folder "LAB\/f" overlaps the netboot folder "lab" of "e" \(line 6\)/,
        ) as string,
      },
    ]);
  });
});

describe('the default layout', () => {
  const rows =
    'name,mac,ip,reset,layout\nplain,02:00:00:00:00:01,10.0.0.1,none,\nwhole-1,02:00:00:00:00:02,10.0.0.2,sim,whole\n';
  it('holds a row that gets ota from defaultLayout to the ssh columns, naming it; one with a layout is not', () => {
    expect(() => parseTargets(rows, 'db.csv', { defaultLayout: 'ota' })).toThrow(
      /db\.csv:2: layout ota \(the agent's defaultLayout\) needs the column\(s\) ssh, sshkey, hostkey/,
    );
    const err = (() => {
      try {
        parseTargets(rows, 'db.csv', { defaultLayout: 'ota' });
      } catch (e) {
        return e as TargetsError;
      }
    })();
    expect(err?.problems.map((p) => p.line)).toEqual([2]);
    expect(parseTargets(rows, 'db.csv', { defaultLayout: 'inject' }).map((t) => t.name)).toEqual(['plain', 'whole-1']);
  });
});
