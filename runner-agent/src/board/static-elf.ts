/**
 * What an ELF file runs on, read from its headers: the static busybox the in-place update uploads
 * must be of the board's machine and linked statically (the RAM system has no libc and no loader).
 */
import { open } from 'node:fs/promises';

export interface ElfInfo {
  /** 'arm64' for EM_AARCH64, 'arm' for EM_ARM (armhf and armel alike), else `machine <n>`. */
  machine: string;
  bits: 32 | 64;
  /** No PT_INTERP program header: the kernel runs it without a loader. */
  isStatic: boolean;
}

const EM_ARM = 40;
const EM_AARCH64 = 183;
const PT_INTERP = 3;
/** More program headers than this is no executable we would upload. */
const MAX_PHNUM = 256;

/** The ELF headers of `file`; throws an Error saying why it is no ELF executable. */
export async function readElfInfo(file: string): Promise<ElfInfo> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(64);
    const { bytesRead } = await fh.read(head, 0, 64, 0);
    if (bytesRead < 52 || head.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${file} is not an ELF file`);
    const bits = head[4] === 2 ? 64 : head[4] === 1 ? 32 : undefined;
    if (!bits || head[5] !== 1) throw new Error(`${file} is not a little-endian 32- or 64-bit ELF file`);
    const em = head.readUInt16LE(18);
    const phoff = bits === 64 ? Number(head.readBigUInt64LE(32)) : head.readUInt32LE(28);
    const phentsize = head.readUInt16LE(bits === 64 ? 54 : 42);
    const phnum = head.readUInt16LE(bits === 64 ? 56 : 44);
    if (phnum > MAX_PHNUM || phentsize < (bits === 64 ? 56 : 32)) throw new Error(`${file}: odd program headers`);
    const ph = Buffer.alloc(phentsize * phnum);
    await fh.read(ph, 0, ph.length, phoff);
    let isStatic = true;
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === PT_INTERP) isStatic = false;
    const machine = em === EM_AARCH64 ? 'arm64' : em === EM_ARM ? 'arm' : `machine ${em}`;
    return { machine, bits, isStatic };
  } finally {
    await fh.close();
  }
}

/** The ELF machine a Debian architecture's binaries have. */
export function elfMachineOf(debianArch: string): string {
  return debianArch === 'arm64' ? 'arm64' : 'arm';
}
