/**
 * The Debian package (`npm run package`, scripts/package-deb.ts). Built here for this machine's
 * architecture and the Pis' two, read with dpkg-deb, then installed with this machine's dpkg into a
 * root that is this machine seen through overlays (overlay-root.sh, in a private mount namespace):
 * its maintainer scripts run chrooted there as on a lab server, against a copy of this machine's
 * user and package databases, and the installed `rpi-flash-agent` runs from it as the package's
 * user. Needs root or password-less sudo (mounts, chroot, the user's files); in CI a missing tool
 * or privilege fails the tests, elsewhere they are skipped saying why.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../..');
const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
const version = pkg.version.replace(/-/g, '~');
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const onPath = (tool: string) =>
  spawnSync('sh', ['-c', `command -v ${tool}`], { env: { PATH: `${process.env.PATH}:${PATH}` } }).status === 0;
/** The tools and the Debian packages that carry them (CI's apt line installs them). */
const TOOLS: Record<string, string> = {
  'dpkg-deb': 'dpkg',
  unshare: 'util-linux',
  setpriv: 'util-linux',
  adduser: 'adduser',
  'deb-systemd-helper': 'init-system-helpers',
  'systemd-analyze': 'systemd',
};
const missing = Object.entries(TOOLS)
  .filter(([tool]) => !onPath(tool))
  .map(([tool, deb]) => `${tool} (${deb})`);
/** How the namespace runs as root: directly, through sudo, or not at all. */
const asRoot =
  process.getuid?.() === 0 ? [] : spawnSync('sudo', ['-n', 'true']).status === 0 ? ['sudo', '-n'] : undefined;
const blocker = [
  ...(missing.length ? [`missing ${missing.join(', ')}`] : []),
  ...(asRoot ? [] : ['needs root or password-less sudo']),
].join('; ');
const runs = !blocker || Boolean(process.env.CI);
const skipNote = runs ? '' : ` (skipped: ${blocker})`;

const hostArch = spawnSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).stdout?.trim() || 'amd64';
const arches = [...new Set([hostArch, 'arm64', 'armhf'])];

let work: string;
let out: string;
/** The first install's token, by digest (the test never prints a token). */
let tokenSum = '';
const deb = (arch: string) => path.join(out, `rpi-flash-agent_${version}_${arch}.deb`);

function run(command: string, args: string[], o: { timeout?: number } = {}) {
  const r = spawnSync(command, args, { cwd: repoRoot, encoding: 'utf8', timeout: o.timeout ?? 60_000 });
  if (r.status !== 0)
    throw new Error(`${command} ${args.join(' ')}: status ${r.status} ${r.signal ?? ''}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/**
 * Runs `script` (sh) with $ROOT, $DEB and $AGENT (the installed agent as the rpi-flash user) in the
 * overlay root, whose changes persist in `work`. `rep KEY COMMAND…` reports a command's status and
 * output as `@@KEY STATUS BASE64`; the result maps each key to them, plus the whole output.
 */
function inRoot(script: string): { out: string; reports: Map<string, { status: number; text: string }> } {
  const prelude = [
    'set -eu',
    `export PATH=${PATH} LC_ALL=C.UTF-8`,
    `DEB=${deb(hostArch)}`,
    'AGENT="chroot $ROOT setpriv --reuid=rpi-flash --regid=rpi-flash --init-groups"',
    'rep() { k=$1; shift; s=0; o=$("$@" 2>&1) || s=$?; ' +
      'printf "@@%s %s %s\\n" "$k" "$s" "$(printf %s "$o" | base64 -w0)"; }',
  ].join('\n');
  const r = spawnSync(
    asRoot![0] ?? 'unshare',
    [
      ...asRoot!.slice(1),
      ...(asRoot!.length ? ['unshare'] : []),
      '--mount',
      '--propagation',
      'private',
      'sh',
      path.join(here, 'overlay-root.sh'),
      path.join(work, 'overlay'),
      'sh',
      '-c',
      `${prelude}\n${script}`,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  const output = `${r.stdout}\n${r.stderr}`;
  if (r.status !== 0)
    throw new Error(`the overlay root's script failed (status ${r.status} ${r.signal ?? ''}):\n${output}`);
  const reports = new Map<string, { status: number; text: string }>();
  for (const m of r.stdout.matchAll(/^@@(\S+) (\d+) (\S*)$/gm))
    reports.set(m[1]!, { status: Number(m[2]), text: Buffer.from(m[3]!, 'base64').toString('utf8') });
  return { out: output, reports };
}

function report(r: ReturnType<typeof inRoot>, key: string): string {
  const got = r.reports.get(key);
  if (!got) throw new Error(`no report "${key}" in:\n${r.out}`);
  if (got.status !== 0) throw new Error(`"${key}" exited ${got.status}: ${got.text}`);
  return got.text;
}

/** dpkg-deb -c lines as `mode owner path[ -> target]`. */
function listing(file: string): string[] {
  return run('dpkg-deb', ['-c', file])
    .trim()
    .split('\n')
    .map((line) => {
      const [mode, owner, , , , ...rest] = line.split(/\s+/);
      return `${mode} ${owner} ${rest.join(' ').replace(/^\.\//, '/')}`;
    });
}

(runs ? describe : describe.skip)(`the Debian package${skipNote}`, () => {
  beforeAll(() => {
    if (blocker) throw new Error(`the package test cannot run: ${blocker}`);
    work = mkdtempSync(path.join(os.tmpdir(), 'deb-test-'));
    out = path.join(work, 'out');
    run(process.execPath, ['--import', 'tsx', 'scripts/package-deb.ts', '--arch', arches.join(','), '--out', out], {
      timeout: 120_000,
    });
    // A stand-in for a machine whose Node.js did not come from a Debian package: it satisfies the
    // dependency in the overlay's package database; the node that runs is the machine's own.
    const standin = path.join(work, 'standin');
    mkdirSync(path.join(standin, 'DEBIAN'), { recursive: true });
    writeFileSync(
      path.join(standin, 'DEBIAN/control'),
      `Package: nodejs\nVersion: ${process.versions.node}\nArchitecture: all\nMaintainer: test <test@localhost>\n` +
        "Description: stand-in for this machine's node\n",
    );
    run('dpkg-deb', ['--root-owner-group', '--build', standin, path.join(work, 'nodejs-standin.deb')]);
  });

  afterAll(() => {
    if (!work) return;
    // The overlay's files belong to root and to the package's user.
    if (asRoot?.length) spawnSync('sudo', ['-n', 'rm', '-rf', work]);
    else rmSync(work, { recursive: true, force: true });
  });

  it('npm run package takes --arch and --help, and refuses an architecture it does not know', () => {
    const script = (...args: string[]) =>
      spawnSync(process.execPath, ['--import', 'tsx', 'scripts/package-deb.ts', ...args], {
        cwd: repoRoot,
        encoding: 'utf8',
      });
    const help = script('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/--arch ARCH\[,ARCH…\]\s+arm64, armhf, amd64 \(default: arm64 and armhf\)/);
    const bad = script('--arch', 'arm64,sparc');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toBe('package: unknown architecture sparc: expected arm64, armhf, amd64\n');
  });

  it('has the control fields: version from package.json, the architecture, nodejs (>= 20)', () => {
    for (const arch of arches) {
      const fields = Object.fromEntries(
        run('dpkg-deb', ['-f', deb(arch), 'Package', 'Version', 'Architecture', 'Depends', 'Maintainer'])
          .trim()
          .split('\n')
          .map((l) => l.split(/: (.*)/).slice(0, 2)),
      ) as Record<string, string>;
      expect(fields).toEqual({
        Package: 'rpi-flash-agent',
        Version: version,
        Architecture: arch,
        Depends: 'nodejs (>= 20), adduser',
        Maintainer: expect.stringMatching(/^[^<>]+ <[^@<>\s]+@[^@<>\s]+>$/) as string,
      });
      expect(Number(run('dpkg-deb', ['-f', deb(arch), 'Installed-Size']))).toBeGreaterThan(100);
    }
  });

  it('holds the same files for every architecture, all root-owned, no native binaries', () => {
    const files = listing(deb(hostArch));
    for (const arch of arches) expect(listing(deb(arch))).toEqual(files);
    expect(files.every((l) => l.split(' ')[1] === 'root/root')).toBe(true);
    const entry = (p: string) => files.find((l) => l.split(' ')[2] === p);
    expect(entry('/usr/bin/rpi-flash-agent')).toBe(
      'lrwxrwxrwx root/root /usr/bin/rpi-flash-agent -> ../lib/rpi-flash-agent/bin/rpi-flash-agent.js',
    );
    expect(entry('/usr/lib/rpi-flash-agent/bin/rpi-flash-agent.js')).toMatch(/^-rwxr-xr-x /);
    for (const p of [
      '/usr/lib/systemd/system/rpi-flash-agent.service',
      '/etc/rpi-flash/config.json',
      '/etc/rpi-flash/targets.csv',
      '/usr/lib/rpi-flash-agent/uboot/boot.scr',
      '/usr/lib/rpi-flash-agent/runner-agent/src/cli.js',
      '/usr/share/doc/rpi-flash-agent/copyright',
      '/usr/share/doc/rpi-flash-agent/changelog.gz',
      '/usr/share/man/man8/rpi-flash-agent.8.gz',
    ])
      expect(entry(p), p).toMatch(/^-rw-r--r-- /);
    expect(files.filter((l) => /\.node$|\/prebuilds\//.test(l))).toEqual([]);
    // The action's own dependencies are not the agent's.
    expect(files.filter((l) => l.includes('/node_modules/@actions/'))).toEqual([]);

    const tree = path.join(work, 'extracted');
    run('dpkg-deb', ['-x', deb(hostArch), tree]);
    const elf = run('sh', [
      '-c',
      `find "${tree}" -type f -exec sh -c 'head -c4 "$1" | grep -q ELF && echo "$1"' _ {} \\;`,
    ]);
    expect(elf).toBe('');
  });

  it('carries every npm package the agent imports', () => {
    // What the compiled agent imports, read from the package itself, must resolve inside it.
    const lib = path.join(work, 'extracted/usr/lib/rpi-flash-agent');
    const js = run('find', [path.join(lib, 'runner-agent'), path.join(lib, 'src'), '-name', '*.js'])
      .trim()
      .split('\n');
    const bare = new Set<string>();
    for (const file of js)
      for (const m of readFileSync(file, 'utf8').matchAll(/(?:from\s*|import\(\s*)['"]([^'"./][^'"]*)['"]/g))
        if (!m[1]!.startsWith('node:'))
          bare.add(
            m[1]!
              .split('/')
              .slice(0, m[1]!.startsWith('@') ? 2 : 1)
              .join('/'),
          );
    expect(bare.size).toBeGreaterThan(0);
    const shipped = new Set(readdirSync(path.join(lib, 'node_modules')));
    expect([...bare].filter((name) => !shipped.has(name.split('/')[0]!))).toEqual([]);
  });

  it('has conffiles for /etc/rpi-flash and executable maintainer scripts', () => {
    const control = path.join(work, 'control');
    run('dpkg-deb', ['-e', deb(hostArch), control]);
    expect(readFileSync(path.join(control, 'conffiles'), 'utf8')).toBe(
      '/etc/rpi-flash/config.json\n/etc/rpi-flash/targets.csv\n',
    );
    const modes = run('stat', ['-c', '%n %a', ...['postinst', 'prerm', 'postrm'].map((s) => path.join(control, s))]);
    expect(
      modes
        .trim()
        .split('\n')
        .map((l) => l.split(' ')[1]),
    ).toEqual(['755', '755', '755']);
  });

  it('installs with dpkg: user in gpio, token 0640 root:rpi-flash, unit enabled, --check passes', () => {
    // What a gpio: reset meets in the package: onoff without its native part.
    const loadOnoff =
      "import('/usr/lib/rpi-flash-agent/runner-agent/src/reset/gpio-sysfs.js').then((m) => m.loadOnoff())" +
      ".then(() => console.log('loaded'), (e) => console.log(e.message))";
    const r = inRoot(`
      LOAD_ONOFF="${loadOnoff}"
      chroot "$ROOT" sh -c 'getent group gpio >/dev/null || groupadd --system gpio'
      v=$(dpkg-query --root="$ROOT" -W -f='\${Version}' nodejs 2>/dev/null || true)
      if [ -z "$v" ] || dpkg --compare-versions "$v" lt 20; then dpkg --root="$ROOT" -i ${work}/nodejs-standin.deb; fi
      rep install dpkg --root="$ROOT" -i "$DEB"
      rep groups chroot "$ROOT" id -nG rpi-flash
      rep home chroot "$ROOT" sh -c 'getent passwd rpi-flash | cut -d: -f6,7'
      rep token chroot "$ROOT" stat -c '%U:%G %a' /etc/rpi-flash/token
      rep tokenlength chroot "$ROOT" sh -c 'tr -d "\\n" </etc/rpi-flash/token | wc -c'
      rep state chroot "$ROOT" stat -c '%U:%G %a' /var/lib/rpi-flash
      rep enabled readlink "$ROOT/etc/systemd/system/multi-user.target.wants/rpi-flash-agent.service"
      rep verify systemd-analyze verify --root="$ROOT" /usr/lib/systemd/system/rpi-flash-agent.service
      rep version $AGENT /usr/bin/rpi-flash-agent --version
      rep check $AGENT /usr/bin/rpi-flash-agent --config /etc/rpi-flash/config.json --check
      rep makecard $AGENT /usr/bin/rpi-flash-agent make-card --help
      rep onoff $AGENT /usr/bin/node --input-type=module -e "$LOAD_ONOFF"
      rep root chroot "$ROOT" /usr/bin/rpi-flash-agent --config /etc/rpi-flash/config.json --check
      # The example config served for a moment, on loopback and free ports.
      log=$ROOT/tmp/agent.log
      $AGENT /usr/bin/rpi-flash-agent --config /etc/rpi-flash/config.json --listen 127.0.0.1:0 \\
        --tftp-address 127.0.0.1 --tftp-port 0 >"$log" 2>&1 &
      pid=$!
      i=0; while [ $i -lt 300 ] && ! grep -q 'agent listening' "$log"; do sleep 0.1; i=$((i+1)); done
      kill -TERM $pid; s=0; wait $pid || s=$?
      rep serve sh -c "cat '$log'; echo exit=$s"
      rep tokensum sha256sum "$ROOT/etc/rpi-flash/token"
    `);
    expect(report(r, 'install')).toContain('generated the client token in /etc/rpi-flash/token');
    expect(report(r, 'groups').split(' ')).toEqual(expect.arrayContaining(['rpi-flash', 'gpio']));
    expect(report(r, 'home')).toBe('/var/lib/rpi-flash:/usr/sbin/nologin');
    expect(report(r, 'token')).toBe('root:rpi-flash 640');
    expect(Number(report(r, 'tokenlength'))).toBeGreaterThanOrEqual(43);
    expect(report(r, 'state')).toBe('rpi-flash:rpi-flash 750');
    expect(report(r, 'enabled')).toMatch(/\/systemd\/system\/rpi-flash-agent\.service$/);
    expect(report(r, 'verify')).toBe('');
    expect(report(r, 'version')).toBe(pkg.version);
    expect(report(r, 'check')).toBe('configuration OK; 0 target(s): ');
    expect(report(r, 'makecard')).toMatch(/make-card/);
    expect(report(r, 'onoff')).toMatch(/^gpio: resets drive the line with onoff, whose native part did not load/);
    expect(r.reports.get('root')).toMatchObject({ status: 2 });
    expect(r.reports.get('root')?.text).toMatch(/refusing to run as root/);
    const served = report(r, 'serve');
    expect(served).toMatch(/agent listening.*ws:\/\/127\.0\.0\.1:\d+/);
    expect(served).toMatch(/exit=0$/);
    tokenSum = report(r, 'tokensum');
  });

  it('a second install keeps the token and the edited config and targets; --check warns of gpio:', () => {
    expect(tokenSum, 'the first install ran').not.toBe('');
    const r = inRoot(`
      sed -i 's/"logLevel": "info"/"logLevel": "warn"/' "$ROOT/etc/rpi-flash/config.json"
      echo 'sim-1,02:00:00:00:00:01,127.0.0.21,sim,,,,whole,' >>"$ROOT/etc/rpi-flash/targets.csv"
      echo 'pi3-01,b8:27:eb:28:f6:6d,192.168.50.11,gpio:17,pi3,,,,' >>"$ROOT/etc/rpi-flash/targets.csv"
      rep install dpkg --root="$ROOT" -i "$DEB"
      rep tokensum sha256sum "$ROOT/etc/rpi-flash/token"
      rep loglevel grep -c '"logLevel": "warn"' "$ROOT/etc/rpi-flash/config.json"
      rep check $AGENT /usr/bin/rpi-flash-agent --config /etc/rpi-flash/config.json --check
    `);
    expect(report(r, 'install')).not.toContain('generated the client token');
    expect(report(r, 'tokensum')).toBe(tokenSum);
    expect(report(r, 'loglevel')).toBe('1');
    const check = report(r, 'check');
    expect(check).toMatch(
      /^configuration OK; 2 target\(s\): sim-1 \(02:00:00:00:00:01, 127\.0\.0\.21, sim\), pi3-01 \(.*gpio:17\)$/m,
    );
    // --check says up front what a gpio: reset will meet in the package.
    expect(check).toMatch(/^rpi-flash-agent: warning: pi3-01: gpio: resets drive the line with onoff, whose native/m);
  });

  it('purge removes the configuration, keeps the state and the user; RPI_FLASH_PURGE_STATE=1 the state too', () => {
    expect(tokenSum, 'the first install ran').not.toBe('');
    const exists = (p: string) => `sh -c 'test -e "$ROOT${p}" && echo present || echo gone'`;
    const r = inRoot(`
      mkdir -p "$ROOT/var/lib/rpi-flash/store" && echo image >"$ROOT/var/lib/rpi-flash/store/marker"
      rep purge dpkg --root="$ROOT" --purge rpi-flash-agent
      rep etc ${exists('/etc/rpi-flash')}
      rep lib ${exists('/usr/lib/rpi-flash-agent')}
      rep unit ${exists('/etc/systemd/system/multi-user.target.wants/rpi-flash-agent.service')}
      rep marker cat "$ROOT/var/lib/rpi-flash/store/marker"
      rep user chroot "$ROOT" id -un rpi-flash
      rep reinstall dpkg --root="$ROOT" -i "$DEB"
      rep tokensum sha256sum "$ROOT/etc/rpi-flash/token"
      rep remove dpkg --root="$ROOT" --remove rpi-flash-agent
      rep removedconfig cat "$ROOT/etc/rpi-flash/targets.csv"
      rep removedlib ${exists('/usr/lib/rpi-flash-agent')}
      rep purgestate env RPI_FLASH_PURGE_STATE=1 dpkg --root="$ROOT" --purge rpi-flash-agent
      rep state ${exists('/var/lib/rpi-flash')}
      rep etc2 ${exists('/etc/rpi-flash')}
    `);
    expect(report(r, 'purge')).toContain('kept /var/lib/rpi-flash');
    expect(report(r, 'etc')).toBe('gone');
    expect(report(r, 'lib')).toBe('gone');
    expect(report(r, 'unit')).toBe('gone');
    expect(report(r, 'marker')).toBe('image');
    expect(report(r, 'user')).toBe('rpi-flash');
    // Purged, the token went with the configuration: the next install makes a new one.
    expect(report(r, 'reinstall')).toContain('generated the client token');
    expect(report(r, 'tokensum')).not.toBe(tokenSum);
    // Remove (not purge) keeps the configuration.
    expect(report(r, 'removedconfig')).toMatch(/^name,mac,ip,reset/m);
    expect(report(r, 'removedlib')).toBe('gone');
    expect(report(r, 'purgestate')).not.toContain('kept');
    expect(report(r, 'state')).toBe('gone');
    expect(report(r, 'etc2')).toBe('gone');
  });
});
