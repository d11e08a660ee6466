import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { formatCursor, grantedAtMs, leasePage, parseCursor, type PagePosition } from '../../../daemon/core/lease-pages.ts';
import type { LeaseRecord } from '../../../daemon/core/ledger.ts';
import { LIST_CURSOR_PATTERN } from '../../../protocol/methods.ts';
import { lease } from './lease-fixtures.ts';

const at = (ms: number): string => new Date(ms).toISOString();
const hex = (n: number): string => `l-${n.toString(16).padStart(16, '0')}`;

/** Walks every page of `leases` with `limit`, like a client following `next`. */
function walk(leases: readonly LeaseRecord[], limit: number): string[] {
  const seen: string[] = [];
  let after: PagePosition | undefined;
  for (let pages = 0; pages <= leases.length + 1; pages++) {
    const page = leasePage(leases, limit, after);
    seen.push(...page.leases.map((l) => l.id));
    if (page.next === undefined) return seen;
    const parsed = parseCursor(formatCursor(page.next));
    assert.deepEqual(parsed, page.next, 'a cursor round-trips');
    after = parsed;
  }
  assert.fail('the walk did not end');
}

describe('leasePage', () => {
  it('orders by grant time, then id, whatever the ledger order', () => {
    const leases = [
      lease({ id: hex(3), createdAt: at(2000) }),
      lease({ id: hex(2), createdAt: at(1000) }),
      lease({ id: hex(1), createdAt: at(2000) }),
    ];
    assert.deepEqual(leasePage(leases, 10).leases.map((l) => l.id), [hex(2), hex(1), hex(3)]);
  });

  it('cuts at the limit and says where to go on; the last page has no next', () => {
    const leases = [1, 2, 3, 4, 5].map((i) => lease({ id: hex(i), createdAt: at(i * 1000) }));
    const first = leasePage(leases, 2);
    assert.deepEqual(first.leases.map((l) => l.id), [hex(1), hex(2)]);
    assert.deepEqual(first.next, { atMs: 2000, id: hex(2) });
    const exact = leasePage(leases, 5);
    assert.equal(exact.leases.length, 5);
    assert.equal(exact.next, undefined, 'a page that ends with the last lease has no next');
    assert.deepEqual(leasePage(leases, 2, { atMs: 4000, id: hex(4) }), { leases: [leases[4]] });
    assert.deepEqual(leasePage([], 3), { leases: [] });
  });

  it('continues after a position whose lease has ended', () => {
    const leases = [1, 3, 4].map((i) => lease({ id: hex(i), createdAt: at(i * 1000) }));
    assert.deepEqual(leasePage(leases, 10, { atMs: 2000, id: hex(2) }).leases.map((l) => l.id), [hex(3), hex(4)]);
    // Same time as a live lease, smaller id: that lease still comes after it.
    assert.deepEqual(leasePage(leases, 10, { atMs: 3000, id: hex(0) }).leases.map((l) => l.id), [hex(3), hex(4)]);
  });

  it('refuses a limit below 1 or not an integer', () => {
    assert.throws(() => leasePage([], 0), RangeError);
    assert.throws(() => leasePage([], 1.5), RangeError);
  });

  it('sorts a createdAt that is not a time as epoch 0', () => {
    const odd = lease({ id: hex(9), createdAt: 'yesterday' });
    assert.equal(grantedAtMs(odd), 0);
    assert.equal(grantedAtMs(lease({ id: hex(1), createdAt: at(5) })), 5);
    assert.deepEqual(leasePage([lease({ id: hex(1), createdAt: at(5) }), odd], 1).leases, [odd]);
  });

  it('every lease is listed exactly once, in order, for any limit and any grant times', () => {
    fc.assert(fc.property(
      fc.uniqueArray(fc.integer({ min: 0, max: 2 ** 32 }), { maxLength: 40 }),
      fc.array(fc.integer({ min: -5, max: 5 }), { maxLength: 40 }),
      fc.integer({ min: 1, max: 12 }),
      (ids, times, limit) => {
        const leases = ids.map((n, i) => lease({ id: hex(n), createdAt: at(1_700_000_000_000 + (times[i] ?? 0)) }));
        const seen = walk(leases, limit);
        const expected = [...leases]
          .sort((a, b) => (grantedAtMs(a) - grantedAtMs(b)) || (a.id < b.id ? -1 : 1))
          .map((l) => l.id);
        assert.deepEqual(seen, expected);
      }));
  });
});

describe('cursors', () => {
  it('format to the wire pattern and parse back', () => {
    for (const p of [{ atMs: 1_764_070_800_000, id: hex(255) }, { atMs: -62_167_219_200_000, id: hex(1) }, { atMs: 0, id: hex(0) }]) {
      const text = formatCursor(p);
      assert.match(text, LIST_CURSOR_PATTERN);
      assert.deepEqual(parseCursor(text), p);
    }
  });

  it('a cursor without a time, or with a time past 2^53, names no position (the wire pattern lets neither through)', () => {
    assert.equal(parseCursor('/l-0000000000000000'), undefined);
    assert.equal(parseCursor('l-0000000000000000'), undefined);
    assert.equal(parseCursor('99999999999999999/l-0000000000000000'), undefined);
    for (const bad of ['/l-0000000000000000', '99999999999999999/l-0000000000000000', '9999999999999999/l-0000000000000000']) {
      assert.doesNotMatch(bad, LIST_CURSOR_PATTERN);
    }
    assert.ok(Number.isSafeInteger(Number('999999999999999')), 'the longest time the pattern allows is exact');
  });
});
