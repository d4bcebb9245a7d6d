/**
 * Bad input against a running agent: each gets a stable code, the agent keeps running, and a job
 * on another target that runs at the same time is untouched.
 */
import { afterEach, describe, expect, it } from 'vitest';
import dgram from 'node:dgram';
import WebSocket from 'ws';
import { startLab, LAB_TOKEN, type Lab } from '../support/lab.js';
import { WAIT_MS, waitUntil } from '../support/wait.js';
import { PROTOCOL_VERSION, WS_PATH, type AgentMessage } from '../../src/protocol/messages.js';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.stop();
  lab = undefined;
});

const MiB = 1024 * 1024;

/** A raw protocol session, for misbehaving on purpose. */
async function rawSession(url: string) {
  const ws = new WebSocket(`${url}${WS_PATH}`, { headers: { Authorization: `Bearer ${LAB_TOKEN}` } });
  const inbox: AgentMessage[] = [];
  const waiters: Array<() => void> = [];
  ws.on('message', (d, binary) => {
    if (binary) return;
    inbox.push(JSON.parse((d as Buffer).toString()) as AgentMessage); // ws's default binaryType
    waiters.splice(0).forEach((w) => w());
  });
  await new Promise((r) => ws.once('open', r));
  /** The first message `pred` takes; after WAIT_MS an error naming it (its source) and what came instead. */
  const next = async (pred: (m: AgentMessage) => boolean): Promise<AgentMessage> => {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`waited ${WAIT_MS} ms for a message ${String(pred)}; unclaimed: ${JSON.stringify(inbox)}`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, left);
        waiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
    }
  };
  const send = (m: object) => ws.send(JSON.stringify(m));
  send({ type: 'hello', id: 'h', protocol: PROTOCOL_VERSION });
  await next((m) => m.type === 'welcome');
  return { ws, send, next };
}

describe('bad input while another job runs', () => {
  it('refuses sha256 mismatch, truncated, oversize and stray uploads with codes; the other job passes', async () => {
    lab = await startLab({
      boards: [
        { name: 'good', mac: '02:00:00:00:01:01' },
        { name: 'victim', mac: '02:00:00:00:01:02' },
      ],
    });
    const good = await lab.connect();
    const img = await lab.image('good.img', 4 * MiB, 21);
    await good.lease('good');
    await good.upload({ path: img.path, sha256: img.sha256, size: img.size, compression: 'none' });
    const job = good.flash({ sha256: img.sha256 });

    const s = await rawSession(lab.agent.url);
    // Binary data before any upload: refused and the connection is closed.
    const stray = await rawSession(lab.agent.url);
    stray.send({ type: 'lease', id: 'l', target: 'victim' });
    await stray.next((m) => m.type === 'leased');
    stray.ws.send(Buffer.alloc(100), { binary: true });
    expect(await stray.next((m) => m.type === 'error')).toMatchObject({ code: 'BAD_REQUEST', fatal: true });
    await new Promise((r) => stray.ws.once('close', r));

    s.send({ type: 'lease', id: 'l2', target: 'victim' });
    await s.next((m) => m.type === 'leased');
    // Wrong sha256: the bytes arrive, the hash does not match.
    const bytes = Buffer.alloc(2 * MiB, 7);
    s.send({ type: 'upload-begin', id: 'u1', sha256: 'a'.repeat(64), size: bytes.length, compression: 'none' });
    expect(await s.next((m) => (m as { re?: string }).re === 'u1')).toMatchObject({ type: 'upload-ready', offset: 0 });
    s.ws.send(bytes.subarray(0, MiB), { binary: true });
    s.ws.send(bytes.subarray(MiB), { binary: true });
    s.send({ type: 'upload-end', id: 'e1' });
    const mismatch = await s.next((m) => m.type === 'error' && (m as { re?: string }).re === 'e1');
    expect(mismatch).toMatchObject({ code: 'SHA256_MISMATCH' });
    expect((mismatch as { message: string }).message).toContain('a'.repeat(64));

    // Truncated: upload-end before the declared size.
    s.send({ type: 'upload-begin', id: 'u2', sha256: 'b'.repeat(64), size: 3 * MiB, compression: 'none' });
    await s.next((m) => (m as { re?: string }).re === 'u2');
    s.ws.send(bytes.subarray(0, MiB), { binary: true });
    s.send({ type: 'upload-end', id: 'e2' });
    expect(await s.next((m) => m.type === 'error' && (m as { re?: string }).re === 'e2')).toMatchObject({
      code: 'UPLOAD_TRUNCATED',
    });

    // Oversize: more bytes than declared.
    s.send({ type: 'upload-begin', id: 'u3', sha256: 'c'.repeat(64), size: 1000, compression: 'none' });
    await s.next((m) => (m as { re?: string }).re === 'u3');
    s.ws.send(Buffer.alloc(5000), { binary: true });
    expect(await s.next((m) => m.type === 'error' && (m as { re?: string }).re === 'u3')).toMatchObject({
      code: 'UPLOAD_TOO_LARGE',
    });

    // Unknown compression and an image that was never uploaded.
    s.send({ type: 'upload-begin', id: 'u4', sha256: 'd'.repeat(64), size: 10, compression: 'rar' });
    expect(await s.next((m) => m.type === 'error')).toMatchObject({ code: 'UNSUPPORTED_COMPRESSION' });
    s.send({ type: 'flash', id: 'f1', sha256: 'e'.repeat(64) });
    expect(await s.next((m) => m.type === 'error' && (m as { re?: string }).re === 'f1')).toMatchObject({
      code: 'IMAGE_NOT_FOUND',
    });
    s.ws.close();

    // Garbage and traversal on the TFTP port.
    const udp = dgram.createSocket('udp4');
    const answers: Buffer[] = [];
    udp.on('message', (m) => answers.push(m));
    const send = (b: Buffer) => new Promise((r) => udp.send(b, lab!.agent.tftp.port, '127.0.0.1', r));
    await send(Buffer.from([0xff, 0xff, 1, 2, 3]));
    await send(Buffer.concat([Buffer.from([0, 1]), Buffer.from('../../etc/passwd\0octet\0')]));
    await send(Buffer.concat([Buffer.from([0, 1]), Buffer.from('02-00-00-00-01-01/../../secret\0octet\0')]));
    await send(Buffer.concat([Buffer.from([0, 2]), Buffer.from('02-00-00-00-01-01/flash.scr\0octet\0')]));
    const tftpErrors = () => answers.filter((a) => a.readUInt16BE(0) === 5);
    await waitUntil(() => tftpErrors().length >= 3, 'TFTP errors for the traversals and the write', {
      detail: () => `${answers.length} answer(s) so far`,
    });
    udp.close();
    const errors = tftpErrors().map((a) => a.readUInt16BE(2));
    expect(errors.length).toBeGreaterThanOrEqual(3);
    expect(errors.every((code) => code === 2 || code === 4)).toBe(true);

    const result = await job;
    expect(result.code).toBe('OK');
    expect(await lab.tftpFolders()).toEqual([]);
  });
});
