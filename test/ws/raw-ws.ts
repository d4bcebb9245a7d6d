/**
 * A raw protocol session for tests that misbehave on purpose (never read, ignore acks, send
 * garbage): a bare `ws` client with the lab's token, an inbox of the agent's messages, and the
 * close code once the agent hangs up.
 */
import WebSocket from 'ws';
import { LAB_TOKEN } from '../support/lab.js';
import { PROTOCOL_VERSION, WS_PATH, type AgentMessage } from '../../src/protocol/messages.js';

/** How long a test waits for one thing: a safety net for a loaded machine, not a figure. */
export const WAIT_MS = 30_000;

export interface RawSession {
  ws: WebSocket;
  inbox: AgentMessage[];
  send(m: object): void;
  /** The first message `pred` takes (removed from the inbox); after WAIT_MS an error naming it. */
  next(pred: (m: AgentMessage) => boolean, what: string): Promise<AgentMessage>;
  /** The close code, once closed. */
  closed: Promise<number>;
}

export async function rawSession(url: string, o: { hello?: boolean; maxPayload?: number } = {}): Promise<RawSession> {
  const ws = new WebSocket(`${url}${WS_PATH}`, {
    headers: { Authorization: `Bearer ${LAB_TOKEN}` },
    perMessageDeflate: false,
    ...(o.maxPayload ? { maxPayload: o.maxPayload } : {}),
  });
  const inbox: AgentMessage[] = [];
  const waiters = new Set<() => void>();
  ws.on('message', (d, binary) => {
    if (binary) return;
    inbox.push(JSON.parse((d as Buffer).toString('utf8')) as AgentMessage); // ws's default binaryType
    for (const w of waiters) w();
  });
  ws.on('error', () => {});
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const next = async (pred: (m: AgentMessage) => boolean, what: string): Promise<AgentMessage> => {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`waited ${WAIT_MS} ms for ${what}; unclaimed: ${JSON.stringify(inbox.slice(-5))}`);
      await new Promise<void>((r) => {
        const done = () => {
          clearTimeout(timer);
          waiters.delete(done);
          r();
        };
        const timer = setTimeout(done, Math.min(left, 200));
        waiters.add(done);
      });
    }
  };
  const session: RawSession = { ws, inbox, send: (m) => ws.send(JSON.stringify(m)), next, closed };
  if (o.hello !== false) {
    session.send({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION, client: 'raw-test' });
    await next((m) => m.type === 'welcome', 'welcome');
  }
  return session;
}
