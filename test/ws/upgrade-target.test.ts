/**
 * A request-target `new URL()` cannot parse (`//[`, `//a:b`) reached the agent's upgrade handler
 * before the token check and threw out of it: one unauthenticated request stopped the agent. Now
 * such a request is answered 400 with a code, and the agent goes on serving.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startLab, type Lab } from '../support/lab.js';
import { exchange, statusOf, upgradeRequest } from './raw-http.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

describe('an upgrade request with a malformed request-target', () => {
  it('is answered 400 BAD_REQUEST before the token check, and the agent serves the next client', async () => {
    lab = await startLab({ boards: [{ name: 'pi', mac: '02:00:00:00:09:01' }] });
    for (const target of ['//[', '//a:b', 'http://[/v1/ws', '//x y']) {
      const r = await exchange(lab.agent.url, upgradeRequest(target));
      expect(statusOf(r.reply), `${target}: ${r.reply}`).toBe(400);
      expect(r.reply).toContain('BAD_REQUEST');
      expect(r.closed).toBe(true);
    }
    const conn = await lab.connect();
    await expect(conn.lease('pi')).resolves.toMatchObject({ target: { name: 'pi' } });
  });
});
