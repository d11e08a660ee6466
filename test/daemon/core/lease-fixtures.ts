// Builders for the core's tests: a lease record, a peer and a policy with readable defaults.
// Not a test file itself (no .test.ts), imported by test/daemon/core/*.test.ts.
import type { LeaseRecord } from '../../../daemon/core/ledger.ts';
import type { TargetIds } from '../../../daemon/core/open-decision.ts';
import { defaultPolicy, type Peer, type Policy } from '../../../daemon/core/policy.ts';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const PAGE = 4096;

export function lease(fields: Partial<LeaseRecord> & { id: string }): LeaseRecord {
  return {
    name: `vm-${fields.id}`,
    targetPid: 1000,
    targetUid: 1000,
    targetStartTime: '12345',
    ownerUid: 1000,
    memoryBytes: 4 * GiB,
    limitBytes: 5 * GiB,
    createdAt: '2025-01-01T00:00:00.000Z',
    previousLimit: { soft: 8 * MiB, hard: -1 },
    ...fields,
  };
}

export function peer(uid: number, pid = 40000 + uid, gid = uid, groups: number[] = []): Peer {
  return { pid, uid, gid, groups };
}

/** The defaults with a 1 GiB overhead (libvirt's; the default was 1 GiB when these tests were written). */
export function policy(fields: Partial<Policy> = {}): Policy {
  return { ...defaultPolicy(100 * GiB), overheadBytes: GiB, ...fields };
}

/** A process that runs with the peer's uid and gid as real, effective and saved ids. */
export function sameIds(p: Peer): TargetIds {
  return { realUid: p.uid, effectiveUid: p.uid, savedUid: p.uid, realGid: p.gid, effectiveGid: p.gid, savedGid: p.gid };
}
