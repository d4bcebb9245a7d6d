/** The config file may carry comments (the packaged example explains each setting where it is set). */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, withoutComments } from '../../runner-agent/src/config.js';

describe('withoutComments', () => {
  it('blanks // and /* */ comments and keeps strings, line breaks and positions', () => {
    const text = '{ // the endpoint\n  "a": "http://x/*y*/", /* two\nlines */ "b": "say \\"//\\"" }';
    const stripped = withoutComments(text);
    expect(stripped).toHaveLength(text.length);
    expect(stripped.split('\n')).toHaveLength(3);
    expect(JSON.parse(stripped)).toEqual({ a: 'http://x/*y*/', b: 'say "//"' });
  });

  it('leaves a slash that starts no comment', () => {
    expect(JSON.parse(withoutComments('{"ratio": "1/2"}'))).toEqual({ ratio: '1/2' });
  });

  it('refuses a block comment that never ends, naming its line', () => {
    expect(() => withoutComments('{\n"a": 1 /* forgot to close\n}')).toThrow('a /* comment on line 2 never ends');
  });
});

describe('loadConfig with comments', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'config-comments-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a commented file as the same settings', async () => {
    const file = path.join(dir, 'commented.json');
    await writeFile(
      file,
      '// rpi-flash-agent\n{\n  // shared secret\n  "token": "a-token-of-sufficient-length",\n' +
        '  "targets": "targets.csv", /* beside the file */\n  "tftp": { "port": 6969 } // not 69\n}\n',
    );
    const c = await loadConfig(file);
    expect(c.token).toBe('a-token-of-sufficient-length');
    expect(c.targets).toBe(path.join(dir, 'targets.csv'));
    expect(c.tftp.port).toBe(6969);
  });

  it('reports an unterminated comment as a config error naming the file', async () => {
    const file = path.join(dir, 'open-comment.json');
    await writeFile(file, '{ "token": "a-token-of-sufficient-length" /* oops }');
    const err = await loadConfig(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      `cannot read config file ${file}: a /* comment on line 1 never ends`,
    ]);
  });
});
