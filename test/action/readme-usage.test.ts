/**
 * The README's usage section (between `<!-- action:begin -->` and `<!-- action:end -->`) and
 * `action.yml` describe the same action: the same inputs (required, default), the same outputs, the
 * action's own result codes with their meanings, and names that agree with src/action/constants.ts.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Inputs, Outputs } from '../../src/action/constants.js';
import { ActionCodes } from '../../src/action/outputs.js';
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

/** The section between the markers; exactly one pair must exist. */
function usageSection(readme: string): string {
  const begin = readme.split('<!-- action:begin -->');
  const end = readme.split('<!-- action:end -->');
  if (begin.length !== 2 || end.length !== 2)
    throw new Error('README.md must hold exactly one <!-- action:begin --> … <!-- action:end --> pair');
  return begin[1]!.split('<!-- action:end -->')[0]!;
}

/** Rows of the first Markdown table after the `### <heading>` line, as arrays of trimmed cells. */
function tableUnder(section: string, heading: string): string[][] {
  const at = section.indexOf(`\n### ${heading}\n`);
  if (at < 0) throw new Error(`the usage section has no "### ${heading}"`);
  const rest = section.slice(at + heading.length + 6).split('\n');
  const first = rest.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const line of rest.slice(first)) {
    if (!line.startsWith('|')) break;
    if (/^\|[-|: ]+\|$/.test(line)) continue; // the header separator
    rows.push(
      line
        .slice(1, -1)
        .split(' | ')
        .map((c) => c.trim()),
    );
  }
  return rows.slice(1); // without the header row
}

const unquote = (cell: string) => /^`([^`]*)`$/.exec(cell)?.[1];

const yml = readFileSync(path.join(ROOT, 'action.yml'), 'utf8');
const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const section = usageSection(readme);

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

  it("lists the action's own result codes with the meanings the code gives them", () => {
    const rows = tableUnder(section, 'Result codes').map(([code, meaning]) => [unquote(code!), meaning]);
    expect(Object.fromEntries(rows)).toEqual(ActionCodes);
  });

  it('shows three complete workflows that use the action with every required input', () => {
    const workflows = [...section.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(workflows).toHaveLength(3);
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
  });

  it('stays out of the agent error table (its parser reads from the first "## Error codes")', () => {
    expect(section).not.toContain('## Error codes');
    expect(section).not.toContain('## Development');
    expect(readme.indexOf('<!-- action:end -->')).toBeLessThan(readme.indexOf('## Error codes'));
  });
});
