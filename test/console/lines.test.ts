import { describe, expect, it } from 'vitest';
import { cleanConsoleText, LineSplitter } from '../../runner-agent/src/console/lines.js';

function split(chunks: (string | Buffer)[], o: { flushAtEnd?: boolean; maxLineChars?: number } = {}): string[] {
  const lines: string[] = [];
  const splitter = new LineSplitter((l) => lines.push(l), o.maxLineChars ? { maxLineChars: o.maxLineChars } : {});
  for (const c of chunks) splitter.push(typeof c === 'string' ? Buffer.from(c, 'utf8') : c);
  if (o.flushAtEnd) splitter.flush();
  return lines;
}

describe('LineSplitter', () => {
  it.each([
    ['LF', 'a\nb\n', ['a', 'b']],
    ['CRLF', 'a\r\nb\r\n', ['a', 'b']],
    ['LF CR (no invented blank lines)', 'a\n\rb\n\r', ['a', 'b']],
    ['CR CR LF', 'a\r\r\nb\r\r\n', ['a', 'b']],
    ['lone CR redraws', 'Loading 10%\rLoading 50%\rLoading 100%\r\n', ['Loading 10%', 'Loading 50%', 'Loading 100%']],
    ['a real blank line is kept', 'a\r\n\r\nb\n\nc\n', ['a', '', 'b', '', 'c']],
    ['tabs stay', 'x\ty\n', ['x\ty']],
  ])('%s', (_, input, expected) => {
    expect(split([input])).toEqual(expected);
  });

  it('gives the same lines wherever a chunk boundary falls, also inside \\r\\n and UTF-8', () => {
    const input = Buffer.from(
      'U-Boot 2023.01\r\n\r\nDRAM:  1 GiB\n\rgrüße ✓\r\rx\r\n\x1b[1;32mok\x1b[0m\r\nend\n',
      'utf8',
    );
    const whole = split([input]);
    expect(whole).toEqual(['U-Boot 2023.01', '', 'DRAM:  1 GiB', 'grüße ✓', 'x', 'ok', 'end']);
    for (let cut = 1; cut < input.length; cut++) {
      expect(split([input.subarray(0, cut), input.subarray(cut)]), `cut at ${cut}`).toEqual(whole);
    }
    // and one byte at a time
    expect(split([...input].map((b) => Buffer.from([b])))).toEqual(whole);
  });

  it('keeps partial text until flush, which ends it as a line without inventing one for a later CRLF', () => {
    const lines: string[] = [];
    const s = new LineSplitter((l) => lines.push(l));
    s.push(Buffer.from('raspberrypi login: '));
    expect(lines).toEqual([]);
    expect(s.hasPartial).toBe(true);
    s.flush();
    expect(lines).toEqual(['raspberrypi login: ']);
    expect(s.hasPartial).toBe(false);
    s.push(Buffer.from('\r\nnext\r\n'));
    expect(lines).toEqual(['raspberrypi login: ', 'next']);
  });

  it('flush without partial text emits nothing', () => {
    expect(split(['a\n'], { flushAtEnd: true })).toEqual(['a']);
  });

  it('cuts endless lines at maxLineChars', () => {
    expect(split(['x'.repeat(25) + '\n'], { maxLineChars: 10 })).toEqual([
      'x'.repeat(10),
      'x'.repeat(10),
      'x'.repeat(5),
    ]);
  });

  it('turns bytes that are not UTF-8 (a wrong baud rate) into U+FFFD', () => {
    expect(split([Buffer.from([0x61, 0xff, 0xfe, 0x62, 0x0a])])).toEqual(['a\ufffd\ufffdb']);
  });
});

describe('cleanConsoleText', () => {
  it.each([
    ['\x1b[1;32mgreen\x1b[0m', 'green'],
    ['\x1b[2J\x1b[Hcleared', 'cleared'],
    ['\x1b]0;window title\x07prompt$ ', 'prompt$ '],
    ['\x1b]8;;http://x\x1b\\link', 'link'],
    ['\x1b(Bascii', 'ascii'],
    ['bell\x07 nul\x00 del\x7f', 'bell nul del'],
    ['\x1b[?25lhidden cursor\x1b[?25h', 'hidden cursor'],
  ])('%j → %j', (input, expected) => {
    expect(cleanConsoleText(input)).toBe(expected);
  });
});
