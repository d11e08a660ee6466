// A small seeded PRNG (mulberry32) for the hostile tests and the fuzzer: a failing run is
// replayed exactly from its printed seed.
//
// Invariants: pure and deterministic — the same seed gives the same sequence on every machine;
// no global state (each Prng is independent).

export class Prng {
  #state: number;

  constructor(readonly seed: number) {
    this.#state = seed >>> 0;
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [min, max] (both inclusive). */
  int(min: number, max: number): number {
    return min + (this.next() % (max - min + 1));
  }

  /** true with probability p. */
  chance(p: number): boolean {
    return this.next() / 0x1_0000_0000 < p;
  }

  pick<T>(items: readonly T[]): T {
    const item = items[this.int(0, items.length - 1)];
    if (item === undefined) throw new RangeError('pick from an empty list');
    return item;
  }

  bytes(length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    for (let i = 0; i < length; i++) out[i] = this.next() & 0xff;
    return out;
  }
}

/** The seed to use: FUZZ_SEED from the environment if set (to replay a failure), else `fallback`. */
export function seedFromEnv(fallback: number): number {
  const text = process.env['FUZZ_SEED'];
  if (text === undefined || text === '') return fallback;
  const seed = Number(text);
  if (!Number.isSafeInteger(seed)) throw new Error(`FUZZ_SEED must be an integer, got "${text}"`);
  return seed;
}
