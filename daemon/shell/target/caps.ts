// Whether a target holds, or may gain, CAP_IPC_LOCK in the sense iommufd checks it.
//
// iommufd decides whether to charge a mapping when it creates it: in drivers/iommu/iommufd/
// pages.c, the iopt_pages of every IOAS_MAP get account_mode IOPT_PAGES_ACCOUNT_NONE (never
// charged to any RLIMIT_MEMLOCK) when capable(CAP_IPC_LOCK), and capable() asks about the
// INITIAL user namespace (ns_capable(&init_user_ns, ...)). So:
//
// Invariants:
// - A target outside the initial user namespace can never pass capable(CAP_IPC_LOCK), whatever
//   its own sets say (its "root" only has capabilities inside its namespace, and no exec
//   moves a process into an ancestor namespace): it has no set to report, and counts as if it
//   had NoNewPrivs (no exec can bring it the capability there either).
// - Inside the initial namespace a target may hold CAP_IPC_LOCK when the bit is in:
//     effective               it is not charged right now;
//     permitted               capset(2) can make it effective at any time;
//     ambient                 it stays effective across every exec;
//     inheritable             an exec of a program with that file-inheritable capability makes it
//                             permitted (pP' includes pI & fI; the bounding set does not limit
//                             this term), unless NoNewPrivs forbids exec to gain anything.
//   The bounding set alone is not counted: nearly every process has the full bounding set, and
//   what it allows (a setuid-root or file-capability exec) is what the policy option
//   requireNoNewPrivs closes.
// - Which namespace: /proc/PID/uid_map as the daemon reads it. A process in the daemon's own
//   user namespace maps every uid to itself, "0 0 4294967295" (the whole 32-bit range), and
//   the daemon runs in the initial namespace (the unit keeps PrivateUsers= off). A process in a
//   child namespace shows only the uids its creator mapped; a child that maps the whole range
//   to itself is taken for the initial namespace and judged by its sets (refused if it holds
//   the capability there): the safe side. uid_map is readable by anyone, where a stat of
//   /proc/PID/ns/user needs ptrace access, which a broker running as its own user lacks for
//   every target of another uid (seen in the host lab: every Open failed with InternalError).
// - Reads /proc only (procfs.ts); ProcessGone and ProcfsFormatError pass through.
import { CAP_IPC_LOCK, hasCapability, readUidMap, type ProcStatus } from './procfs.ts';

/** The whole 32-bit uid range mapped to itself: how a process of the reader's own namespace looks. */
const IDENTITY_OF_EVERY_UID = 4294967295;

/** Whether pid lives in the daemon's (the initial) user namespace, judged by its uid_map. */
export function inInitialUserNamespace(pid: number): boolean {
  const map = readUidMap(pid);
  const only = map[0];
  return map.length === 1 && only !== undefined && only[0] === 0 && only[1] === 0 && only[2] === IDENTITY_OF_EVERY_UID;
}

/**
 * What the Open decision needs to know: the first capability set (in the order above) from
 * which `status`'s process holds or may gain CAP_IPC_LOCK in the initial user namespace
 * (undefined when it cannot), and whether no exec can give it that capability (NoNewPrivs, or
 * another user namespace: the policy option requireNoNewPrivs guards only against the former).
 */
export function capabilityFacts(pid: number, status: ProcStatus): { ipcLockSet: string | undefined; noNewPrivs: boolean } {
  if (!inInitialUserNamespace(pid)) return { ipcLockSet: undefined, noNewPrivs: true };
  return { ipcLockSet: ipcLockSetOf(status), noNewPrivs: status.noNewPrivs };
}

/** The capability-set half of ipcLockSet, for a process in the initial namespace. */
export function ipcLockSetOf(status: ProcStatus): string | undefined {
  if (hasCapability(status.capEff, CAP_IPC_LOCK)) return 'effective';
  if (hasCapability(status.capPrm, CAP_IPC_LOCK)) return 'permitted';
  if (hasCapability(status.capAmb, CAP_IPC_LOCK)) return 'ambient';
  if (hasCapability(status.capInh, CAP_IPC_LOCK) && !status.noNewPrivs) return 'inheritable';
  return undefined;
}
