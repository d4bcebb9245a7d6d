import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';
import { SparseMemory } from '../../runner-agent/src/sim/memory.js';
import { BoardResetRequest, UBootShell, type UBootShellOptions } from '../../runner-agent/src/sim/uboot-shell.js';

function shell(o: Partial<UBootShellOptions> = {}) {
  const lines: string[] = [];
  const sh = new UBootShell({
    memory: new SparseMemory(0x1000_0000),
    env: { ipaddr: '10.0.0.2', serverip: '10.0.0.1' },
    tftp: async () => null,
    print: (l) => lines.push(l),
    ...o,
  });
  return { sh, lines, env: (k: string) => sh.env.get(k) };
}

describe('hush quoting and expansion', () => {
  it('keeps $ literal inside single quotes and expands it when the value runs', async () => {
    const { sh, env, lines } = shell();
    expect(await sh.runScript("setenv a one\nsetenv proc 'echo value=${a}'\nsetenv a two\nrun proc\n")).toBe(0);
    expect(env('proc')).toBe('echo value=${a}');
    expect(lines).toContain('value=two');
  });

  it('expands inside double quotes and keeps ; | # and blanks there', async () => {
    const { sh, env } = shell();
    await sh.runScript('setenv a 1\nsetenv b "x;$a || #y  z"\n');
    expect(env('b')).toBe('x;1 || #y  z');
  });

  it('expands a variable on the same line that sets it (expansion happens at run time)', async () => {
    const { sh, env } = shell();
    await sh.runScript('setenv a 5; setenv b ${a}${a}\n');
    expect(env('b')).toBe('55');
  });

  it('splits an unquoted value into words, keeps a quoted one whole', async () => {
    const { sh, lines } = shell();
    expect(await sh.runScript("setenv v '1 == 1'; itest $v\n")).toBe(0);
    expect(await sh.runScript('itest "$v"\n')).toBe(1); // one argument: usage
    expect(lines.some((l) => l.startsWith('Usage:'))).toBe(true);
  });

  it('does not treat ; in an expanded value as a separator (re-parse keeps it plain)', async () => {
    const { sh, lines } = shell();
    await sh.runScript("setenv x 'echo a; echo b'\n$x\n");
    expect(lines).toContain('a; echo b');
  });

  it('skips comments and drops everything after a syntax error', async () => {
    const { sh, env } = shell();
    expect(
      await sh.runScript(
        '# setenv a 1\nsetenv b 2 # a comment at a word start\nsetenv b2 2#x\nsetenv c 3 | x\nsetenv d 4\n',
      ),
    ).toBe(1);
    expect(env('a')).toBeUndefined();
    expect(env('b')).toBe('2');
    expect(env('b2')).toBe('2#x');
    expect(env('c')).toBeUndefined();
    expect(env('d')).toBeUndefined();
  });

  it('supports $? and ${x:-default}', async () => {
    const { sh, env } = shell();
    await sh.runScript('false; setenv r $?; true; setenv s $?; setenv d ${nope:-dflt}\n');
    expect([env('r'), env('s'), env('d')]).toEqual(['1', '0', 'dflt']);
  });
});

describe('hush control flow', () => {
  it('runs || chains of run until one succeeds, and returns the last status', async () => {
    const { sh, env } = shell();
    const script = [
      "setenv bad 'setenv tried ${tried}x; false'",
      "setenv good 'setenv tried ${tried}y; true'",
      'run bad || run bad || run good || run bad',
      '',
    ].join('\n');
    expect(await sh.runScript(script)).toBe(0);
    expect(env('tried')).toBe('xxy');
    expect(await sh.runCommand('run bad || run bad')).toBe(1);
  });

  it('skips the rest of a chain like U-Boot: a && b || c does not run c when a fails', async () => {
    const { sh, env } = shell();
    await sh.runScript('false && setenv b 1 || setenv c 1; setenv d 1\n');
    expect([env('b'), env('c'), env('d')]).toEqual([undefined, undefined, '1']);
    await sh.runScript('true || setenv e 1 && setenv f 1; setenv g 1\n');
    expect([env('e'), env('f'), env('g')]).toEqual([undefined, undefined, '1']);
  });

  it('handles if/elif/else over several lines and nested', async () => {
    const { sh, env } = shell();
    const script = [
      'if itest 1 == 2; then',
      '  setenv r then',
      'elif itest 2 == 2; then',
      '  if true; then setenv r elif-inner; fi',
      'else',
      '  setenv r else',
      'fi',
      '',
    ].join('\n');
    expect(await sh.runScript(script)).toBe(0);
    expect(env('r')).toBe('elif-inner');
  });

  it('returns failure from an if whose condition fails and has no else', async () => {
    const { sh } = shell();
    expect(await sh.runCommand('if false; then true; fi')).toBe(1);
    expect(await sh.runCommand("setenv p 'if false; then true; fi'; run p || setenv after yes")).toBe(0);
    expect(sh.env.get('after')).toBe('yes');
  });

  it('reports unknown commands like U-Boot and accepts unique prefixes', async () => {
    const { sh, lines } = shell();
    expect(await sh.runCommand('tftpput 0 0 x')).toBe(1);
    expect(lines).toContain("Unknown command 'tftpput' - try 'help'");
    expect(await sh.runCommand('seten z 1')).toBe(0); // "seten" is a unique prefix of setenv
    expect(sh.env.get('z')).toBe('1');
  });

  it('throws a reset request out of nested runs', async () => {
    const { sh } = shell();
    await expect(sh.runScript("setenv r 'reset'\nrun r\nsetenv never 1\n")).rejects.toBeInstanceOf(BoardResetRequest);
    expect(sh.env.get('never')).toBeUndefined();
  });

  it('reports a missing run variable', async () => {
    const { sh, lines } = shell();
    expect(await sh.runCommand('run nothing')).toBe(1);
    expect(lines).toContain('## Error: "nothing" not defined');
  });
});

describe('itest', () => {
  it('compares hex numbers masked to the width', async () => {
    const { sh } = shell();
    expect(await sh.runCommand('itest 10 > 9')).toBe(0); // 0x10 > 0x9
    expect(await sh.runCommand('itest.l 0x100000001 == 1')).toBe(0);
    expect(await sh.runCommand('itest.b 0x1ff == 0xff')).toBe(0);
    expect(await sh.runCommand('itest.l 1a2b != 0x1A2B')).toBe(1);
    expect(await sh.runCommand('itest.s abc < abd')).toBe(0);
    expect(await sh.runCommand('itest 1 =~ 1')).toBe(1);
  });

  it('reads memory operands little-endian', async () => {
    const { sh } = shell();
    await sh.runCommand('mw.l 0x1000 0x11223344');
    expect(await sh.runCommand('itest.l *0x1000 == 0x11223344')).toBe(0);
    expect(await sh.runCommand('itest.b *0x1000 == 0x44')).toBe(0);
  });
});

describe('setexpr', () => {
  it('prints hex without 0x and without leading zeros', async () => {
    const { sh, env } = shell();
    await sh.runCommand(
      'setexpr a 0x00ff; setexpr b ff + 1; setexpr c 0x1000000 / 0x100; setexpr d 0x12345678 % 0x100; setexpr e 2 - 3',
    );
    expect([env('a'), env('b'), env('c'), env('d'), env('e')]).toEqual([
      'ff',
      '100',
      '10000',
      '78',
      'ffffffffffffffff',
    ]);
  });

  it('reads *addr in native little-endian order for .b .w .l', async () => {
    const { sh, env } = shell();
    sh.memory.write(0x2000, Buffer.from([0x44, 0x33, 0x22, 0x11, 0x88, 0x77, 0x66, 0x05]));
    await sh.runCommand(
      'setexpr.b b *0x2000; setexpr.w w *0x2000; setexpr.l l *0x2000; setexpr l2 *2000; setexpr.q q *0x2000',
    );
    expect([env('b'), env('w'), env('l'), env('l2'), env('q')]).toEqual([
      '44',
      '3344',
      '11223344',
      '11223344',
      '566778811223344',
    ]);
  });

  it('substitutes with gsub, printing the result', async () => {
    const { sh, env, lines } = shell({ env: { ethaddr: 'b8:27:eb:28:f6:6d', ipaddr: 'x', serverip: 'y' } });
    await sh.runCommand('setexpr macdir gsub : - ${ethaddr}');
    expect(env('macdir')).toBe('b8-27-eb-28-f6-6d');
    expect(lines).toContain('macdir=b8-27-eb-28-f6-6d');
  });
});

describe('crc32', () => {
  const data = Buffer.from('The quick brown fox jumps over the lazy dog');
  const crc = crc32(data); // 0x414fa339
  const swapped = Buffer.alloc(4);
  swapped.writeUInt32BE(crc);

  it('stores big-endian in builds with the multi-hash code, so setexpr.l reads it byte-swapped', async () => {
    const { sh, env, lines } = shell({ crcStore: 'be32' });
    sh.memory.write(0x3000, data);
    await sh.runCommand(`crc32 0x3000 ${data.length.toString(16)} 0x4000; setexpr.l c *0x4000`);
    expect(sh.memory.read(0x4000, 4).equals(swapped)).toBe(true);
    expect(env('c')).toBe(swapped.readUInt32LE().toString(16));
    expect(lines).toContain(
      `crc32 for 00003000 ... ${(0x3000 + data.length - 1).toString(16).padStart(8, '0')} ==> ${crc.toString(16)}`,
    );
  });

  it('stores a native 64-bit ulong in the Pi builds, so setexpr.l reads the real value', async () => {
    const { sh, env } = shell({ crcStore: 'native64' });
    sh.memory.write(0x3000, data);
    sh.memory.write(0x4000, Buffer.alloc(8, 0xee));
    await sh.runCommand(`crc32 0x3000 ${data.length.toString(16)} 0x4000; setexpr.l c *0x4000`);
    expect(env('c')).toBe(crc.toString(16));
    expect(sh.memory.read(0x4004, 4).equals(Buffer.alloc(4))).toBe(true); // upper half of the ulong
  });
});

describe('tftpboot, source, mmc', () => {
  it('loads a file at an address and sets filesize in hex; "tftp" works as a prefix', async () => {
    const files = new Map([['dir/file', Buffer.alloc(0x1234, 9)]]);
    const asked: Array<{ path: string; blksize: number; windowsize: number }> = [];
    const { sh, env } = shell({ tftp: async (p, o) => (asked.push({ path: p, ...o }), files.get(p) ?? null) });
    expect(await sh.runCommand('setenv tftpblocksize 1000; setenv tftpwindowsize 8; tftp 0x100000 dir/file')).toBe(0);
    expect(env('filesize')).toBe('1234');
    expect(env('fileaddr')).toBe('100000');
    expect(asked).toEqual([{ path: 'dir/file', blksize: 1000, windowsize: 8 }]);
    expect(sh.memory.read(0x100000 + 0x1233, 2)).toEqual(Buffer.from([9, 0]));
    expect(await sh.runCommand('tftpboot 0x100000 dir/missing')).toBe(1);
  });

  it('sources a script image from memory and checks it', async () => {
    const { sh, env } = shell();
    const image = buildScriptImage('setenv sourced yes\n');
    sh.memory.write(0x200000, image);
    expect(await sh.runCommand('source 0x200000')).toBe(0);
    expect(env('sourced')).toBe('yes');
    image[70]! ^= 1;
    sh.memory.write(0x300000, image);
    expect(await sh.runCommand('source 0x300000')).toBe(1);
  });

  it('writes and reads blocks, failing past the end of the card', async () => {
    const card = Buffer.alloc(16 * 512);
    const mmc = new Map([
      [
        0,
        {
          blockCount: 16,
          read: async (b: number, c: number) => Buffer.from(card.subarray(b * 512, (b + c) * 512)),
          write: async (b: number, d: Buffer) => (d.copy(card, b * 512), d.length / 512),
        },
      ],
    ]);
    const { sh } = shell({ mmc });
    sh.memory.write(0x10000, Buffer.alloc(1024, 0xab));
    expect(await sh.runCommand('mmc dev 0 && mmc write 0x10000 0x2 0x2')).toBe(0);
    expect(card.subarray(1024, 2048).every((b) => b === 0xab)).toBe(true);
    expect(card[2048]).toBe(0);
    expect(await sh.runCommand('mmc read 0x20000 2 2 && itest.l *0x203fc == 0xabababab')).toBe(0);
    expect(await sh.runCommand('mmc write 0x10000 0xf 0x2')).toBe(1);
    expect(await sh.runCommand('mmc dev 1')).toBe(1);
  });
});
