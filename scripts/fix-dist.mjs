#!/usr/bin/env node
/**
 * Last step of `npm run bundle` (after tsc → .cache/action-js and ncc → dist/): makes the bundle
 * deterministic and checks what would break it on a runner.
 *
 * - dist/package.json is written here, byte for byte, so Node treats dist/index.js as ESM whatever
 *   ncc version wrote it (a CommonJS reading of the ESM bundle crashes at run time, DESIGN §7).
 * - Files ncc did not produce in this run (left from an older build) are removed, so dist/ is a
 *   pure function of the sources and the rebuild-and-compare check is meaningful.
 * - The bundle must not embed the build machine's paths (a checkout elsewhere would differ), must
 *   not contain `new Buffer(` / `Buffer(` calls (DEP0005 printed in every step log), and must load
 *   `bufferutil` only inside a try/catch (it is an optional native speed-up; a runner on another
 *   platform must fall back to JavaScript, not fail).
 *
 * Usage: node scripts/fix-dist.mjs [dist-dir]   (default: dist)
 */
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.resolve(process.argv[2] ?? path.join(root, 'dist'));
const problems = [];

// What ncc emits for this action: the bundle, its licenses, the package.json, and bufferutil's prebuilds.
const expected = (rel) =>
  rel === 'index.js' || rel === 'licenses.txt' || rel === 'package.json' || rel.startsWith('prebuilds/');
for (const rel of walk(dist)) {
  if (!expected(rel)) {
    rmSync(path.join(dist, rel));
    console.log(`fix-dist: removed stale ${rel}`);
  }
}

writeFileSync(path.join(dist, 'package.json'), '{\n  "type": "module"\n}\n');

const bundlePath = path.join(dist, 'index.js');
const original = readFileSync(bundlePath, 'utf8');
// Line endings and a final newline do not depend on the platform that built it.
let bundle = original.replace(/\r\n/g, '\n').replace(/\s*$/, '\n');
// Known DEP0005 sites in dependencies, rewritten to the equivalent safe call. `tunnel` (via
// @actions/http-client) builds the proxy's Basic auth header with `new Buffer(string)`, which warns
// on every runner with an authenticated proxy. `Buffer.from(string)` is the same for a string.
const PATCHES = [['new Buffer(connectOptions.proxyAuth)', 'Buffer.from(connectOptions.proxyAuth)']];
for (const [from, to] of PATCHES) bundle = bundle.replaceAll(from, to);
// ncc names each module in a comment by its path under the tsc output folder; name it by its
// source path instead, so a build from another folder (the in-sync check) gives the same bytes.
bundle = bundle.replace(/(\/\/ CONCATENATED MODULE: )\.\/\.cache\/action-js[\w.-]*\//g, '$1./');
if (bundle !== original) writeFileSync(bundlePath, bundle);

for (const leaked of new Set([root, root.replaceAll('\\', '/'), process.env.HOME].filter((p) => p && p.length > 1))) {
  if (bundle.includes(leaked)) problems.push(`dist/index.js embeds the build path ${leaked}`);
}
const deprecatedBuffer = /(?<![\w.$])(?:new\s+)?Buffer\s*\(/g;
for (const match of bundle.matchAll(deprecatedBuffer)) {
  const line = bundle.slice(0, match.index).split('\n').length;
  problems.push(`dist/index.js:${line} calls the deprecated Buffer() constructor (DEP0005): ${match[0]}`);
}
for (const match of bundle.matchAll(/createRequire\([^)]*\)\([^)]*\.node"\)/g)) {
  const before = bundle.slice(Math.max(0, match.index - 200), match.index);
  if (!/try\s*\{\s*(module\.exports\s*=\s*)?[^{}]*$/.test(before)) {
    problems.push(`dist/index.js loads a native module outside a try/catch: ${match[0]}`);
  }
}

if (problems.length > 0) {
  console.error(`fix-dist: the bundle is not fit to ship:\n- ${problems.join('\n- ')}`);
  process.exit(1);
}
console.log(`fix-dist: ${path.relative(root, dist) || dist} ok (${statSync(bundlePath).size} bytes)`);

function walk(dir, prefix = '') {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix + entry.name;
    if (entry.isDirectory()) out.push(...walk(path.join(dir, entry.name), rel + '/'));
    else out.push(rel);
  }
  return out;
}
