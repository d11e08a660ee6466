import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { SizeError, describeBytes, formatSize, formatSizeApprox, parseSize } from '../../shared/sizes.ts';
import { filesMatching } from '../support/sources.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

test('parseSize reads bytes and binary units in every accepted spelling', () => {
  const cases: [string, number][] = [
    ['4096', 4096], ['0', 0], ['4096B', 4096], ['4096 b', 4096],
    ['8G', 8 * GiB], ['8GiB', 8 * GiB], ['8Gi', 8 * GiB], ['8 GiB', 8 * GiB], ['8g', 8 * GiB], ['8gib', 8 * GiB],
    ['512M', 512 * MiB], ['512MiB', 512 * MiB], ['512 MiB', 512 * MiB],
    ['64K', 64 * KiB], ['64KiB', 64 * KiB], ['2T', 2 * TiB], ['2TiB', 2 * TiB],
    ['1.5G', 1.5 * GiB], ['1.5 GiB', 1.5 * GiB], ['0.5K', 512], ['1.125G', 1.125 * GiB],
    ['  8G  ', 8 * GiB], ['08G', 8 * GiB],
    [String(Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER],
  ];
  for (const [text, bytes] of cases) assert.equal(parseSize(text), bytes, text);
});

test('parseSize refuses decimal-looking units as ambiguous and says what to write', () => {
  for (const text of ['8GB', '8gb', '8 GB', '512MB', '1KB', '2TB', '8Gb']) {
    assert.throws(() => parseSize(text), (e: unknown) => {
      assert.ok(e instanceof SizeError, text);
      assert.match(e.message, /ambiguous/);
      assert.match(e.message, /iB/);
      return true;
    });
  }
  assert.throws(() => parseSize('8GB'), /write 8GiB/);
});

test('parseSize refuses fractions of a byte, with the exact amount', () => {
  assert.throws(() => parseSize('1.1K'), /not a whole number of bytes \(1126\.4 bytes\)/);
  assert.throws(() => parseSize('0.5'), /not a whole number of bytes \(0\.5 bytes\)/);
  assert.throws(() => parseSize('1.0000000001G'), SizeError);
});

test('parseSize refuses malformed text and names the accepted forms', () => {
  for (const text of ['', '   ', 'G', '-1G', '+1G', '1e9', '1,5G', '1.G', '.5G', '8 G B', '8  G', '0x10', 'NaN', 'Infinity', '8PiB', '8E', '8 GiBs']) {
    assert.throws(() => parseSize(text), (e: unknown) => {
      assert.ok(e instanceof SizeError, JSON.stringify(text));
      assert.match(e.message, /expected|unit|ambiguous/, text);
      return true;
    });
  }
  assert.throws(() => parseSize('8X'), /unknown unit "X": expected a whole number of bytes/);
  assert.throws(() => parseSize('1'.repeat(65)), /at most 64/);
});

test('parseSize refuses sizes past 2^53 - 1 instead of rounding', () => {
  assert.throws(() => parseSize(String(Number.MAX_SAFE_INTEGER + 1)), /too large/);
  assert.throws(() => parseSize('8192T'), /too large/);
  assert.equal(parseSize('8191T'), 8191 * TiB);
});

test('formatSize picks the largest exact unit', () => {
  const cases: [number, string][] = [
    [0, '0 B'], [1, '1 B'], [1000, '1000 B'], [1023, '1023 B'], [1024, '1 KiB'], [1536, '1.5 KiB'],
    [512 * KiB, '512 KiB'], [8 * GiB, '8 GiB'], [1.5 * GiB, '1.5 GiB'], [1.125 * GiB, '1.125 GiB'],
    [GiB + MiB, '1025 MiB'], [8 * GiB + 1, '8589934593 B'], [3 * TiB, '3 TiB'], [2048 * TiB, '2048 TiB'],
  ];
  for (const [bytes, text] of cases) assert.equal(formatSize(bytes), text, String(bytes));
});

test('formatSize refuses what is not a byte count', () => {
  for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, Number.MAX_SAFE_INTEGER + 1]) {
    assert.throws(() => formatSize(bad), RangeError);
  }
});

test('property: parseSize(formatSize(n)) === n for every byte count', () => {
  fc.assert(fc.property(fc.maxSafeNat(), (n) => parseSize(formatSize(n)) === n));
  // Values made of whole units and quarters exercise the unit branches, not just "N B".
  fc.assert(fc.property(fc.integer({ min: 0, max: 8 * 1024 }), fc.integer({ min: 0, max: 4 }), (k, shiftIndex) => {
    const n = k * 2 ** (10 * shiftIndex) / 4;
    if (!Number.isSafeInteger(n)) return true;
    return parseSize(formatSize(n)) === n;
  }));
});

test('property: N<unit> parses to N * 2^(10 * unit) in every spelling', () => {
  const units = [['', 0], ['K', 1], ['M', 2], ['G', 3], ['T', 4]] as const;
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 8191 }), fc.constantFrom(...units), fc.constantFrom('', 'i', 'iB'), fc.boolean(),
    (k, [letter, power], suffix, spaced) => {
      const unit = letter === '' ? '' : `${letter}${suffix}`;
      const text = `${k}${spaced ? ' ' : ''}${unit}`;
      return parseSize(text) === k * 2 ** (10 * power);
    },
  ));
});

test('formatSizeApprox: exact when formatSize is short, else the largest unit to 2 decimals, marked', () => {
  assert.equal(formatSizeApprox(8 * 1024 ** 3), '8 GiB');
  assert.equal(formatSizeApprox(1.5 * 1024 ** 3), '1.5 GiB');
  assert.equal(formatSizeApprox(22215258 * 1024), '~21.19 GiB');
  assert.equal(formatSizeApprox(1000), '1000 B');
  assert.equal(formatSizeApprox(0), '0 B');
});

describe('describeBytes', () => {
  it('gives the exact count and a binary unit', () => {
    assert.equal(describeBytes(0), '0 bytes');
    assert.equal(describeBytes(1023), '1023 bytes');
    assert.equal(describeBytes(KiB), '1024 bytes (1 KiB)');
    assert.equal(describeBytes(1536), '1536 bytes (1.50 KiB)');
    assert.equal(describeBytes(5 * GiB), '5368709120 bytes (5 GiB)');
    assert.equal(describeBytes(2 ** 50 * 3), `${2 ** 50 * 3} bytes (3 PiB)`);
    assert.equal(describeBytes(2 ** 60), `${2 ** 60} bytes (1024 PiB)`, 'PiB is the largest unit');
  });

  it('always starts with the exact number', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (n) => describeBytes(n).startsWith(`${n} bytes`)));
  });
});

test('byte units are written in shared/sizes.ts only: one module formats sizes for the daemon and the CLI', () => {
  assert.deepEqual(filesMatching(/['"](KiB|MiB|GiB|TiB|PiB)['"]/), ['shared/sizes.ts']);
});
