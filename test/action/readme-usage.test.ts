/**
 * The README's usage section (between `<!-- action:begin -->` and `<!-- action:end -->`) and
 * `action.yml` describe the same action: the same inputs (required, default), the same outputs, the
 * codes `result-code` can hold with their meanings, and names that agree with src/action/constants.ts.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Inputs, Outputs } from '../../src/action/constants.js';
import { ActionCodes, AgentCodes } from '../../src/protocol/errors.js';
import { README, tableUnder, unquote, usageSection } from '../support/readme.js';
import { ROOT } from './run-action.js';

interface Declared {
  name: string;
  required?: string;
  default?: string;
}

/**
 * The entries of a top-level map in action.yml (`inputs:` or `outputs:`) with their scalar
 * properties. action.yml keeps to a plain subset (two-space indents, one key per line), which this
 * reads without a YAML library; anything else fails loudly rather than being misread.
 */
export function declaredIn(yml: string, section: 'inputs' | 'outputs'): Declared[] {
  const lines = yml.split('\n');
  const start = lines.indexOf(`${section}:`);
  if (start < 0) throw new Error(`action.yml has no top-level "${section}:"`);
  const out: Declared[] = [];
  for (const line of lines.slice(start + 1)) {
    if (/^\S/.test(line)) break; // the next top-level key
    const entry = /^ {2}([a-z0-9-]+):\s*$/.exec(line);
    if (entry) {
      out.push({ name: entry[1]! });
      continue;
    }
    const prop = /^ {4}(required|default):\s*(.*)$/.exec(line);
    if (prop && out.length > 0) {
      const raw = prop[2]!.trim();
      out[out.length - 1]![prop[1] as 'required' | 'default'] = /^'.*'$/.test(raw)
        ? raw.slice(1, -1).replaceAll("''", "'")
        : raw;
    }
  }
  return out;
}

const yml = readFileSync(path.join(ROOT, 'action.yml'), 'utf8');
const section = usageSection(README);

describe('action.yml', () => {
  it('declares exactly the inputs and outputs the code reads and writes', () => {
    expect(declaredIn(yml, 'inputs').map((i) => i.name)).toEqual(Object.values(Inputs));
    expect(declaredIn(yml, 'outputs').map((o) => o.name)).toEqual(Object.values(Outputs));
  });
});

describe('README usage section', () => {
  it('lists exactly the inputs of action.yml, in its order, with the same required flag and default', () => {
    const rows = tableUnder(section, 'Inputs').map(([name, required, dflt]) => ({
      name: unquote(name!),
      required: required,
      default: dflt,
    }));
    const declared = declaredIn(yml, 'inputs').map((i) => ({
      name: i.name,
      required: i.required === 'true' ? 'yes' : 'no',
      // "—" stands for no default (absent or empty in action.yml).
      default: i.default ? `\`${i.default}\`` : '—',
    }));
    expect(rows).toEqual(declared);
  });

  it('lists exactly the outputs of action.yml, in its order', () => {
    const rows = tableUnder(section, 'Outputs').map(([name]) => unquote(name!));
    expect(rows).toEqual(declaredIn(yml, 'outputs').map((o) => o.name));
  });

  it("lists every result code with its meaning, the action's own as raised by the action", () => {
    const rows = tableUnder(section, 'Result codes').map(([code, by, meaning]) => ({
      code: unquote(code!),
      by,
      meaning,
    }));
    const raisedBy = (who: string) =>
      Object.fromEntries(rows.filter((r) => r.by === who).map((r) => [String(r.code), r.meaning]));
    expect(raisedBy('action')).toEqual(ActionCodes);
    expect(raisedBy('agent')).toEqual(AgentCodes);
    expect(rows.filter((r) => r.by !== 'action' && r.by !== 'agent')).toEqual([]);
  });

  it('shows four complete workflows that use the action with every required input', () => {
    const workflows = [...section.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(workflows).toHaveLength(4);
    const required = declaredIn(yml, 'inputs')
      .filter((i) => i.required === 'true')
      .map((i) => i.name);
    for (const workflow of workflows) {
      expect(workflow).toMatch(/^on:/m);
      expect(workflow).toMatch(/^jobs:/m);
      expect(workflow).toMatch(/uses: org\/rpi-flash@v1/);
      for (const name of required)
        expect(workflow, `a workflow lacks the required input ${name}`).toMatch(new RegExp(`^\\s+${name}: \\S`, 'm'));
      // Only inputs the action declares.
      const withBlock = /uses: org\/rpi-flash@v1\n\s+with:\n((?:\s{10,}\S.*\n)+)/.exec(workflow)?.[1] ?? '';
      const used = [...withBlock.matchAll(/^\s+([a-z0-9-]+):/gm)].map((m) => m[1]);
      expect(used.filter((u) => !Object.values(Inputs).includes(u as never))).toEqual([]);
    }
    expect(workflows.some((w) => /matrix:/.test(w) && /target: \$\{\{ matrix\.target \}\}/.test(w))).toBe(true);
    expect(workflows.some((w) => /image: https:\/\//.test(w))).toBe(true);
    // A pool: the matrix names models, never boards, and a later step reads which board and agent ran it.
    expect(workflows.some((w) => /target: label:\$\{\{ matrix\.model \}\}/.test(w) && /outputs\.board/.test(w))).toBe(
      true,
    );
  });
});
