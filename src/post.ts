/**
 * The post step: a safety net, never the only cleanup. If the main step ended while still holding
 * a lease (killed, or its own cancel got no answer), cancel that lease on the agent from a fresh
 * connection so the board and its staged files are freed now rather than after the agent's grace
 * period. It never fails the job: the main step already decided the result.
 */
import * as core from '@actions/core';
import { connectAgent } from './protocol/client.js';
import { messageOf } from './protocol/errors.js';
import type { Connect } from './action/agent-link.js';
import { State } from './action/constants.js';
import { parseSettings } from './action/settings.js';
import { withTimer } from './action/waits.js';

const POST_TIMEOUT_MS = 10_000;

export interface PostDeps {
  getState: (name: string) => string;
  getInput: (name: string) => string;
  connect: Connect;
  env: NodeJS.ProcessEnv;
}

export async function runPost(overrides: Partial<PostDeps> = {}): Promise<void> {
  const d: PostDeps = {
    getState: (name) => core.getState(name),
    getInput: (name) => core.getInput(name),
    connect: connectAgent,
    env: process.env,
    ...overrides,
  };
  const lease = d.getState(State.lease);
  const url = d.getState(State.agentUrl);
  if (!lease || !url) {
    core.info('Nothing left to clean up on the agent.');
    return;
  }
  core.info(`The main step ended holding lease ${lease} on ${d.getState(State.target)}: cancelling it on the agent.`);
  let conn: Awaited<ReturnType<Connect>> | undefined;
  try {
    const settings = parseSettings(d.getInput, { env: d.env, registerSecret: (s) => core.setSecret(s) });
    const work = (async () => {
      conn = await d.connect({
        url,
        token: settings.token,
        ...(settings.caCert !== undefined && { ca: settings.caCert }),
        client: `rpi-flash-action post (${settings.holder})`,
        connectTimeoutMs: Math.min(settings.connectTimeoutMs, POST_TIMEOUT_MS),
      });
      await conn.cancel({ lease, reason: 'post step: the main step ended without releasing its lease' });
    })();
    await withTimer(work, POST_TIMEOUT_MS, () => new Error(`no answer within ${POST_TIMEOUT_MS / 1000} s`));
    core.info(`Lease ${lease} released.`);
  } catch (err) {
    core.warning(
      `Could not cancel lease ${lease} on the agent: ${messageOf(err)}. ` +
        'The agent frees it after its grace period.',
    );
  } finally {
    conn?.close();
  }
}
