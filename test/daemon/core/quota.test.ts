import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Ledger } from '../../../daemon/core/ledger.ts';
import {
  availableBytes, checkBudget, checkOwnerBytes, checkOwnerLeaseCount, checkPerVmMax, defaultReserveBytes, limitFor,
} from '../../../daemon/core/quota.ts';
import { GiB, KiB, MiB, PAGE, lease, policy } from './lease-fixtures.ts';

describe('defaultReserveBytes', () => {
  it('keeps a quarter of a small host, 1 GiB of a middle one, 10 % of a large one', () => {
    assert.equal(defaultReserveBytes(1998 * MiB), Math.floor((1998 * MiB) / 4), 'the 2 GiB host of #12: ~500 MiB, not 1 GiB');
    assert.equal(defaultReserveBytes(GiB), 256 * MiB);
    assert.equal(defaultReserveBytes(8 * GiB), GiB);
    assert.equal(defaultReserveBytes(64 * GiB), Math.floor((64 * GiB) / 10));
  });

  it('always leaves a budget: at most a quarter, at least 10 % (fast-check)', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 2 ** 50 }), (mem) => {
      const reserve = defaultReserveBytes(mem);
      assert.ok(mem - reserve > 0 && reserve <= mem / 4 && reserve >= Math.floor(mem / 10));
      assert.ok(reserve <= Math.max(GiB, mem / 10), 'never more than 1 GiB unless 10 % is more');
    }));
  });
});

describe('limitFor', () => {
  it('returns the limit, or a LimitExceeded whose maximum is the largest memory that fits', () => {
    assert.deepEqual(limitFor(policy({ overheadBytes: 0 }), MiB + 1, PAGE), { limitBytes: MiB + PAGE });
    const over = limitFor(policy(), Number.MAX_SAFE_INTEGER - GiB, PAGE);
    assert.ok('error' in over);
    assert.equal(over.error.errorName, 'LimitExceeded');
    const params: Record<string, unknown> = over.error.parameters;
    assert.equal(params.rule, 'limit-representable');
    assert.equal(params.requested, Number.MAX_SAFE_INTEGER - GiB);
    assert.equal(params.maximum, Number.MAX_SAFE_INTEGER - (PAGE - 1) - GiB);
  });
});

describe('caps', () => {
  const ledger = Ledger.replay([
    lease({ id: 'l-1', targetPid: 1, ownerUid: 7, limitBytes: 5 * GiB }),
    lease({ id: 'l-2', targetPid: 2, ownerUid: 7, limitBytes: 5 * GiB }),
  ]);

  it('null means no cap, whatever the size', () => {
    const p = policy({ budgetBytes: Number.MAX_SAFE_INTEGER });
    assert.equal(checkPerVmMax(p, 2 ** 52, 2 ** 52, 2 ** 52), undefined);
    assert.equal(checkOwnerLeaseCount(p, ledger, 7), undefined);
    assert.equal(checkOwnerBytes(p, ledger, 7, 2 ** 52), undefined);
  });

  it('a delta <= 0 never fails a check, even far over every cap', () => {
    const p = policy({ perVmMaxBytes: 0, perUidMaxBytes: 0, budgetBytes: 0 });
    for (const delta of [0, -GiB]) {
      assert.equal(checkPerVmMax(p, 9 * GiB, delta, 8 * GiB), undefined);
      assert.equal(checkOwnerBytes(p, ledger, 7, delta), undefined);
      assert.equal(checkBudget(p, ledger, delta), undefined);
    }
  });

  it('caps are inclusive: exactly at the cap passes, one byte over fails', () => {
    const p = policy({ perVmMaxBytes: 6 * GiB, perUidMaxBytes: 12 * GiB, perUidMaxLeases: 3, budgetBytes: 12 * GiB });
    assert.equal(checkPerVmMax(p, 6 * GiB, 1, GiB), undefined);
    assert.equal(checkPerVmMax(p, 6 * GiB + 1, 1, GiB)?.errorName, 'LimitExceeded');
    assert.equal(checkOwnerBytes(p, ledger, 7, 2 * GiB), undefined);
    assert.equal(checkOwnerBytes(p, ledger, 7, 2 * GiB + 1)?.errorName, 'LimitExceeded');
    assert.equal(checkOwnerLeaseCount(p, ledger, 7), undefined);
    assert.equal(checkOwnerLeaseCount(policy({ perUidMaxLeases: 2 }), ledger, 7)?.errorName, 'LimitExceeded');
    assert.equal(checkBudget(p, ledger, 2 * GiB), undefined);
    assert.deepEqual(checkBudget(p, ledger, 2 * GiB + 1)?.parameters,
      { requestedBytes: 2 * GiB + 1, availableBytes: 2 * GiB, budgetBytes: 12 * GiB });
  });

  it('availableBytes is budget - used, never negative', () => {
    assert.equal(availableBytes(policy({ budgetBytes: 15 * GiB }), ledger), 5 * GiB);
    assert.equal(availableBytes(policy({ budgetBytes: GiB }), ledger), 0);
  });
});
