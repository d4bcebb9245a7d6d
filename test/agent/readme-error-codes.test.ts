/**
 * The README documents the codes once: one table, every code of `ErrorCodes` with the meaning the
 * code gives it, and who raises it (`agent` for `AgentCodes`, `action` for `ActionCodes`). A code
 * added to src/protocol/errors.ts without its row, or a second table of codes, fails here.
 */
import { describe, expect, it } from 'vitest';
import { AgentCodes, ErrorCodes } from '../../src/protocol/errors.js';
import { README, tables, unquote } from '../support/readme.js';

describe('README table of codes', () => {
  const codeTables = tables(README).filter((t) => t[0]?.[0] === 'code');

  it('is one table', () => {
    expect(codeTables.map((t) => t[0])).toEqual([['code', 'raised by', 'meaning']]);
  });

  it('lists every code once, with the meaning and the side the code gives it', () => {
    const rows = codeTables[0]!.slice(1).map(([code, by, meaning]) => ({ code: unquote(code!), by, meaning }));
    expect(rows.map((r) => r.code)).toEqual(Object.keys(ErrorCodes));
    for (const { code, by, meaning } of rows) {
      expect(meaning, code).toBe(ErrorCodes[code as keyof typeof ErrorCodes]);
      expect(by, code).toBe(Object.hasOwn(AgentCodes, code!) ? 'agent' : 'action');
    }
  });
});
