/**
 * `npm run package [-- --arch ARCH[,ARCH…]] [--out DIR]`: the lab agent as Debian packages, one per
 * architecture (README, "Install the agent on a lab server"). Needs dpkg-deb (package dpkg).
 *
 * The package is JavaScript for the machine's Node.js (`Depends: nodejs (>= 20)`), laid out under
 * /usr/lib/rpi-flash-agent as the repository is (runner-agent/src, src/protocol, uboot/,
 * node_modules/), so every path the agent finds relative to its own files (uboot/boot.scr) holds
 * as it does in a checkout. Why tsc output and not an ncc bundle of the same compiled agent: the
 * bundle is smaller (measured 2026-12-07: 1.06 MB, 204 KB as tar.xz, against 3.04 MB installed and
 * a 308 KB .deb here) but not right: webpack turns `new URL('../../uboot/boot.scr', import.meta.url)`
 * into a hashed 58-byte stub file, which the inject layout would then carry as stage 1, and it
 * copies the build machine's x64 add-ons (epoll.node, bufferutil.node) in beside the bundle.
 *
 * What goes in is found, not listed: tsc compiles runner-agent/src/cli.ts and what it imports
 * (packaging/tsconfig.json), the compiled files' bare imports name the npm packages, and each
 * package's dependencies and optionalDependencies (as installed in node_modules/) follow. A
 * dependency another engineer adds to the agent is therefore in the next package; the action's
 * dependencies (imported by src/action only) are not.
 *
 * Native parts are left out (compiled for this machine, they would not load on a Pi): `*.node`
 * files, `prebuilds/`, and the `build/` beside any binding.gyp (at a package's root or deeper).
 * What that costs is printed:
 * onoff's epoll, so `gpio:` resets (use `gpiod:`). The build fails if any ELF file remains.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  openSync,
  readSync,
  closeSync,
} from 'node:fs';
import { builtinModules } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NAME = 'rpi-flash-agent';
const LIB = `usr/lib/${NAME}`;
/** Architectures a package can be built for: the Pis' two, and amd64 for x86 lab servers and tests. */
const ARCHES = ['arm64', 'armhf', 'amd64'];
const DEFAULT_ARCHES = ['arm64', 'armhf'];
/** Files of the repository the agent reads beside its code: stage 1, served to boards and carried into images. */
const ASSETS = ['uboot/boot.scr', 'uboot/boot.cmd'];
/** Licenses whose text every Debian system has in /usr/share/common-licenses (package base-files). */
const COMMON_LICENSES = ['Apache-2.0', 'Artistic', 'BSD', 'CC0-1.0', 'GPL-2', 'GPL-3', 'LGPL-2.1', 'LGPL-3', 'MPL-2.0'];
/** Configuration dpkg keeps as the admin edited it (DEBIAN/conffiles). */
const CONFFILES = ['etc/rpi-flash/config.json', 'etc/rpi-flash/targets.csv'];

const HELP = `npm run package [-- options]: build the lab agent's Debian packages with dpkg-deb

  --arch ARCH[,ARCH…]  ${ARCHES.join(', ')} (default: ${DEFAULT_ARCHES.join(' and ')}); the contents
                       are the same JavaScript, only the Architecture field differs
  --out DIR            output folder (default: build/deb): ${NAME}_<version>_<arch>.deb
  -h, --help           this help

Install on the lab server: sudo apt install ./${NAME}_<version>_arm64.deb (README, "Install the agent").
`;

interface PackageJson {
  name?: string;
  version?: string;
  description?: string;
  license?: string;
  homepage?: string;
  author?: string | { name?: string; email?: string };
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

/** An npm package the agent needs, where it is installed (relative to the repository). */
interface NpmPackage {
  name: string;
  version: string;
  license: string;
  dir: string;
  /** Native files left out of the package. */
  leftOut: string[];
}

class PackageError extends Error {}

function main(argv: string[]): number {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        arch: { type: 'string', multiple: true },
        out: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    process.stderr.write(`package: ${(err as Error).message}\n${HELP}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const arches = (values.arch ?? DEFAULT_ARCHES).flatMap((a) => a.split(',')).filter(Boolean);
  const unknown = arches.filter((a) => !ARCHES.includes(a));
  if (unknown.length) {
    process.stderr.write(`package: unknown architecture ${unknown.join(', ')}: expected ${ARCHES.join(', ')}\n`);
    return 2;
  }
  const out = path.resolve(values.out ?? path.join(ROOT, 'build/deb'));
  try {
    for (const deb of buildPackages(out, [...new Set(arches)])) process.stdout.write(`package: wrote ${deb}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`package: ${(err as Error).message}\n`);
    return 1;
  }
}

function buildPackages(out: string, arches: string[]): string[] {
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as PackageJson;
  if (!pkg.version) throw new PackageError('package.json has no version');
  // npm's 1.2.0-rc.1 sorts before 1.2.0; Debian's ~ does that, its - would start a revision.
  const version = pkg.version.replace(/-/g, '~');
  const js = path.join(out, 'js');
  const stage = path.join(out, 'root');
  rmSync(js, { recursive: true, force: true });
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });

  run(process.execPath, [
    path.join(ROOT, 'node_modules/typescript/bin/tsc'),
    '-p',
    path.join(ROOT, 'packaging/tsconfig.json'),
    '--outDir',
    js,
  ]);

  const lib = path.join(stage, LIB);
  const compiled = walk(js).filter((f) => f.endsWith('.js'));
  for (const rel of compiled) copy(path.join(js, rel), path.join(lib, rel), 0o644);
  for (const rel of ASSETS) copy(path.join(ROOT, rel), path.join(lib, rel), 0o644);
  writeFileSync(
    path.join(lib, 'package.json'),
    JSON.stringify({ name: NAME, version: pkg.version, private: true, type: 'module' }, null, 2) + '\n',
  );
  writeFileSync(
    path.join(mkdirs(lib, 'bin'), `${NAME}.js`),
    '#!/usr/bin/node\n' +
      '// rpi-flash-agent, installed by its Debian package: /usr/bin/rpi-flash-agent links here.\n' +
      "import { main } from '../runner-agent/src/cli.js';\n\n" +
      'main(process.argv.slice(2)).then((code) => process.exit(code));\n',
    { mode: 0o755 },
  );
  chmodSync(path.join(lib, 'bin', `${NAME}.js`), 0o755);
  mkdirSync(path.join(stage, 'usr/bin'), { recursive: true });
  symlinkSync(`../lib/${NAME}/bin/${NAME}.js`, path.join(stage, 'usr/bin', NAME));

  const npmPackages = dependencyClosure(
    compiled.flatMap((rel) => bareImports(readFileSync(path.join(js, rel), 'utf8'))),
    // Resolved where the sources are (the compiled copy may be outside the repository).
    path.join(ROOT, 'runner-agent/src'),
  );
  for (const p of npmPackages) copyNpmPackage(p, path.join(lib, p.dir));
  for (const p of npmPackages)
    if (p.leftOut.length)
      process.stdout.write(
        `package: left out ${p.name}'s native part (${p.leftOut.join(', ')}): built for this machine\n`,
      );

  copy(
    path.join(ROOT, 'runner-agent/rpi-flash-agent.service'),
    path.join(stage, `usr/lib/systemd/system/${NAME}.service`),
    0o644,
  );
  for (const rel of CONFFILES)
    copy(path.join(ROOT, 'packaging', rel.replace(/^etc\/rpi-flash\//, 'etc/')), path.join(stage, rel), 0o644);
  const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? gitCommitTime() ?? Math.floor(Date.now() / 1000));
  const doc = mkdirs(stage, `usr/share/doc/${NAME}`);
  writeFileSync(path.join(doc, 'copyright'), copyright(pkg, npmPackages));
  writeFileSync(path.join(doc, 'changelog.gz'), gzipSync(changelog(version, maintainer(pkg), epoch), { level: 9 }));
  // The staged agent must start: its --help, run from the package's own files, is also its manual page.
  const help = execFileSync(process.execPath, [path.join(lib, 'bin', `${NAME}.js`), '--help'], { encoding: 'utf8' });
  writeFileSync(
    path.join(mkdirs(stage, 'usr/share/man/man8'), `${NAME}.8.gz`),
    gzipSync(manPage(help, version, epoch), { level: 9 }),
  );
  // csv-parse's own four-line lib/utils/underscore.js is not the underscore library lintian takes it for.
  writeFileSync(
    path.join(mkdirs(stage, 'usr/share/lintian/overrides'), NAME),
    `${NAME}: embedded-javascript-library please use libjs-underscore ` +
      `[${LIB}/node_modules/csv-parse/lib/utils/underscore.js]\n`,
  );

  const elf = walk(stage).filter((rel) => isElf(path.join(stage, rel)));
  if (elf.length) throw new PackageError(`native binaries would ship: ${elf.join(', ')}`);

  const debian = mkdirs(stage, 'DEBIAN');
  for (const script of ['postinst', 'prerm', 'postrm'])
    copy(path.join(ROOT, 'packaging/debian', script), path.join(debian, script), 0o755);
  writeFileSync(path.join(debian, 'conffiles'), CONFFILES.map((f) => `/${f}\n`).join(''));

  // Reproducible: every file dated by the last commit (dpkg-deb clamps to SOURCE_DATE_EPOCH too).
  for (const rel of walk(stage, true)) {
    const file = path.join(stage, rel);
    if (!lstatSync(file).isSymbolicLink()) utimesSync(file, epoch, epoch);
  }

  const installedKiB = walk(stage)
    .filter((rel) => !rel.startsWith('DEBIAN/'))
    .reduce((kib, rel) => kib + Math.ceil(lstatSync(path.join(stage, rel)).size / 1024), 0);
  const debs: string[] = [];
  for (const arch of arches) {
    writeFileSync(path.join(debian, 'control'), control(pkg, version, arch, installedKiB));
    utimesSync(path.join(debian, 'control'), epoch, epoch);
    const deb = path.join(out, `${NAME}_${version}_${arch}.deb`);
    run('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', stage, deb], { SOURCE_DATE_EPOCH: String(epoch) });
    debs.push(deb);
  }
  return debs;
}

function control(pkg: PackageJson, version: string, arch: string, installedKiB: number): string {
  return (
    [
      `Package: ${NAME}`,
      `Version: ${version}`,
      `Architecture: ${arch}`,
      `Maintainer: ${maintainer(pkg)}`,
      `Installed-Size: ${installedKiB}`,
      'Depends: nodejs (>= 20), adduser',
      // xz/zstd images, gpiod: resets, the U-Boot builds the inject layout carries.
      'Recommends: xz-utils, zstd, gpiod, u-boot-rpi, nbdkit, lz4',
      'Section: admin',
      'Priority: optional',
      ...(pkg.homepage ? [`Homepage: ${pkg.homepage}`] : []),
      'Description: lab agent of rpi-flash: GitHub Actions flash Raspberry Pi boards',
      " The runner agent of rpi-flash: it leases the lab's Raspberry Pi boards to",
      ' GitHub Actions workflows, takes their images over WebSocket, serves them to',
      " the boards' U-Boot from its own TFTP server, resets the boards and checks",
      ' that they boot.',
      ' .',
      ' Configure it in /etc/rpi-flash/config.json and /etc/rpi-flash/targets.csv.',
    ].join('\n') + '\n'
  );
}

/** A native package's Debian changelog: one entry for this build. */
function changelog(version: string, by: string, epoch: number): string {
  const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout?.trim();
  // RFC 2822, as dpkg-parsechangelog wants it: "Mon, 07 Dec 2026 00:45:07 +0000".
  const date = new Date(epoch * 1000).toUTCString().replace('GMT', '+0000');
  return (
    `${NAME} (${version}) unstable; urgency=medium\n\n` +
    `  * Built by npm run package${commit ? ` from rpi-flash ${commit}` : ''}.\n\n` +
    ` -- ${by}  ${date}\n`
  );
}

/** rpi-flash-agent(8): the --help text, verbatim. */
function manPage(help: string, version: string, epoch: number): string {
  const day = new Date(epoch * 1000).toISOString().slice(0, 10);
  const roff = help
    .trimEnd()
    .split('\n')
    .map((l) => l.replace(/\\/g, '\\e').replace(/^([.'])/, '\\&$1'))
    .join('\n');
  return (
    `.TH RPI-FLASH-AGENT 8 ${day} "${NAME} ${version}"\n` +
    `.SH NAME\n${NAME} \\- flash Raspberry Pi boards in a lab for the rpi-flash GitHub Action\n` +
    `.SH DESCRIPTION\n.nf\n${roff}\n.fi\n` +
    '.SH FILES\n/etc/rpi-flash/config.json, /etc/rpi-flash/targets.csv, /etc/rpi-flash/token, /var/lib/rpi-flash\n'
  );
}

/** DEBFULLNAME/DEBEMAIL (what Debian's tools read), else package.json's author, else the project. */
function maintainer(pkg: PackageJson): string {
  if (process.env.DEBFULLNAME && process.env.DEBEMAIL) return `${process.env.DEBFULLNAME} <${process.env.DEBEMAIL}>`;
  const author = pkg.author;
  if (typeof author === 'string' && /<[^>]+@[^>]+>/.test(author)) return author.replace(/\s*\(.*\)$/, '');
  if (typeof author === 'object' && author.name && author.email) return `${author.name} <${author.email}>`;
  return 'rpi-flash maintainers <rpi-flash@users.noreply.github.com>';
}

function copyright(pkg: PackageJson, npmPackages: NpmPackage[]): string {
  const license = readFileSync(path.join(ROOT, 'LICENSE'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => (l.trim() ? ` ${l}` : ' .'))
    .join('\n');
  const stanzas = [
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
    `Upstream-Name: ${pkg.name ?? 'rpi-flash'}`,
    '',
    'Files: *',
    'Copyright: the rpi-flash contributors',
    `License: ${pkg.license ?? 'MIT'}`,
    '',
  ];
  for (const p of npmPackages)
    stanzas.push(
      `Files: ${LIB}/${p.dir}/*`,
      `Copyright: the authors of ${p.name} ${p.version} (see its LICENSE file)`,
      `License: ${p.license}`,
      '',
    );
  stanzas.push(`License: ${pkg.license ?? 'MIT'}`, license, '');
  // Every other license named above gets its standalone paragraph, as the format asks.
  for (const other of new Set(npmPackages.map((p) => p.license).filter((l) => l !== (pkg.license ?? 'MIT'))))
    stanzas.push(
      `License: ${other}`,
      COMMON_LICENSES.includes(other)
        ? ` On Debian systems the full text is in /usr/share/common-licenses/${other}.`
        : ` The full text is in the LICENSE file of each package under ${LIB}/node_modules that names it.`,
      '',
    );
  return stanzas.join('\n');
}

/** The npm package names `import … from 'x'`, `export … from 'x'` and `import('x')` name in compiled code. */
export function bareImports(code: string): string[] {
  const specifiers = [
    ...code.matchAll(/^\s*(?:import|export)\s[^'"]*?\bfrom\s*['"]([^'"]+)['"]/gm),
    ...code.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm),
    ...code.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => m[1]!);
  const builtin = new Set(builtinModules);
  return specifiers
    .filter((s) => !s.startsWith('.') && !s.startsWith('/') && !s.startsWith('node:') && !builtin.has(s.split('/')[0]!))
    .map((s) =>
      s
        .split('/')
        .slice(0, s.startsWith('@') ? 2 : 1)
        .join('/'),
    );
}

/** The packages `names` resolve to from `fromDir`, and everything they depend on, as installed. */
function dependencyClosure(names: string[], fromDir: string): NpmPackage[] {
  const found = new Map<string, NpmPackage>();
  const queue = [...new Set(names)].map((name) => ({ name, from: fromDir, optional: false }));
  while (queue.length) {
    const { name, from, optional } = queue.shift()!;
    const dir = resolvePackage(name, from);
    if (!dir) {
      if (optional) continue;
      throw new PackageError(`the agent needs the npm package ${name}, which is not installed (npm ci)`);
    }
    const rel = path.relative(ROOT, dir);
    if (found.has(rel)) continue;
    const meta = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
    found.set(rel, {
      name,
      version: meta.version ?? '?',
      license: meta.license ?? 'unknown',
      dir: rel,
      leftOut: [],
    });
    for (const dep of Object.keys(meta.dependencies ?? {})) queue.push({ name: dep, from: dir, optional: false });
    for (const dep of Object.keys(meta.optionalDependencies ?? {}))
      queue.push({ name: dep, from: dir, optional: true });
    for (const dep of Object.keys(meta.peerDependencies ?? {}))
      if (!meta.peerDependenciesMeta?.[dep]?.optional) queue.push({ name: dep, from: dir, optional: false });
  }
  return [...found.values()].sort((a, b) => a.dir.localeCompare(b.dir));
}

/** Node's lookup: node_modules/<name> in `from` and each folder above it, up to the repository. */
function resolvePackage(name: string, from: string): string | undefined {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name);
    if (existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === ROOT || dir === path.dirname(dir)) return undefined;
  }
}

/** A package's files without its tests, docs, TypeScript types, and native binaries. */
function copyNpmPackage(p: NpmPackage, to: string): void {
  const from = path.join(ROOT, p.dir);
  // A native part's build/ lies beside its binding.gyp, at the package's root or deeper (ssh2's crypto).
  const nativeBuild = (rel: string) =>
    path.basename(rel) === 'build' && existsSync(path.join(from, path.dirname(rel), 'binding.gyp'));
  const nativeBuilds: string[] = [];
  const skipDir = (rel: string) => {
    if (nativeBuild(rel)) {
      nativeBuilds.push(`${rel}/`);
      return true;
    }
    return (
      /(^|\/)(node_modules|tests?|__tests__|examples?|docs?|benchmarks?|\.github)$/.test(rel) || rel === 'prebuilds'
    );
  };
  const skipFile = (rel: string) =>
    (/\.(d\.[cm]?ts|map|md|markdown)$/i.test(rel) && !/^licen[cs]e/i.test(rel)) || /(^|\/)\./.test(rel);
  for (const rel of walk(from, false, skipDir)) {
    if (rel.endsWith('.node')) {
      p.leftOut.push(rel);
      continue;
    }
    if (skipFile(rel)) continue;
    const mode = statSync(path.join(from, rel)).mode & 0o111 ? 0o755 : 0o644;
    copy(path.join(from, rel), path.join(to, rel), mode);
  }
  if (existsSync(path.join(from, 'prebuilds'))) p.leftOut.push('prebuilds/');
  p.leftOut.push(...nativeBuilds);
}

function copy(from: string, to: string, mode: number): void {
  mkdirSync(path.dirname(to), { recursive: true });
  copyFileSync(from, to);
  chmodSync(to, mode);
}

function mkdirs(...parts: string[]): string {
  const dir = path.join(...parts);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Files under `dir` (relative, `/`-separated, sorted); with `dirs`, the folders too. */
function walk(dir: string, dirs = false, skipDir: (rel: string) => boolean = () => false, prefix = ''): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(path.join(dir, prefix), { withFileTypes: true }).sort((a, b) =>
    a.name.localeCompare(b.name),
  )) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) {
      if (skipDir(rel)) continue;
      if (dirs) found.push(rel);
      found.push(...walk(dir, dirs, skipDir, rel));
    } else found.push(rel);
  }
  return found;
}

function isElf(file: string): boolean {
  if (!lstatSync(file).isFile()) return false;
  const fd = openSync(file, 'r');
  try {
    const head = Buffer.alloc(4);
    return readSync(fd, head, 0, 4, 0) === 4 && head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } finally {
    closeSync(fd);
  }
}

function gitCommitTime(): number | undefined {
  const r = spawnSync('git', ['log', '-1', '--format=%ct'], { cwd: ROOT, encoding: 'utf8' });
  return r.status === 0 && /^\d+\s*$/.test(r.stdout) ? Number(r.stdout) : undefined;
}

function run(command: string, args: string[], env: Record<string, string> = {}): void {
  const r = spawnSync(command, args, { cwd: ROOT, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.error && 'code' in r.error && r.error.code === 'ENOENT')
    throw new PackageError(`${command} is not installed${command === 'dpkg-deb' ? ' (Debian package dpkg)' : ''}`);
  if (r.error) throw new PackageError(`${command}: ${r.error.message}`);
  if (r.status !== 0) throw new PackageError(`${command} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = main(process.argv.slice(2));
