/**
 * A small FAT12/16/32 reader and writer over a SectorOverlay: just what carrying U-Boot into a
 * boot partition needs. It reads the boot sector, the FAT (bounded by the partition's size, never
 * by the rest of the disk), the directories and files it is asked for; it creates or replaces
 * files (VFAT long names with their 8.3 aliases), keeps every FAT copy identical and the FAT32
 * FSInfo free count exact, so `fsck.fat -n` finds nothing to fix. All writes go to the overlay,
 * which turns them into patches: the image itself is never modified.
 *
 * Layout facts follow Microsoft's FAT specification ("FAT: General Overview of On-Disk Format"):
 * the FAT type comes from the cluster count alone (< 4085 FAT12, < 65525 FAT16, else FAT32).
 */
import { formatBytes } from '../../../src/protocol/units.js';
import { InjectError } from './errors.js';
import type { SectorOverlay } from './disk.js';

export type FatType = 'FAT12' | 'FAT16' | 'FAT32';

export const ATTR_READ_ONLY = 0x01;
export const ATTR_HIDDEN = 0x02;
export const ATTR_SYSTEM = 0x04;
export const ATTR_VOLUME_ID = 0x08;
export const ATTR_DIRECTORY = 0x10;
export const ATTR_ARCHIVE = 0x20;
const ATTR_LONG_NAME = 0x0f;
const SLOT = 32;
const LFN_CHARS = 13;
const DELETED = 0xe5;

export interface DirEntry {
  /** The long name when there is a valid one, else the 8.3 name as displayed (with NT case flags). */
  name: string;
  /** The 8.3 alias, e.g. `RPI-FL~1.ENV`. */
  shortName: string;
  attr: number;
  firstCluster: number;
  size: number;
  /** Slot index of the first slot (long-name part or the short entry itself). */
  firstSlot: number;
  /** Slot index of the short entry. */
  slot: number;
}

/** A directory's slots held in memory, with where each sector lives in the image. */
export class Directory {
  readonly dirtySectors = new Set<number>();
  constructor(
    public buf: Buffer,
    /** Absolute image offset of each `sectorSize` piece of `buf`. */
    readonly sectorOffsets: number[],
    /** The directory's clusters; null for the fixed FAT12/16 root directory. */
    readonly clusters: number[] | null,
    readonly path: string,
  ) {}
  get slotCount(): number {
    return this.buf.length / SLOT;
  }
}

export interface NewFile {
  name: string;
  data: Buffer;
}

function corrupt(msg: string): InjectError {
  return new InjectError('IMAGE_NO_BOOT_PARTITION', `the boot partition's FAT file system is damaged: ${msg}`);
}

export class FatVolume {
  private nextFreeHint = 2;
  /**
   * Directories read so far, by first cluster (0: the fixed root). Every lookup returns the same
   * object, so changes made through one path are what the next lookup (and flush) sees.
   */
  private readonly directories = new Map<number, Directory>();

  private constructor(
    private readonly dev: SectorOverlay,
    readonly partOffset: number,
    readonly type: FatType,
    readonly bytesPerSector: number,
    readonly sectorsPerCluster: number,
    private readonly reservedSectors: number,
    private readonly numFats: number,
    private readonly fatSectors: number,
    private readonly rootEntries: number,
    private readonly firstDataSector: number,
    readonly clusterCount: number,
    private readonly rootCluster: number,
    private readonly fsInfoSector: number,
    private readonly fat: Buffer,
    private readonly dirtyFatSectors = new Set<number>(),
  ) {}

  get clusterBytes(): number {
    return this.bytesPerSector * this.sectorsPerCluster;
  }

  /** Size of the volume's data area in bytes (what `df` would call its size). */
  get dataBytes(): number {
    return this.clusterCount * this.clusterBytes;
  }

  /**
   * Reads and validates the boot sector and loads the first FAT. Throws IMAGE_NO_BOOT_PARTITION
   * when the partition holds no valid FAT file system, IMAGE_TRUNCATED when it runs past the image.
   */
  static async open(dev: SectorOverlay, partOffset: number, partSize: number): Promise<FatVolume> {
    if (partSize < 512) throw corrupt(`the partition is only ${partSize} bytes`);
    const bs = await dev.read(partOffset, 512);
    const notFat = (why: string) =>
      new InjectError('IMAGE_NO_BOOT_PARTITION', `the first FAT partition holds no valid FAT file system: ${why}`);
    if (bs[0] !== 0xeb && bs[0] !== 0xe9)
      throw notFat(`its boot sector starts with 0x${bs[0]!.toString(16)}, not a jump instruction (0xEB or 0xE9)`);
    if (bs[510] !== 0x55 || bs[511] !== 0xaa) throw notFat('its boot sector lacks the 55 aa signature');
    const bps = bs.readUInt16LE(11);
    const spc = bs[13]!;
    const reserved = bs.readUInt16LE(14);
    const numFats = bs[16]!;
    const rootEntries = bs.readUInt16LE(17);
    const total16 = bs.readUInt16LE(19);
    const fat16Size = bs.readUInt16LE(22);
    const total32 = bs.readUInt32LE(32);
    const fat32Size = bs.readUInt32LE(36);
    if (![512, 1024, 2048, 4096].includes(bps)) throw notFat(`bytes per sector is ${bps}`);
    if (spc === 0 || (spc & (spc - 1)) !== 0) throw notFat(`sectors per cluster is ${spc}, not a power of two`);
    if (reserved === 0) throw notFat('no reserved sectors');
    if (numFats === 0) throw notFat('no FAT copies');
    const fatSectors = fat16Size || fat32Size;
    const totalSectors = total16 || total32;
    if (fatSectors === 0 || totalSectors === 0)
      throw notFat(`FAT size ${fatSectors} sectors, volume size ${totalSectors} sectors`);
    const rootDirSectors = Math.ceil((rootEntries * SLOT) / bps);
    const firstDataSector = reserved + numFats * fatSectors + rootDirSectors;
    if (firstDataSector >= totalSectors)
      throw notFat(`the data area starts at sector ${firstDataSector}, past the volume's ${totalSectors} sectors`);
    if (totalSectors * bps > partSize) {
      throw notFat(`the file system claims ${totalSectors * bps} bytes but its partition has ${partSize}`);
    }
    const clusterCount = Math.floor((totalSectors - firstDataSector) / spc);
    const type: FatType = clusterCount < 4085 ? 'FAT12' : clusterCount < 65525 ? 'FAT16' : 'FAT32';
    if (type === 'FAT32' && (rootEntries !== 0 || fat16Size !== 0))
      throw notFat('FAT32 by its cluster count but it has a FAT12/16 root directory or FAT size');
    if (type !== 'FAT32' && rootEntries === 0)
      throw notFat(`${type} by its cluster count but it has no root directory entries`);
    const bitsPerEntry = type === 'FAT12' ? 12 : type === 'FAT16' ? 16 : 32;
    if (Math.floor((fatSectors * bps * 8) / bitsPerEntry) < clusterCount + 2)
      throw notFat(`its FAT (${fatSectors} sectors) cannot map its ${clusterCount} clusters`);
    const rootCluster = type === 'FAT32' ? bs.readUInt32LE(44) : 0;
    if (type === 'FAT32' && (rootCluster < 2 || rootCluster >= clusterCount + 2))
      throw notFat(`root directory cluster ${rootCluster} is out of range`);
    const fsInfoSector = type === 'FAT32' ? bs.readUInt16LE(48) : 0;
    // The whole FAT is read once: its size follows the boot partition, not the disk.
    const fat = await dev.read(partOffset + reserved * bps, fatSectors * bps);
    return new FatVolume(
      dev,
      partOffset,
      type,
      bps,
      spc,
      reserved,
      numFats,
      fatSectors,
      rootEntries,
      firstDataSector,
      clusterCount,
      rootCluster,
      fsInfoSector,
      fat,
    );
  }

  // ---- FAT entries -------------------------------------------------------------------------

  private get endOfChain(): number {
    return this.type === 'FAT12' ? 0xfff : this.type === 'FAT16' ? 0xffff : 0x0fffffff;
  }
  private isEndOfChain(v: number): boolean {
    return v >= (this.type === 'FAT12' ? 0xff8 : this.type === 'FAT16' ? 0xfff8 : 0x0ffffff8);
  }

  getEntry(n: number): number {
    if (this.type === 'FAT12') {
      const v = this.fat.readUInt16LE(n + (n >> 1));
      return n & 1 ? v >> 4 : v & 0xfff;
    }
    if (this.type === 'FAT16') return this.fat.readUInt16LE(n * 2);
    return this.fat.readUInt32LE(n * 4) & 0x0fffffff;
  }

  private setEntry(n: number, value: number): void {
    let off: number;
    let len: number;
    if (this.type === 'FAT12') {
      off = n + (n >> 1);
      len = 2;
      const v = this.fat.readUInt16LE(off);
      this.fat.writeUInt16LE(n & 1 ? (v & 0x000f) | (value << 4) : (v & 0xf000) | (value & 0xfff), off);
    } else if (this.type === 'FAT16') {
      off = n * 2;
      len = 2;
      this.fat.writeUInt16LE(value, off);
    } else {
      off = n * 4;
      len = 4;
      // The top 4 bits of a FAT32 entry are reserved and must be kept.
      this.fat.writeUInt32LE(((this.fat.readUInt32LE(off) & 0xf0000000) | (value & 0x0fffffff)) >>> 0, off);
    }
    this.dirtyFatSectors.add(Math.floor(off / this.bytesPerSector));
    this.dirtyFatSectors.add(Math.floor((off + len - 1) / this.bytesPerSector));
  }

  /** The clusters of a chain, checked: in range, no loops, properly ended. */
  chain(first: number, what: string): number[] {
    const out: number[] = [];
    let c = first;
    const max = this.clusterCount + 1;
    while (true) {
      if (c < 2 || c > max) throw corrupt(`${what}: cluster ${c} is outside the volume (2..${max})`);
      out.push(c);
      if (out.length > this.clusterCount) throw corrupt(`${what}: its cluster chain loops`);
      const next = this.getEntry(c);
      if (this.isEndOfChain(next)) return out;
      if (next === 0) throw corrupt(`${what}: its cluster chain runs into free cluster ${c}`);
      c = next;
    }
  }

  countFreeClusters(): number {
    let free = 0;
    for (let c = 2; c < this.clusterCount + 2; c++) if (this.getEntry(c) === 0) free++;
    return free;
  }

  /** Takes `count` free clusters (from the last allocation on, wrapping), links them, ends the chain. */
  private allocate(count: number): number[] {
    const out: number[] = [];
    const total = this.clusterCount;
    for (let i = 0; i < total && out.length < count; i++) {
      const c = 2 + ((this.nextFreeHint - 2 + i) % total);
      if (this.getEntry(c) === 0) out.push(c);
    }
    if (out.length < count)
      throw new InjectError(
        'BOOT_PARTITION_FULL',
        `the boot partition has ${out.length} free clusters, ${count} are needed`,
      );
    for (let i = 0; i < out.length; i++) this.setEntry(out[i]!, i + 1 < out.length ? out[i + 1]! : this.endOfChain);
    this.nextFreeHint = out.length ? out[out.length - 1]! + 1 : this.nextFreeHint;
    if (this.nextFreeHint >= total + 2) this.nextFreeHint = 2;
    return out;
  }

  private freeChain(first: number, what: string): void {
    if (first < 2) return;
    for (const c of this.chain(first, what)) this.setEntry(c, 0);
  }

  private clusterOffset(c: number): number {
    return this.partOffset + (this.firstDataSector + (c - 2) * this.sectorsPerCluster) * this.bytesPerSector;
  }

  // ---- directories -------------------------------------------------------------------------

  async root(): Promise<Directory> {
    if (this.type === 'FAT32') return this.readDirectoryClusters(this.rootCluster, '/');
    const cached = this.directories.get(0);
    if (cached) return cached;
    const start = this.partOffset + (this.reservedSectors + this.numFats * this.fatSectors) * this.bytesPerSector;
    const sectors = Math.ceil((this.rootEntries * SLOT) / this.bytesPerSector);
    const buf = await this.dev.read(start, sectors * this.bytesPerSector);
    const dir = new Directory(
      buf,
      Array.from({ length: sectors }, (_, i) => start + i * this.bytesPerSector),
      null,
      '/',
    );
    this.directories.set(0, dir);
    return dir;
  }

  private async readDirectoryClusters(first: number, path: string): Promise<Directory> {
    const cached = this.directories.get(first);
    if (cached) return cached;
    const clusters = this.chain(first, `directory ${path}`);
    const parts: Buffer[] = [];
    const offsets: number[] = [];
    for (const c of clusters) {
      const at = this.clusterOffset(c);
      parts.push(await this.dev.read(at, this.clusterBytes));
      for (let s = 0; s < this.sectorsPerCluster; s++) offsets.push(at + s * this.bytesPerSector);
    }
    const dir = new Directory(Buffer.concat(parts), offsets, clusters, path);
    this.directories.set(first, dir);
    return dir;
  }

  /** The directory's live entries (volume labels and deleted entries left out). */
  entries(dir: Directory): DirEntry[] {
    const out: DirEntry[] = [];
    let lfn: { parts: string[]; expected: number; checksum: number; start: number; next: number } | null = null;
    for (let i = 0; i < dir.slotCount; i++) {
      const s = dir.buf.subarray(i * SLOT, (i + 1) * SLOT);
      const first = s[0]!;
      if (first === 0x00) break;
      if (first === DELETED) {
        lfn = null;
        continue;
      }
      const attr = s[11]!;
      if ((attr & 0x3f) === ATTR_LONG_NAME) {
        const ord = first & 0x1f;
        if (first & 0x40) lfn = { parts: [], expected: ord, checksum: s[13]!, start: i, next: ord };
        if (!lfn || ord !== lfn.next || ord === 0 || s[13] !== lfn.checksum) {
          lfn = null;
          continue;
        }
        lfn.parts[ord - 1] = lfnChars(s);
        lfn.next = ord - 1;
        continue;
      }
      const shortName = displayShortName(s);
      let name = shortName;
      let firstSlot = i;
      if (lfn && lfn.next === 0 && lfn.checksum === shortNameChecksum(s.subarray(0, 11))) {
        name = lfn.parts.join('');
        firstSlot = lfn.start;
      } else if (s[12]! & 0x18) {
        name = displayShortName(s, true);
      }
      lfn = null;
      if (attr & ATTR_VOLUME_ID) continue;
      const hi = this.type === 'FAT32' ? s.readUInt16LE(20) : 0;
      out.push({
        name,
        shortName,
        attr,
        firstCluster: (hi << 16) | s.readUInt16LE(26),
        size: s.readUInt32LE(28),
        firstSlot,
        slot: i,
      });
    }
    return out;
  }

  find(dir: Directory, name: string): DirEntry | undefined {
    const want = name.toLowerCase();
    return this.entries(dir).find((e) => e.name.toLowerCase() === want || e.shortName.toLowerCase() === want);
  }

  /** Looks a path up from the root (`/`-separated, case-insensitive, as the firmware does). */
  async lookup(path: string): Promise<{ dir: Directory; entry: DirEntry } | undefined> {
    const parts = path.split('/').filter((p) => p !== '' && p !== '.');
    if (!parts.length) return undefined;
    let dir = await this.root();
    for (let i = 0; i < parts.length; i++) {
      const entry = this.find(dir, parts[i]!);
      if (!entry) return undefined;
      if (i === parts.length - 1) return { dir, entry };
      if (!(entry.attr & ATTR_DIRECTORY) || entry.firstCluster < 2) return undefined;
      dir = await this.readDirectoryClusters(entry.firstCluster, `/${parts.slice(0, i + 1).join('/')}`);
    }
    return undefined;
  }

  async readFile(entry: DirEntry, maxBytes: number): Promise<Buffer> {
    if (entry.attr & ATTR_DIRECTORY) throw corrupt(`${entry.name} is a directory, a file was expected`);
    if (entry.size > maxBytes)
      throw new InjectError(
        'BOOT_CONFIG_UNSUPPORTED',
        `${entry.name} is ${entry.size} bytes; more than ${maxBytes} is not a plausible boot configuration file`,
      );
    if (entry.size === 0) return Buffer.alloc(0);
    const clusters = this.chain(entry.firstCluster, entry.name);
    if (clusters.length * this.clusterBytes < entry.size)
      throw corrupt(`${entry.name} is ${entry.size} bytes but its chain holds only ${clusters.length} clusters`);
    const parts: Buffer[] = [];
    let left = entry.size;
    for (const c of clusters) {
      if (left <= 0) break;
      const n = Math.min(left, this.clusterBytes);
      parts.push(await this.dev.read(this.clusterOffset(c), n));
      left -= n;
    }
    return Buffer.concat(parts);
  }

  /** The first `n` bytes of a file (fewer when it is shorter): enough to recognise a kernel. */
  async readHead(entry: DirEntry, n: number): Promise<Buffer> {
    const want = Math.min(n, entry.size);
    if (want === 0 || entry.firstCluster < 2) return Buffer.alloc(0);
    const parts: Buffer[] = [];
    let left = want;
    let c = entry.firstCluster;
    for (let i = 0; left > 0; i++) {
      if (c < 2 || c > this.clusterCount + 1 || i > this.clusterCount)
        throw corrupt(`${entry.name}: its cluster chain is broken`);
      const take = Math.min(left, this.clusterBytes);
      parts.push(await this.dev.read(this.clusterOffset(c), take));
      left -= take;
      if (left > 0) {
        const next = this.getEntry(c);
        if (this.isEndOfChain(next)) break;
        c = next;
      }
    }
    return Buffer.concat(parts);
  }

  // ---- writing -----------------------------------------------------------------------------

  private clustersFor(bytes: number): number {
    return Math.ceil(bytes / this.clusterBytes);
  }

  /**
   * Checks that `files` fit in `dir` once the files they replace are gone: free clusters and, for
   * the fixed FAT12/16 root directory, free entries. Throws BOOT_PARTITION_FULL naming the sizes.
   */
  checkRoom(dir: Directory, files: readonly NewFile[]): void {
    let need = 0;
    let freed = 0;
    let slotsNeeded = 0;
    for (const f of files) {
      need += this.clustersFor(f.data.length);
      const old = this.find(dir, f.name);
      if (old) freed += old.firstCluster >= 2 ? this.chain(old.firstCluster, old.name).length : 0;
      else slotsNeeded += 1 + (needsLongName(f.name) ? Math.ceil(f.name.length / LFN_CHARS) : 0);
    }
    const freeSlots = countFreeSlots(dir);
    const dirGrowth =
      slotsNeeded > freeSlots
        ? dir.clusters
          ? Math.ceil(((slotsNeeded - freeSlots) * SLOT) / this.clusterBytes)
          : Infinity
        : 0;
    const free = this.countFreeClusters();
    const names = files.map((f) => `${f.name} ${formatBytes(f.data.length)}`).join(', ');
    if (dirGrowth === Infinity) {
      throw new InjectError(
        'BOOT_PARTITION_FULL',
        `the boot partition's ${this.type} root directory is full: ` +
          `${slotsNeeded} entries are needed for ${names}, ${freeSlots} of ${dir.slotCount} are free`,
      );
    }
    if (need + dirGrowth > free + freed) {
      throw new InjectError(
        'BOOT_PARTITION_FULL',
        `the boot partition (${this.type}, ${formatBytes(this.dataBytes)}) ` +
          `has ${formatBytes(free * this.clusterBytes)} free` +
          (freed ? ` (${formatBytes(freed * this.clusterBytes)} more once the files being replaced are gone)` : '') +
          `, but ${names} need ${formatBytes((need + dirGrowth) * this.clusterBytes)} ` +
          `in ${this.clusterBytes}-byte clusters: ` +
          `${formatBytes((need + dirGrowth - free - freed) * this.clusterBytes)} short`,
      );
    }
  }

  /** Creates `name` in `dir`, or replaces its content when it exists (its chain freed, a new one allocated). */
  writeFile(dir: Directory, name: string, data: Buffer, now: Date): void {
    const old = this.find(dir, name);
    if (old && old.attr & ATTR_DIRECTORY)
      throw new InjectError(
        'BOOT_PARTITION_FULL',
        `cannot write ${name}: the boot partition has a directory of that name`,
      );
    if (old) this.freeChain(old.firstCluster, old.name);
    const clusters = data.length ? this.allocate(this.clustersFor(data.length)) : [];
    for (let i = 0; i < clusters.length; i++) {
      const piece = Buffer.alloc(this.clusterBytes);
      data.copy(piece, 0, i * this.clusterBytes, Math.min(data.length, (i + 1) * this.clusterBytes));
      this.dev.write(this.clusterOffset(clusters[i]!), piece);
    }
    const first = clusters[0] ?? 0;
    if (old) {
      const s = dir.buf.subarray(old.slot * SLOT, (old.slot + 1) * SLOT);
      s[11] = (s[11]! | ATTR_ARCHIVE) & ~ATTR_READ_ONLY;
      writeTimes(s, now, false);
      this.setFirstCluster(s, first);
      s.writeUInt32LE(data.length, 28);
      markSlots(dir, old.slot, old.slot);
      return;
    }
    this.createEntry(dir, name, first, data.length, now);
  }

  private setFirstCluster(s: Buffer, first: number): void {
    s.writeUInt16LE(this.type === 'FAT32' ? first >>> 16 : 0, 20);
    s.writeUInt16LE(first & 0xffff, 26);
  }

  private createEntry(dir: Directory, name: string, first: number, size: number, now: Date): void {
    // eslint-disable-next-line no-control-regex -- a FAT long name may not hold control characters (0x00-0x1f)
    if (name.length > 255 || /[\x00-\x1f"*/:<>?\\|]/.test(name) || /^[. ]*$/.test(name))
      throw new Error(`"${name}" is not a valid FAT long file name`);
    const existing = new Set(this.entries(dir).map((e) => e.shortName.toUpperCase()));
    const { short11, lossless } = makeShortName(name, existing);
    const longName = needsLongName(name) || !lossless;
    const lfnSlots = longName ? Math.ceil(name.length / LFN_CHARS) : 0;
    const slots = lfnSlots + 1;
    let at = findFreeRun(dir, slots);
    if (at < 0) {
      if (!dir.clusters)
        throw new InjectError(
          'BOOT_PARTITION_FULL',
          `the boot partition's root directory is full (${dir.slotCount} entries)`,
        );
      this.growDirectory(dir, slots);
      at = findFreeRun(dir, slots);
      if (at < 0) throw new Error('directory growth left no free run');
    }
    const endBefore = firstEndMarker(dir);
    const checksum = shortNameChecksum(short11);
    for (let k = 0; k < lfnSlots; k++) {
      const ord = lfnSlots - k; // long-name parts are stored last part first
      const s = dir.buf.subarray((at + k) * SLOT, (at + k + 1) * SLOT);
      s.fill(0);
      s[0] = ord | (k === 0 ? 0x40 : 0);
      s[11] = ATTR_LONG_NAME;
      s[13] = checksum;
      const chars: number[] = [];
      for (let j = 0; j < LFN_CHARS; j++) {
        const idx = (ord - 1) * LFN_CHARS + j;
        chars.push(idx < name.length ? name.charCodeAt(idx) : idx === name.length ? 0x0000 : 0xffff);
      }
      const positions = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
      positions.forEach((p, j) => s.writeUInt16LE(chars[j]!, p));
    }
    const s = dir.buf.subarray((at + lfnSlots) * SLOT, (at + slots) * SLOT);
    s.fill(0);
    short11.copy(s, 0);
    s[11] = ATTR_ARCHIVE;
    writeTimes(s, now, true);
    this.setFirstCluster(s, first);
    s.writeUInt32LE(size, 28);
    markSlots(dir, at, at + slots - 1);
    // The run may have taken the end-of-directory marker's place: slots past it were free by
    // definition but may hold stale bytes, so the slot after the run becomes the new marker.
    const after = at + slots;
    if (endBefore >= 0 && after > endBefore && after < dir.slotCount && dir.buf[after * SLOT] !== 0) {
      dir.buf.fill(0, after * SLOT, (after + 1) * SLOT);
      markSlots(dir, after, after);
    }
  }

  private growDirectory(dir: Directory, slots: number): void {
    const extra = Math.max(1, Math.ceil((slots * SLOT) / this.clusterBytes));
    const added = this.allocate(extra);
    this.setEntry(dir.clusters![dir.clusters!.length - 1]!, added[0]!);
    const firstNewSector = dir.sectorOffsets.length;
    for (const c of added) {
      dir.clusters!.push(c);
      for (let s = 0; s < this.sectorsPerCluster; s++)
        dir.sectorOffsets.push(this.clusterOffset(c) + s * this.bytesPerSector);
    }
    dir.buf = Buffer.concat([dir.buf, Buffer.alloc(extra * this.clusterBytes)]);
    for (let s = firstNewSector; s < dir.sectorOffsets.length; s++) dir.dirtySectors.add(s);
  }

  /** Writes the changed directory sectors, every FAT copy's changed sectors and FAT32's FSInfo. */
  async flush(dirs: readonly Directory[]): Promise<void> {
    for (const dir of dirs) {
      for (const s of [...dir.dirtySectors].sort((a, b) => a - b)) {
        this.dev.write(dir.sectorOffsets[s]!, dir.buf.subarray(s * this.bytesPerSector, (s + 1) * this.bytesPerSector));
      }
      dir.dirtySectors.clear();
    }
    for (const s of [...this.dirtyFatSectors].sort((a, b) => a - b)) {
      const bytes = this.fat.subarray(s * this.bytesPerSector, (s + 1) * this.bytesPerSector);
      for (let k = 0; k < this.numFats; k++) {
        this.dev.write(this.partOffset + (this.reservedSectors + k * this.fatSectors + s) * this.bytesPerSector, bytes);
      }
    }
    this.dirtyFatSectors.clear();
    if (this.type === 'FAT32' && this.fsInfoSector > 0 && this.fsInfoSector < this.reservedSectors) {
      const at = this.partOffset + this.fsInfoSector * this.bytesPerSector;
      const info = await this.dev.read(at, this.bytesPerSector);
      // Only a valid FSInfo is updated; an absent one (signature missing) stays absent.
      if (info.readUInt32LE(0) === 0x41615252 && info.readUInt32LE(484) === 0x61417272) {
        info.writeUInt32LE(this.countFreeClusters(), 488);
        info.writeUInt32LE(this.nextFreeHint, 492);
        this.dev.write(at, info);
      }
    }
  }
}

// ---- names -----------------------------------------------------------------------------------

const SHORT_CHARS = /^[A-Z0-9$%'\-_@~`!(){}^#&]$/;

function lfnChars(s: Buffer): string {
  const positions = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
  let out = '';
  for (const p of positions) {
    const c = s.readUInt16LE(p);
    if (c === 0x0000 || c === 0xffff) break;
    out += String.fromCharCode(c);
  }
  return out;
}

export function shortNameChecksum(name11: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + name11[i]!) & 0xff;
  return sum;
}

function displayShortName(s: Buffer, withCaseFlags = false): string {
  const raw = Buffer.from(s.subarray(0, 11));
  if (raw[0] === 0x05) raw[0] = DELETED; // 0x05 stands for a real leading 0xE5 byte
  let base = raw.subarray(0, 8).toString('latin1').trimEnd();
  let ext = raw.subarray(8, 11).toString('latin1').trimEnd();
  if (withCaseFlags) {
    if (s[12]! & 0x08) base = base.toLowerCase();
    if (s[12]! & 0x10) ext = ext.toLowerCase();
  }
  return ext ? `${base}.${ext}` : base;
}

/** True unless the name is already a valid upper-case 8.3 name (which needs no long-name entries). */
export function needsLongName(name: string): boolean {
  const m = /^([^.]{1,8})(?:\.([^.]{1,3}))?$/.exec(name);
  if (!m) return true;
  return ![...m[1]!, ...(m[2] ?? '')].every((c) => SHORT_CHARS.test(c));
}

/** The 8.3 alias for a long name, unique in the directory (`~N` tails as Windows and Linux make them). */
export function makeShortName(name: string, existing: ReadonlySet<string>): { short11: Buffer; lossless: boolean } {
  const upper = name.toUpperCase();
  const dot = upper.lastIndexOf('.');
  const rawBase = dot > 0 ? upper.slice(0, dot) : upper;
  const rawExt = dot > 0 ? upper.slice(dot + 1) : '';
  let lossy = false;
  const clean = (s: string) =>
    [...s]
      .filter((c) => {
        if (c === ' ' || c === '.') {
          lossy = true;
          return false;
        }
        return true;
      })
      .map((c) => {
        if (SHORT_CHARS.test(c)) return c;
        lossy = true;
        return '_';
      })
      .join('');
  let base = clean(rawBase.replace(/^\.+/, ''));
  let ext = clean(rawExt);
  if (base.length > 8 || ext.length > 3) lossy = true;
  ext = ext.slice(0, 3);
  if (!base) base = '_';
  const display = (b: string) => (ext ? `${b}.${ext}` : b);
  const to11 = (b: string) => Buffer.from(b.padEnd(8, ' ') + ext.padEnd(3, ' '), 'latin1');
  if (!lossy && base.length <= 8 && !existing.has(display(base))) return { short11: to11(base), lossless: true };
  for (let n = 1; n < 1_000_000; n++) {
    const tail = `~${n}`;
    const candidate = base.slice(0, 8 - tail.length) + tail;
    if (!existing.has(display(candidate))) return { short11: to11(candidate), lossless: false };
  }
  throw new Error(`no free 8.3 alias for ${name}`);
}

/** Slots free for new entries: deleted ones and every slot from the end marker on. */
export function countFreeSlots(dir: Directory): number {
  let free = 0;
  for (let i = 0; i < dir.slotCount; i++) {
    const b = dir.buf[i * SLOT]!;
    if (b === 0x00) return free + (dir.slotCount - i);
    if (b === DELETED) free++;
  }
  return free;
}

function firstEndMarker(dir: Directory): number {
  for (let i = 0; i < dir.slotCount; i++) if (dir.buf[i * SLOT] === 0x00) return i;
  return -1;
}

/** First run of `n` consecutive free slots (deleted, or at/after the end marker). */
function findFreeRun(dir: Directory, n: number): number {
  let runStart = -1;
  let run = 0;
  let pastEnd = false;
  for (let i = 0; i < dir.slotCount; i++) {
    const b = dir.buf[i * SLOT]!;
    if (b === 0x00) pastEnd = true;
    if (pastEnd || b === DELETED) {
      if (run === 0) runStart = i;
      if (++run === n) return runStart;
    } else run = 0;
  }
  return -1;
}

function markSlots(dir: Directory, from: number, to: number): void {
  const sectorSize = dir.buf.length / dir.sectorOffsets.length;
  for (let s = Math.floor((from * SLOT) / sectorSize); s <= Math.floor(((to + 1) * SLOT - 1) / sectorSize); s++)
    dir.dirtySectors.add(s);
}

function writeTimes(s: Buffer, now: Date, created: boolean): void {
  // FAT stores local time without a zone; UTC keeps the result the same on every server.
  const date = ((Math.max(now.getUTCFullYear(), 1980) - 1980) << 9) | ((now.getUTCMonth() + 1) << 5) | now.getUTCDate();
  const time = (now.getUTCHours() << 11) | (now.getUTCMinutes() << 5) | Math.floor(now.getUTCSeconds() / 2);
  if (created) {
    s[13] = 0;
    s.writeUInt16LE(time, 14);
    s.writeUInt16LE(date, 16);
  }
  s.writeUInt16LE(date, 18); // last access
  s.writeUInt16LE(time, 22);
  s.writeUInt16LE(date, 24);
}
