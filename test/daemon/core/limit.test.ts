import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { largestMemoryBytes, limitBytesFor } from '../../../daemon/core/limit.ts';

const GiB = 2 ** 30;
const MAX = Number.MAX_SAFE_INTEGER;

/** The same computation in BigInt, which cannot lose precision: the oracle. */
function oracle(memory: number, overhead: number, page: number): bigint {
  const sum = BigInt(memory) + BigInt(overhead);
  const p = BigInt(page);
  return ((sum + p - 1n) / p) * p;
}

const pageSizes = fc.integer({ min: 0, max: 40 }).map((e) => 2 ** e);
const bytes = fc.oneof(fc.nat(), fc.integer({ min: 0, max: MAX }), fc.constantFrom(0, MAX, MAX - 1, 2 ** 52));

describe('limitBytesFor', () => {
  it('adds the overhead and rounds up to the page size', () => {
    assert.equal(limitBytesFor(4 * GiB, GiB, 4096), 5 * GiB);
    assert.equal(limitBytesFor(1, 0, 4096), 4096);
    assert.equal(limitBytesFor(4097, 0, 4096), 8192);
    assert.equal(limitBytesFor(0, 0, 4096), 0);
    assert.equal(limitBytesFor(1000, 24, 1), 1024);
    assert.equal(limitBytesFor(3 * GiB + 1, GiB, 2 * 1024 * 1024), 4 * GiB + 2 * 1024 * 1024);
  });

  it('matches a BigInt oracle whenever the result is representable, and throws otherwise', () => {
    fc.assert(fc.property(bytes, bytes, pageSizes, (memory, overhead, page) => {
      const exact = oracle(memory, overhead, page);
      if (exact <= BigInt(MAX)) {
        assert.equal(BigInt(limitBytesFor(memory, overhead, page)), exact);
      } else {
        assert.throws(() => limitBytesFor(memory, overhead, page), RangeError);
      }
    }), { numRuns: 2000 });
  });

  it('throws at the exact edge of representability instead of rounding', () => {
    assert.equal(limitBytesFor(MAX - 4095 - GiB, GiB, 4096), MAX - 4095);
    assert.throws(() => limitBytesFor(MAX - 4095 - GiB + 1, GiB, 4096), (e: unknown) =>
      e instanceof RangeError && /exceeds 9007199254740991/.test(e.message) && /largest memoryBytes here/.test(e.message));
    assert.throws(() => limitBytesFor(MAX, MAX, 1), RangeError);
    assert.equal(limitBytesFor(MAX, 0, 1), MAX);
  });

  it('rejects inputs that are not non-negative safe integers, naming the input', () => {
    for (const bad of [-1, 0.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
      assert.throws(() => limitBytesFor(bad, 0, 4096), /memoryBytes must be a non-negative safe integer/);
      assert.throws(() => limitBytesFor(0, bad, 4096), /overheadBytes must be a non-negative safe integer/);
    }
  });

  it('rejects page sizes that are not powers of two', () => {
    for (const bad of [0, -4096, 3, 4095, 6144, 0.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53 + 2, 3 * 2 ** 40]) {
      assert.throws(() => limitBytesFor(1, 0, bad), /pageSize must be a power of two/);
    }
    assert.equal(limitBytesFor(1, 0, 2 ** 52), 2 ** 52, 'large powers of two are fine (no 32-bit tricks)');
  });
});

describe('largestMemoryBytes', () => {
  it('is exactly the boundary where limitBytesFor starts to throw', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 2 ** 50 }), pageSizes, (overhead, page) => {
      const largest = largestMemoryBytes(overhead, page);
      assert.ok(limitBytesFor(largest, overhead, page) <= MAX);
      if (largest < MAX) assert.throws(() => limitBytesFor(largest + 1, overhead, page), RangeError);
    }), { numRuns: 1000 });
  });

  it('is MAX_SAFE_INTEGER less the overhead, aligned, for 4 KiB pages', () => {
    assert.equal(largestMemoryBytes(GiB, 4096), MAX - 4095 - GiB);
    assert.equal(largestMemoryBytes(0, 1), MAX);
  });

  it('throws when the overhead alone is unrepresentable, or inputs are invalid', () => {
    assert.throws(() => largestMemoryBytes(MAX, 4096), /leaves no representable limit/);
    assert.throws(() => largestMemoryBytes(-1, 4096), /overheadBytes must be/);
    assert.throws(() => largestMemoryBytes(GiB, 12), /pageSize must be a power of two/);
  });
});
