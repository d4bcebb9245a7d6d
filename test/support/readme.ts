/**
 * Reading the README's Markdown the way the tests that hold it to the code need: the action's usage
 * section (between `<!-- action:begin -->` and `<!-- action:end -->`) and its tables, as cells.
 */
import { readFileSync } from 'node:fs';

export const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

/** The section between the markers; exactly one pair must exist. */
export function usageSection(readme: string): string {
  const begin = readme.split('<!-- action:begin -->');
  const end = readme.split('<!-- action:end -->');
  if (begin.length !== 2 || end.length !== 2)
    throw new Error('README.md must hold exactly one <!-- action:begin --> … <!-- action:end --> pair');
  return begin[1]!.split('<!-- action:end -->')[0]!;
}

const cells = (line: string) =>
  line
    .slice(1, -1)
    .split(' | ')
    .map((c) => c.trim());

/** Every Markdown table in `text`, each as its rows of trimmed cells, the header row first. */
export function tables(text: string): string[][][] {
  const found: string[][][] = [];
  let current: string[][] | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith('|')) {
      current = undefined;
      continue;
    }
    if (/^\|[-|: ]+\|$/.test(line)) continue; // the header separator
    if (!current) found.push((current = []));
    current.push(cells(line));
  }
  return found;
}

/** Rows of the first table after the `### <heading>` line, without its header row. */
export function tableUnder(section: string, heading: string): string[][] {
  const at = section.indexOf(`\n### ${heading}\n`);
  if (at < 0) throw new Error(`the usage section has no "### ${heading}"`);
  const table = tables(section.slice(at + heading.length + 6))[0];
  if (!table) throw new Error(`no table under "### ${heading}"`);
  return table.slice(1);
}

/** The text inside one pair of backquotes, else undefined. */
export const unquote = (cell: string) => /^`([^`]*)`$/.exec(cell)?.[1];
