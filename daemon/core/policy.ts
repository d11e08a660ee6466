// Who may do what: the Policy the operator configured, the identity of a peer, and the two
// questions every decision starts from (is this peer a manager? may it Open at all?).
//
// Invariants:
// - Pure: values in, booleans out. No I/O, no clock, no process access. The shell builds the
//   Policy (daemon/shell/config.ts validates it with zod and freezes it) and the Peer (from
//   SO_PEERCRED plus the peer's supplementary groups from SO_PEERGROUPS, as of connect()).
// - A Policy is never mutated after it is built: every field is readonly and defaultPolicy()
//   returns a deeply frozen object.
// - Group membership means the peer's primary gid OR any supplementary group.
// - A manager may always Open (managers name targets for the VMs they run); `openUsers` and
//   `openGroups` only widen who may Open *for themselves*.
// - Observers (e.g. a metrics scraper) may see every lease and read the admin API; they can
//   change nothing. Every manager is an observer too.
// - Byte fields are non-negative safe integers; null means "no cap".
// - VFIO devices: none is given to anyone unless `devices` has an entry for its address (the
//   stock policy has none). Who may have one is decided in device-decision.ts.

/** 1 GiB: what libvirt adds to guest RAM for VFIO when it sizes RLIMIT_MEMLOCK. */
export const DEFAULT_OVERHEAD_BYTES = 1024 * 1024 * 1024;

export interface Policy {
  /** Uids that may Open for themselves, or 'any'. */
  readonly openUsers: readonly number[] | 'any';
  /** Gids whose members may Open for themselves. */
  readonly openGroups: readonly number[];
  /** Uids that may Open for other processes (by pidfd), Resize, Release and List any lease. */
  readonly managerUsers: readonly number[];
  /** Gids whose members are managers. */
  readonly managerGroups: readonly number[];
  /** Uids that may see every lease and read (never change) through the admin API. */
  readonly observerUsers: readonly number[];
  /** Gids whose members are observers. */
  readonly observerGroups: readonly number[];
  /** Largest limitBytes one lease may have; null = no cap. */
  readonly perVmMaxBytes: number | null;
  /** Most live leases one owner uid may hold; null = no cap. */
  readonly perUidMaxLeases: number | null;
  /** Most limitBytes (summed over live leases) one owner uid may hold; null = no cap. */
  readonly perUidMaxBytes: number | null;
  /** Added to a VM's memory size before rounding to the page size (DEFAULT_OVERHEAD_BYTES). */
  readonly overheadBytes: number;
  /** Total limitBytes all live leases together may hold. */
  readonly budgetBytes: number;
  /** Whether a target holding CAP_IPC_LOCK (whose pins are never charged) may be leased. */
  readonly allowTargetsWithIpcLock: boolean;
  /**
   * Whether a target (in the initial user namespace) must have NoNewPrivs set, so that no later
   * exec of a setuid-root or file-capability program can give it CAP_IPC_LOCK.
   */
  readonly requireTargetNoNewPrivs: boolean;
  /** The VFIO devices the broker may hand out, and to whom (at most one entry per address). */
  readonly devices: readonly DeviceGrant[];
}

/** One [[devices]] entry: a PCI address and who may have it (see device-decision.ts). */
export interface DeviceGrant {
  /** Canonical DDDD:BB:DD.F, lowercase (protocol/methods.ts PCI_ADDRESS_PATTERN). */
  readonly address: string;
  /** VM names a manager may open it for (a non-manager's own VM name is not trusted). */
  readonly vms: readonly string[];
  /** Uids that may have it, for themselves or (managers) for any VM. */
  readonly users: readonly number[];
  /** Gids whose members may have it. */
  readonly groups: readonly number[];
}

/** The process on the other end of a connection, as the kernel vouches for it. */
export interface Peer {
  /** As of connect(), for logs and messages only; may name another process by now. */
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
  /** Supplementary groups (may or may not repeat gid). */
  readonly groups: readonly number[];
}

/**
 * The policy with no config file: anyone may Open for itself, uid 0 is the only manager,
 * no per-VM or per-uid caps, 1 GiB overhead, CAP_IPC_LOCK targets refused, NoNewPrivs not required,
 * no VFIO devices.
 * Throws RangeError unless budgetBytes is a non-negative safe integer.
 */
export function defaultPolicy(budgetBytes: number): Policy {
  if (!Number.isSafeInteger(budgetBytes) || budgetBytes < 0) {
    throw new RangeError(`budgetBytes must be a non-negative safe integer, got ${String(budgetBytes)}`);
  }
  return Object.freeze({
    openUsers: 'any',
    openGroups: Object.freeze([]),
    managerUsers: Object.freeze([0]),
    managerGroups: Object.freeze([]),
    observerUsers: Object.freeze([]),
    observerGroups: Object.freeze([]),
    perVmMaxBytes: null,
    perUidMaxLeases: null,
    perUidMaxBytes: null,
    overheadBytes: DEFAULT_OVERHEAD_BYTES,
    budgetBytes,
    allowTargetsWithIpcLock: false,
    requireTargetNoNewPrivs: false,
    devices: Object.freeze([]),
  });
}

/** True if the peer's gid or any supplementary group is in `gids`. */
export function inAnyGroup(peer: Peer, gids: readonly number[]): boolean {
  return gids.includes(peer.gid) || peer.groups.some((g) => gids.includes(g));
}

/** Managers may name any target, and Resize, Release and see every lease. */
export function isManager(policy: Policy, peer: Peer): boolean {
  return policy.managerUsers.includes(peer.uid) || inAnyGroup(peer, policy.managerGroups);
}

/** Observers see every lease and may read the admin API; managers are observers too. */
export function isObserver(policy: Policy, peer: Peer): boolean {
  return isManager(policy, peer) || policy.observerUsers.includes(peer.uid) || inAnyGroup(peer, policy.observerGroups);
}

/** May this peer call Open at all? (Whether it may name another target is a separate rule.) */
export function mayOpen(policy: Policy, peer: Peer): boolean {
  if (isManager(policy, peer)) return true;
  if (policy.openUsers === 'any' || policy.openUsers.includes(peer.uid)) return true;
  return inAnyGroup(peer, policy.openGroups);
}

/** One line for logs and denials: "uid 1000 (pid 42, gid 1000, groups 27,100)". */
export function describePeer(peer: Peer): string {
  const groups = peer.groups.length === 0 ? 'none' : peer.groups.join(',');
  return `uid ${peer.uid} (pid ${peer.pid}, gid ${peer.gid}, groups ${groups})`;
}
