import { describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { ErrorCodes } from '../../src/protocol/errors.js';

describe('README error table', () => {
  it('documents exactly the codes the code uses, with the same meanings', async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf('## Error codes'), readme.indexOf('## Development'));
    const rows = [...section.matchAll(/^\| `([A-Z0-9_]+)` \| (.+) \|$/gm)].map((m) => [m[1], m[2]]);
    expect(Object.fromEntries(rows)).toEqual(ErrorCodes);
  });
});
