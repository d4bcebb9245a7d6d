import { describe, expect, it } from 'vitest';
import { TftpAccessError } from '../../runner-agent/src/tftp/errors.js';
import { negotiateOptions } from '../../runner-agent/src/tftp/options.js';
import {
  decodePacket,
  encodeAck,
  encodeData,
  encodeError,
  encodeOack,
  encodeRequest,
  Opcode,
  TftpPacketError,
} from '../../runner-agent/src/tftp/packets.js';
import { normaliseRequestPath } from '../../runner-agent/src/tftp/request-path.js';

describe('TFTP packets', () => {
  it('encodes a read request byte for byte as RFC 1350/2347 lay it out', () => {
    const buf = encodeRequest(Opcode.RRQ, 'a/b', 'octet', { blksize: '1468', tsize: '0' });
    expect(buf.toString('latin1')).toBe('\x00\x01a/b\x00octet\x00blksize\x001468\x00tsize\x000\x00');
  });

  it('decodes requests with options, lower-casing option names and the mode', () => {
    const raw = Buffer.from('\x00\x02up/OK\x00OCTET\x00BlkSize\x00512\x00windowsize\x008\x00', 'latin1');
    expect(decodePacket(raw)).toEqual({
      op: Opcode.WRQ,
      path: 'up/OK',
      mode: 'octet',
      options: { blksize: '512', windowsize: '8' },
    });
  });

  it('tolerates NUL padding after a request', () => {
    const raw = Buffer.concat([encodeRequest(Opcode.RRQ, 'f', 'octet', { tsize: '0' }), Buffer.alloc(3)]);
    expect(decodePacket(raw)).toMatchObject({ path: 'f', options: { tsize: '0' } });
  });

  it('round-trips DATA, ACK, ERROR and OACK', () => {
    const payload = Buffer.from([1, 2, 3, 0, 255]);
    expect(decodePacket(encodeData(65535, payload))).toEqual({ op: Opcode.DATA, block: 65535, data: payload });
    expect(decodePacket(encodeAck(65536 + 7))).toEqual({ op: Opcode.ACK, block: 7 });
    expect(decodePacket(encodeError(1, 'File not found'))).toEqual({
      op: Opcode.ERROR,
      code: 1,
      message: 'File not found',
    });
    expect(decodePacket(encodeOack({ blksize: '1468', tsize: '42' }))).toEqual({
      op: Opcode.OACK,
      options: { blksize: '1468', tsize: '42' },
    });
  });

  it('refuses malformed packets with a reason', () => {
    expect(() => decodePacket(Buffer.from([0]))).toThrow(TftpPacketError);
    expect(() => decodePacket(Buffer.from([0, 9, 0, 0]))).toThrow(/unknown opcode 9/);
    expect(() => decodePacket(Buffer.from('\x00\x01file', 'latin1'))).toThrow(/NUL-terminated/);
    expect(() => decodePacket(Buffer.from('\x00\x01file\x00', 'latin1'))).toThrow(/mode/);
    expect(() => decodePacket(Buffer.from([0, 3, 0]))).toThrow(/DATA/);
  });
});

describe('TFTP option negotiation', () => {
  const limits = { maxBlksize: 65464, maxWindowsize: 64 };

  it('accepts nothing when nothing was asked (then no OACK is sent)', () => {
    expect(negotiateOptions('read', {}, limits, 100)).toEqual({ accepted: {}, blksize: 512, windowsize: 1 });
  });

  it('clamps blksize and windowsize to the server limits', () => {
    const n = negotiateOptions('read', { blksize: '100000', windowsize: '1000' }, limits, 100);
    expect(n.accepted).toEqual({ blksize: '65464', windowsize: '64' });
    expect([n.blksize, n.windowsize]).toEqual([65464, 64]);
    const small = negotiateOptions(
      'read',
      { blksize: '9000', windowsize: '16' },
      { maxBlksize: 1468, maxWindowsize: 8 },
      100,
    );
    expect(small.accepted).toEqual({ blksize: '1468', windowsize: '8' });
  });

  it('keeps values inside the limits as asked', () => {
    expect(negotiateOptions('read', { blksize: '8', windowsize: '1' }, limits, 0).accepted).toEqual({
      blksize: '8',
      windowsize: '1',
    });
  });

  it('ignores out-of-range, malformed and unknown options', () => {
    const n = negotiateOptions(
      'read',
      { blksize: '7', windowsize: '0', timeout: '300', tsize: 'x', multicast: '', foo: 'bar' },
      limits,
      5,
    );
    expect(n.accepted).toEqual({});
    expect([n.blksize, n.windowsize, n.timeoutMs]).toEqual([512, 1, undefined]);
  });

  it('answers tsize with the real size on a read and echoes it on a write', () => {
    expect(negotiateOptions('read', { tsize: '0' }, limits, 123456).accepted).toEqual({ tsize: '123456' });
    const w = negotiateOptions('write', { tsize: '77' }, limits);
    expect(w.accepted).toEqual({ tsize: '77' });
    expect(w.uploadSize).toBe(77);
  });

  it('takes the timeout option in seconds', () => {
    const n = negotiateOptions('read', { timeout: '3' }, limits, 1);
    expect(n.accepted).toEqual({ timeout: '3' });
    expect(n.timeoutMs).toBe(3000);
  });
});

describe('TFTP request paths', () => {
  it('normalises repeated slashes and "." segments', () => {
    expect(normaliseRequestPath('b8-27-eb-28-f6-6d//flash.scr')).toBe('b8-27-eb-28-f6-6d/flash.scr');
    expect(normaliseRequestPath('./a/./b/')).toBe('a/b');
  });

  it.each([
    ['empty', ''],
    ['parent', '../x'],
    ['absolute', '/etc/passwd'],
    ['parent inside', 'a/../../b'],
    ['parent at end', 'a/..'],
    ['backslash', 'a\\..\\b'],
    ['NUL', 'a\0b'],
    ['only dots', './.'],
  ])('refuses %s paths', (_name, raw) => {
    expect(() => normaliseRequestPath(raw)).toThrow(TftpAccessError);
  });

  it('allows names that merely contain dots', () => {
    expect(normaliseRequestPath('a/..b/c..')).toBe('a/..b/c..');
  });
});
