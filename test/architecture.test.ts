/**
 * docs/architecture.md is the contract for the code's shape: its rooms table says what each folder
 * of src/ and runner-agent/src/ may import. This test reads that table and every relative import of
 * the sources, and fails on an import the table does not allow — or on a room the table lacks.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');
/** Top-level agent files that are programs or composition roots: they may import any agent room. */
const ROOTS = new Set(['agent.ts', 'cli.ts', 'demo.ts', 'make-card.ts']);

async function rules(): Promise<Map<string, Set<string>>> {
  const doc = await readFile(path.join(ROOT, 'docs/architecture.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Rooms and what each may import'), doc.indexOf('## Strategies'));
  const table = new Map<string, Set<string>>();
  for (const m of section.matchAll(/^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|$/gm)) {
    const allowed = [...m[2]!.matchAll(/`([^`]+)`/g)].map((a) => a[1]!);
    table.set(m[1]!, new Set(allowed));
  }
  return table;
}

/** The room of a source file: `src/<folder or file>`, or the agent's `<folder or file>`. */
function roomOf(file: string): string {
  const rel = path.relative(ROOT, file).split(path.sep);
  return rel[0] === 'src' ? `src/${rel[1]}` : rel[2]!;
}

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.ts')) out.push(path.join(entry.parentPath, entry.name));
  }
  return out;
}

interface Import {
  from: string;
  to: string;
  fromRoom: string;
  toRoom: string;
}

async function imports(): Promise<Import[]> {
  const files = [...(await sources(path.join(ROOT, 'src'))), ...(await sources(path.join(ROOT, 'runner-agent/src')))];
  const found: Import[] = [];
  for (const file of files) {
    const text = await readFile(file, 'utf8');
    for (const m of text.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s+'(\.{1,2}\/[^']+)'/gms)) {
      const target = path.resolve(path.dirname(file), m[1]!).replace(/\.js$/, '.ts');
      found.push({ from: file, to: target, fromRoom: roomOf(file), toRoom: roomOf(target) });
    }
  }
  return found;
}

describe('the rooms of docs/architecture.md', () => {
  it('are read from the document (the parser finds its table)', async () => {
    const table = await rules();
    expect(table.get('layouts')).toContain('staging');
    expect(table.get('src/protocol')).toEqual(new Set());
  });

  it('hold every import of the sources: each room imports only itself and the rooms its row names', async () => {
    const table = await rules();
    const broken: string[] = [];
    for (const i of await imports()) {
      const rel = (f: string) => path.relative(ROOT, f);
      const agentSide = rel(i.from).startsWith('runner-agent');
      if (!agentSide && rel(i.to).startsWith('runner-agent')) {
        broken.push(`${rel(i.from)} → ${rel(i.to)}: src/ never imports runner-agent/`);
        continue;
      }
      if (i.fromRoom === i.toRoom) continue;
      if (agentSide && i.toRoom === 'src/action') {
        broken.push(`${rel(i.from)} → ${rel(i.to)}: the agent never imports the action`);
        continue;
      }
      if (agentSide && ROOTS.has(i.fromRoom)) continue;
      const allowed = table.get(i.fromRoom);
      if (!allowed) broken.push(`${rel(i.from)}: room "${i.fromRoom}" has no row in the table`);
      else if (!allowed.has(i.toRoom))
        broken.push(`${rel(i.from)} → ${rel(i.to)}: ${i.fromRoom} may not import ${i.toRoom}`);
    }
    expect(broken).toEqual([]);
  });

  it('name only rooms that exist', async () => {
    const table = await rules();
    const rooms = new Set((await imports()).flatMap((i) => [i.fromRoom, i.toRoom]));
    const named = new Set([...table.keys(), ...[...table.values()].flatMap((s) => [...s])]);
    expect([...named].filter((r) => !rooms.has(r))).toEqual([]);
  });
});
