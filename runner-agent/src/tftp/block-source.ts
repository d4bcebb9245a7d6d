/**
 * Where a sender takes its DATA payloads from: a Buffer (client uploads) or a file read ahead in
 * chunks (server downloads), so a window is sent without waiting for the disk per packet.
 */

/** The file-reading side of a virtual file (the server's TftpFile has this shape). */
export interface ReadableFile {
  readonly size: number;
  read(position: number, length: number): Promise<Buffer>;
}

export interface BlockSource {
  readonly size: number;
  readonly blksize: number;
  /** Number of DATA blocks: a short (possibly empty) last block always ends the transfer. */
  readonly blocks: number;
  /**
   * The whole DATA packet of block `n` (1-based, not wrapped) — 4-byte header, then the payload —
   * when it is in memory, else undefined. Packets are built once, so sending one is a single
   * buffer with no per-packet allocation; a packet's bytes never change, so a resend may reuse it
   * even while an earlier send of it is still queued.
   */
  packet(n: number): Buffer | undefined;
  /** Brings blocks `from`..`to` into memory: undefined when they already are (no await needed). */
  load(from: number, to: number): Promise<void> | undefined;
}

/** Blocks needed for `size` bytes: a size that is a multiple of blksize ends with an empty block. */
export function blockCount(size: number, blksize: number): number {
  return Math.floor(size / blksize) + 1;
}

export class BufferBlockSource implements BlockSource {
  readonly size: number;
  readonly blocks: number;
  constructor(
    private readonly data: Buffer,
    readonly blksize: number,
  ) {
    this.size = data.length;
    this.blocks = blockCount(this.size, blksize);
  }
  packet(n: number): Buffer | undefined {
    const start = (n - 1) * this.blksize;
    return frame(n, this.data.subarray(start, Math.min(start + this.blksize, this.size)));
  }
  load(): undefined {
    return undefined;
  }
}

/** A DATA packet for block `n` around `payload` (a copy). */
export function frame(n: number, payload: Buffer): Buffer {
  const packet = Buffer.allocUnsafe(4 + payload.length);
  packet.writeUInt16BE(3, 0); // DATA
  packet.writeUInt16BE(n & 0xffff, 2);
  payload.copy(packet, 4);
  return packet;
}

interface Chunk {
  /** First and one-past-last block held. */
  first: number;
  end: number;
  /** The chunk's blocks as consecutive DATA packets, each `blksize + 4` bytes but the last. */
  data?: Buffer;
  loading?: Promise<void>;
}

/**
 * Holds at most two chunks of a file: the one being sent and the next one, read while the current
 * one goes out. Chunks start on block boundaries so every block lies inside one chunk, and each chunk
 * is a fresh Buffer: blocks handed to `socket.send` stay valid even if the send is queued.
 *
 * Reading ahead waits for the client: until it acknowledged a block (the first window, block 1
 * on), only the window asked for is read. A request that nobody answers (a spoofed source, a
 * flood, a client gone) then costs one window, not two chunks; after that the transfer holds at
 * most two chunks, read as the client's ACKs move the window into them.
 */
export class ReadAheadBlockSource implements BlockSource {
  readonly blocks: number;
  private readonly blocksPerChunk: number;
  private chunks: Chunk[] = [];
  /** A read failure is kept and thrown by the next load, so the transfer ends with it. */
  private failure?: Error;

  /** `chunkBytes` should hold a window at least: a window then lies in at most two chunks. */
  constructor(
    private readonly file: ReadableFile,
    readonly blksize: number,
    chunkBytes = 256 * 1024,
  ) {
    this.blocks = blockCount(file.size, blksize);
    this.blocksPerChunk = Math.max(1, Math.floor(chunkBytes / blksize));
  }

  get size(): number {
    return this.file.size;
  }

  packet(n: number): Buffer | undefined {
    for (const c of this.chunks) {
      if (c.data && n >= c.first && n < c.end) {
        const start = (n - c.first) * (this.blksize + 4);
        return c.data.subarray(start, Math.min(start + this.blksize + 4, c.data.length));
      }
    }
    return undefined;
  }

  load(from: number, to: number): Promise<void> | undefined {
    if (this.failure) return Promise.reject(this.failure);
    // The sender asks for block 1 only until the client acknowledged one: no read-ahead before that.
    const ahead = from > 1;
    // Fast path, taken by almost every window: inside the current chunk, next chunk already asked for.
    const current = this.chunks[0];
    if (
      current?.data &&
      from >= current.first &&
      to < current.end &&
      (this.chunks.length === 2 || current.end > this.blocks || !ahead)
    )
      return undefined;
    let first = this.chunks.find((c) => from >= c.first && from < c.end);
    if (!first) {
      // A window outside the held chunks (the first one, or after a failed read): read afresh.
      first = this.startChunk(from, ahead ? Math.max(this.blocksPerChunk, to - from + 1) : to - from + 1);
      this.chunks = [first];
    }
    let second: Chunk | undefined;
    if (to >= first.end) {
      // The window straddles two chunks: the second is normally the one read ahead.
      second = this.chunks.find((c) => c.first === first.end);
      if (!second) {
        second = this.startChunk(first.end, Math.max(this.blocksPerChunk, to - first.end + 1));
        this.chunks = [first, second];
      }
    }
    // The send position never moves back past `from` (restarts go to the last ACK + 1), so older
    // chunks can go; then read the next chunk while this one is sent.
    this.chunks = this.chunks.filter((c) => c.end > from);
    const last = this.chunks[this.chunks.length - 1]!;
    if (ahead && this.chunks.length < 2 && last.end <= this.blocks)
      this.chunks.push(this.startChunk(last.end, this.blocksPerChunk));
    const pending = [first.loading, second?.loading].filter((p): p is Promise<void> => p !== undefined);
    if (pending.length === 0) return undefined;
    return Promise.all(pending).then(() => {
      if (this.failure) throw this.failure;
    });
  }

  /** Lays `count` blocks out as DATA packets: one copy per chunk instead of work per send. */
  private framed(first: number, count: number, data: Buffer): Buffer {
    const stride = this.blksize + 4;
    const out = Buffer.allocUnsafe(count * 4 + data.length);
    // One bulk copy to the tail, then each block slides forward into its slot with copyWithin
    // (a native memmove, far cheaper per block than Buffer#copy). Slots never overtake sources.
    const tail = count * 4;
    out.set(data, tail);
    for (let i = 0; i < count; i++) {
      const at = i * stride;
      const src = tail + i * this.blksize;
      out.copyWithin(at + 4, src, Math.min(src + this.blksize, out.length));
      const n = first + i;
      out[at] = 0;
      out[at + 1] = 3; // DATA
      out[at + 2] = (n >> 8) & 0xff;
      out[at + 3] = n & 0xff;
    }
    return out;
  }

  private startChunk(first: number, count: number): Chunk {
    const end = Math.min(first + count, this.blocks + 1);
    const chunk: Chunk = { first, end };
    const position = (first - 1) * this.blksize;
    const length = Math.min((end - first) * this.blksize, this.file.size - position);
    // A read that throws at once (a resolver's bug) fails the transfer like one that rejects.
    const read = (): Promise<Buffer> =>
      length <= 0 ? Promise.resolve(Buffer.alloc(0)) : this.file.read(position, length);
    chunk.loading = Promise.resolve()
      .then(read)
      .then((data) => {
        if (data.length !== length) {
          throw new Error(`file read at ${position} returned ${data.length} bytes, expected ${length} (file shrank?)`);
        }
        chunk.data = this.framed(first, end - first, data);
        chunk.loading = undefined;
      })
      .catch((err: unknown) => {
        this.failure ??= err instanceof Error ? err : new Error(String(err));
        chunk.loading = undefined;
      });
    return chunk;
  }
}
