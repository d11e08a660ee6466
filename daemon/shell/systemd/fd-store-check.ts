// Whether the leases' kept FDs can survive a restart, said once at start: on the per-fd backend
// a lease whose FD is lost can no longer be resized (LeaseNotResizable), so an operator should
// learn at start, not at the first hotplug after a restart, that the fd store is not there.
//
// Invariants:
// - Pure: it reads what it is given (whether the device keeps FDs, whether systemd listens,
//   the FDSTORE= value systemd >= 254 sets to FileDescriptorStoreMax when the store is on).
// - No FDs kept: nothing to say. Kept FDs and no store: one warning naming the consequence and
//   the fix. A store too small for the leases is not judged here (its size is policy's).

export interface FdStoreFacts {
  /** The device keeps a duplicate of each lease's FD (the per-fd backend, simulated-per-fd). */
  readonly keepsFds: boolean;
  /** NOTIFY_SOCKET was usable: systemd (or another supervisor) listens. */
  readonly supervised: boolean;
  /** FDSTORE= from the environment (systemd >= 254 sets it when the store is on); undefined if absent. */
  readonly fdStoreMax: number | undefined;
}

/** The start-up warning, or undefined when kept FDs survive a restart (or none are kept). */
export function fdStoreWarning(facts: FdStoreFacts): string | undefined {
  if (!facts.keepsFds) return undefined;
  const consequence = 'a restart loses the kept FDs, and their leases then stay charged but cannot be resized (LeaseNotResizable) until their VMs exit';
  if (!facts.supervised) {
    return `not run by systemd (no NOTIFY_SOCKET): ${consequence}. Run the broker from its systemd unit, whose fd store keeps them`;
  }
  if (facts.fdStoreMax === undefined) {
    return `systemd set no FDSTORE= (FileDescriptorStoreMax=0 in the unit, or systemd older than 254): ${consequence}, unless an older systemd keeps them anyway. Set FileDescriptorStoreMax= (the packaged unit has 4096) and FileDescriptorStorePreserve=yes`;
  }
  return undefined;
}
