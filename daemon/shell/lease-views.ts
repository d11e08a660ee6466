// What the service shows of its leases and itself: the wire's Lease and Status, built from
// the ledger, the device's backend and the kept FDs. Reads only: nothing here changes a lease.
//
// Invariants:
// - A lease's usage (VmPin/VmLck) is read from /proc at the time of the call, never cached;
//   on the per-fd backend its FD's pinned bytes come from the kernel (IOMMU_OPTION_PINNED_USAGE)
//   through the FD the broker keeps; a lease whose FD did not come back is `resizable: false`.
// - Status.backend.notResizable lists at most MAX_NOT_RESIZABLE_LISTED ids (the count is exact).
import { MAX_NOT_RESIZABLE_LISTED, type Lease, type Status } from '../../protocol/methods.ts';
import type { Ledger, LeaseRecord } from '../core/ledger.ts';
import type { PlanBackend } from '../core/lease-plan.ts';
import { grantedAtMs } from '../core/lease-pages.ts';
import type { Policy } from '../core/policy.ts';
import type { LeaseFds } from './lease-fds.ts';
import type { ServiceDeps } from './service.ts';
import { readTargetUsage, type TargetUsage } from './target/target.ts';

/** What the views read from the service. */
export interface ServiceView {
  readonly deps: ServiceDeps;
  readonly ledger: Ledger;
  readonly policy: Readonly<Policy>;
  readonly fds: LeaseFds;
  readonly backend: PlanBackend;
}

/** The broker's Status reply. */
export function brokerStatus(v: ServiceView): Status {
  const used = v.ledger.usedBytes();
  const total = v.policy.budgetBytes;
  return {
    version: v.deps.version,
    device: v.deps.device.info,
    capabilities: {
      sysResource: v.deps.haveSysResource,
      note: v.deps.haveSysResource
        ? 'CAP_SYS_RESOURCE held: limits can be set on any target and raised'
        : 'no CAP_SYS_RESOURCE: limits can only be lowered, and only on processes with the broker\'s own uids/gids',
    },
    budget: { totalBytes: total, usedBytes: used, freeBytes: Math.max(0, total - used), releasedBytes: v.ledger.releasedBytes() },
    leases: v.ledger.count(),
    devicesHeld: v.ledger.devicesHeld(),
    overheadBytes: v.policy.overheadBytes,
    journal: journalStatus(v),
    backend: backendStatus(v),
  };
}

function backendStatus(v: ServiceView): NonNullable<Status['backend']> {
  const lost = v.backend === 'per-fd' ? v.ledger.all().filter((r) => !v.fds.has(r.id)).map((r) => r.id) : [];
  return {
    ...v.deps.device.backend, notResizableCount: lost.length, notResizable: lost.slice(0, MAX_NOT_RESIZABLE_LISTED),
  };
}

function journalStatus(v: ServiceView): NonNullable<Status['journal']> {
  const degraded = v.deps.journal.degraded;
  if (degraded === null) return { healthy: true };
  return { healthy: false, degradedSince: degraded.since.toISOString(), reason: degraded.error.message };
}

/** A lease as the wire shows it; `usage` defaults to a fresh read of the target's /proc. */
export function wireLease(v: ServiceView, r: LeaseRecord, usage: TargetUsage = readTargetUsage(r.targetPid)): Lease {
  const { device } = v.deps;
  const fd = v.fds.get(r.id);
  const fdPinnedBytes = fd === undefined || device.backend.kind !== 'per-fd' ? undefined : device.fdLimits?.usage(fd);
  return {
    id: r.id, name: r.name, pid: r.targetPid, uid: r.targetUid, ownerUid: r.ownerUid,
    memoryBytes: r.memoryBytes, limitBytes: r.limitBytes,
    accountingMode: device.backend.kind === 'simulated' ? 'none' : device.backend.kind === 'per-fd' ? 'fd' : 'process',
    // The wire's createdAt is Date.toISOString()'s form (always 24 chars); a journaled time
    // written with another precision is shown in that form too.
    deviceKind: v.deps.device.info.kind, createdAt: new Date(grantedAtMs(r)).toISOString(),
    ...(r.requestId === undefined ? {} : { requestId: r.requestId }),
    ...usage,
    ...(fdPinnedBytes === undefined ? {} : { fdPinnedBytes }),
    ...(v.backend === 'per-fd' && fd === undefined ? { resizable: false } : {}),
    ...(r.releasedAt === undefined ? {} : { releasedAt: r.releasedAt }),
    ...(r.devices === undefined || r.devices.length === 0 ? {} : { devices: r.devices.map((d) => ({ address: d.address, cdev: d.cdev })) }),
  };
}
