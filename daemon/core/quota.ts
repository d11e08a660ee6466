// The byte and count checks that Open and Resize share: representable limit, per-VM maximum,
// per-owner lease count and bytes, and the global budget. Each check returns the BrokerError
// that denies the request (with the rule, what was requested and what was available) or
// undefined when the request fits.
//
// Invariants:
// - Pure: reads the Policy and the Ledger, never changes them.
// - Every cap counts limitBytes (memory + overhead, page-rounded): that is what the target may
//   actually pin, and what the budget is made of.
// - Per-uid caps are charged to the lease's ownerUid (the uid that asked for it), never to the
//   target's uid: the owner chose the size, a target must not be billed for — or locked out
//   by — leases someone else opened for it, and for a self-Open the two are the same uid.
//   So a manager opening for many VMs is bounded by its own per-uid caps.
// - Checks take a delta: for Open the new lease's limitBytes, for a raising Resize the
//   increase. A delta <= 0 never fails a check (lowering is always allowed, even when an
//   owner is over a cap that the operator tightened after the leases were granted).
// - The budget available is budgetBytes - usedBytes, or 0 if a replay left usage above it.
// - The default budget (no budget or reserve configured) is MemTotal minus defaultReserveBytes:
//   the host keeps a quarter of its memory, but never more than 1 GiB and never less than 10 %.
//   It is positive for every MemTotal > 0 (the reserve is at most a quarter of it).
import { BrokerError } from '../../protocol/errors.ts';
import { largestMemoryBytes, limitBytesFor } from './limit.ts';
import type { Ledger } from './ledger.ts';
import type { Policy } from './policy.ts';
import { describeBytes } from '../../shared/sizes.ts';

const GiB = 1024 ** 3;

/**
 * What the host keeps when no budget is configured: max(10 %, min(1 GiB, 25 %)) of MemTotal.
 * 8 GiB and up: as before, 1 GiB or 10 %; smaller hosts keep a quarter (2 GiB host: ~500 MiB,
 * leaving ~1.5 GiB of budget where a flat 1 GiB reserve left 974 MiB; 1 GiB host: ~240 MiB,
 * where a flat 1 GiB left nothing and the daemon refused to start).
 */
export function defaultReserveBytes(memTotalBytes: number): number {
  const tenth = Math.floor(memTotalBytes / 10);
  const quarter = Math.floor(memTotalBytes / 4);
  return Math.max(tenth, Math.min(GiB, quarter));
}

/** The limit for memoryBytes under this policy, or LimitExceeded if it cannot be represented. */
export function limitFor(policy: Policy, memoryBytes: number, pageSize: number): { limitBytes: number } | { error: BrokerError } {
  const maximum = largestMemoryBytes(policy.overheadBytes, pageSize);
  if (memoryBytes > maximum) {
    return {
      error: new BrokerError('LimitExceeded', {
        rule: 'limit-representable',
        reason: `memoryBytes ${memoryBytes} plus overhead ${describeBytes(policy.overheadBytes)}, rounded to ` +
          `${pageSize}-byte pages, exceeds the largest exact byte count ${Number.MAX_SAFE_INTEGER}`,
        requested: memoryBytes,
        maximum,
      }),
    };
  }
  return { limitBytes: limitBytesFor(memoryBytes, policy.overheadBytes, pageSize) };
}

/** perVmMaxBytes: one lease's whole limit (checked on the new total, only when growing). */
export function checkPerVmMax(policy: Policy, limitBytes: number, deltaBytes: number, memoryBytes: number): BrokerError | undefined {
  const cap = policy.perVmMaxBytes;
  if (cap === null || deltaBytes <= 0 || limitBytes <= cap) return undefined;
  return new BrokerError('LimitExceeded', {
    rule: 'per-vm-max',
    reason: `limit ${describeBytes(limitBytes)} (memory ${describeBytes(memoryBytes)} + overhead ` +
      `${describeBytes(policy.overheadBytes)}, page-rounded) exceeds the policy perVmMaxBytes ${describeBytes(cap)}`,
    requested: limitBytes,
    maximum: cap,
  });
}

/** perUidMaxLeases: one more lease for this owner. */
export function checkOwnerLeaseCount(policy: Policy, ledger: Ledger, ownerUid: number): BrokerError | undefined {
  const cap = policy.perUidMaxLeases;
  const held = ledger.ownerUsage(ownerUid).leases;
  if (cap === null || held < cap) return undefined;
  return new BrokerError('LimitExceeded', {
    rule: 'per-uid-leases',
    reason: `uid ${ownerUid} holds ${held} lease${held === 1 ? '' : 's'}, policy perUidMaxLeases is ${cap}`,
    requested: held + 1,
    maximum: cap,
  });
}

/** perUidMaxBytes: deltaBytes more for this owner. */
export function checkOwnerBytes(policy: Policy, ledger: Ledger, ownerUid: number, deltaBytes: number): BrokerError | undefined {
  const cap = policy.perUidMaxBytes;
  const usage = ledger.ownerUsage(ownerUid);
  const after = usage.bytes + deltaBytes;
  if (cap === null || deltaBytes <= 0 || after <= cap) return undefined;
  return new BrokerError('LimitExceeded', {
    rule: 'per-uid-bytes',
    reason: `uid ${ownerUid} holds ${describeBytes(usage.bytes)} in ${usage.leases} lease(s); ` +
      `${describeBytes(deltaBytes)} more would make ${describeBytes(after)}, over the policy perUidMaxBytes ${describeBytes(cap)}`,
    requested: after,
    maximum: cap,
  });
}

/** Bytes of budget not held by live leases (0 if a replay left usage above the budget). */
export function availableBytes(policy: Policy, ledger: Ledger): number {
  return Math.max(0, policy.budgetBytes - ledger.usedBytes());
}

/** budgetBytes: deltaBytes more in total; requestedBytes is the delta. */
export function checkBudget(policy: Policy, ledger: Ledger, deltaBytes: number): BrokerError | undefined {
  const available = availableBytes(policy, ledger);
  if (deltaBytes <= available) return undefined;
  return new BrokerError('BudgetExceeded', {
    requestedBytes: deltaBytes,
    availableBytes: available,
    budgetBytes: policy.budgetBytes,
  });
}
