/**
 * Seeded pseudo-random input for the fuzz tests: the same seed gives the same sequence, so a
 * failure names its seed and case number and replays with `FUZZ_SEED=<seed>`. No dependency:
 * mulberry32 is enough to spread inputs; it is no source of secrets.
 */

/** The run's seed: FUZZ_SEED when set, else a fixed one (CI runs stay comparable). */
export function fuzzSeed(fallback = 0x9e3779b9): number {
  const fromEnv = Number(process.env.FUZZ_SEED);
  return Number.isSafeInteger(fromEnv) ? fromEnv >>> 0 : fallback;
}

export interface Rng {
  readonly seed: number;
  /** [0, 1) */
  next(): number;
  /** An integer in [0, n). */
  int(n: number): number;
  bool(p?: number): boolean;
  pick<T>(items: readonly T[]): T;
  bytes(n: number): Buffer;
  /** A string of `n` characters drawn from `alphabet`. */
  text(n: number, alphabet?: string): string;
}

export function rng(seed: number): Rng {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return {
    seed,
    next,
    int,
    bool: (p = 0.5) => next() < p,
    pick: (items) => items[int(items.length)]!,
    bytes(n) {
      const b = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) b[i] = int(256);
      return b;
    },
    text(n, alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:%?#[]@!$&'()*+,;= ") {
      let s = '';
      for (let i = 0; i < n; i++) s += alphabet[int(alphabet.length)];
      return s;
    },
  };
}

/** Runs `step(i)` until `ms` have passed (at least `min` times): a fuzz loop bounded in time. */
export async function forAWhile(ms: number, step: (i: number) => Promise<void>, min = 1): Promise<number> {
  const end = performance.now() + ms;
  let i = 0;
  while (i < min || performance.now() < end) await step(i++);
  return i;
}
