// The lease ledger: the daemon's one record of live leases, and the totals every decision reads.
//
// Invariants:
// - Pure state: no I/O, no clock, no randomness. Ids, times and the target's previous limit
//   come from the shell inside the LeaseRecord it commits.
// - The ledger only records; it never decides. A decide* function returns a plan
//   (lease-plan.ts) and the shell's runner (daemon/shell/lease-transaction.ts) commits it here
//   with grant/resize/markReleased/release in the plan's order: a grant or a raise is
//   committed (reserved) before its journal record and its kernel limit, a lowering after its
//   kernel limit; a failed step is undone here too. Committing
//   something no decision could have allowed (a duplicate id, a second lease on one target
//   pid, a duplicate requestId for one owner, an unknown id) is a programming error and throws
//   LedgerError; the ledger is unchanged when anything throws.
// - Budget and quotas are NOT enforced here: a restarted daemon must be able to replay every
//   journaled lease even if the operator has since lowered a cap. Decisions enforce them.
// - A lease stays in the ledger, charged, for as long as its target lives: Release only marks
//   it released (markReleased: the manager's control ends, no more Resize), because the target
//   keeps its FD and the limit the broker set, and may still pin up to limitBytes. Only the
//   target's exit (or the undo of a grant that never came into force) removes it (release).
//   So the budget and the per-uid caps never count less than what live targets may still pin.
// - usedBytes() is maintained incrementally and always equals the sum of limitBytes over the
//   leases in the ledger, released ones included; ownerUsage(uid) likewise per owner uid. Both
//   stay <= Number.MAX_SAFE_INTEGER, so they are exact (a commit that would overflow throws).
//   releasedBytes() is the part of usedBytes() held by released leases.
// - Stored records are frozen copies: a caller mutating its object cannot change the ledger.
// - At most one lease per target pid (released or not), and per (ownerUid, requestId).
// - At most one lease per VFIO device address (released or not: a released lease's target
//   still holds the device fd), and no address twice in one lease. devicesHeld() counts them.
// - A released lease is never resized and never released twice (LedgerError).
// - limitBytes >= memoryBytes for every lease (a lease never limits below the VM's RAM).
// - The decisions (open-decision.ts, lease-decisions.ts) read the ledger; it imports nothing
//   from them, so the core has no import cycle.

/** An rlimit pair as prlimit returned it; -1 means RLIM_INFINITY. */
export interface PreviousLimit {
  readonly soft: number;
  readonly hard: number;
}

/** A VFIO device a lease holds: its PCI address and the cdev the broker opened (e.g. "vfio0"). */
export interface HeldDevice {
  readonly address: string;
  readonly cdev: string;
}

/** One live lease, exactly as the journal stores it. */
export interface LeaseRecord {
  readonly id: string;
  readonly name: string;
  readonly targetPid: number;
  /** The target's real uid (from /proc/PID/status) when the lease was granted. */
  readonly targetUid: number;
  /** Field 22 of /proc/PID/stat: tells a reused pid from the original target. */
  readonly targetStartTime: string;
  /** The uid of the peer that opened the lease: quotas are charged to it. */
  readonly ownerUid: number;
  readonly memoryBytes: number;
  readonly limitBytes: number;
  readonly requestId?: string | undefined;
  readonly createdAt: string;
  /** The target's RLIMIT_MEMLOCK before the broker set it (kept for the record: Release never raises). */
  readonly previousLimit: PreviousLimit;
  /** When its owner or a manager released it; the bytes stay charged until the target exits. */
  readonly releasedAt?: string | undefined;
  /** The VFIO devices handed out with it, in the order Open named them (absent or empty: none). */
  readonly devices?: readonly HeldDevice[] | undefined;
}

/** What one owner uid holds right now. */
export interface OwnerUsage {
  readonly leases: number;
  readonly bytes: number;
}

/** A commit that no decision could have allowed: a bug in the caller, never a user error. */
export class LedgerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LedgerError';
  }
}

function checkInteger(what: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new LedgerError(`${what} must be a safe integer >= ${min}, got ${String(value)}`);
  }
}

function checkSizes(id: string, memoryBytes: number, limitBytes: number): void {
  checkInteger(`lease ${id}: memoryBytes`, memoryBytes, 0);
  checkInteger(`lease ${id}: limitBytes`, limitBytes, 0);
  if (limitBytes < memoryBytes) {
    throw new LedgerError(`lease ${id}: limitBytes ${limitBytes} is below memoryBytes ${memoryBytes}`);
  }
}

function requestKey(ownerUid: number, requestId: string): string {
  return `${ownerUid}:${requestId}`;
}

const NO_USAGE: OwnerUsage = Object.freeze({ leases: 0, bytes: 0 });

export class Ledger {
  readonly #leases = new Map<string, LeaseRecord>();
  readonly #byPid = new Map<number, string>();
  readonly #byRequest = new Map<string, string>();
  readonly #byOwner = new Map<number, OwnerUsage>();
  readonly #byDevice = new Map<string, string>();
  #used = 0;
  #released = 0;

  /** A ledger holding exactly these leases (a restarted daemon's journal); throws LedgerError on conflicts. */
  static replay(leases: Iterable<LeaseRecord>): Ledger {
    const ledger = new Ledger();
    for (const lease of leases) ledger.grant(lease);
    return ledger;
  }

  /** Records a new lease. */
  grant(lease: LeaseRecord): void {
    const { id } = lease;
    if (typeof id !== 'string' || id === '') throw new LedgerError('a lease id must be a non-empty string');
    if (this.#leases.has(id)) throw new LedgerError(`lease ${id} already exists`);
    checkInteger(`lease ${id}: targetPid`, lease.targetPid, 1);
    checkInteger(`lease ${id}: targetUid`, lease.targetUid, 0);
    checkInteger(`lease ${id}: ownerUid`, lease.ownerUid, 0);
    checkInteger(`lease ${id}: previousLimit.soft`, lease.previousLimit.soft, -1);
    checkInteger(`lease ${id}: previousLimit.hard`, lease.previousLimit.hard, -1);
    checkSizes(id, lease.memoryBytes, lease.limitBytes);
    const holder = this.#byPid.get(lease.targetPid);
    if (holder !== undefined) throw new LedgerError(`lease ${id}: pid ${lease.targetPid} already has lease ${holder}`);
    const { requestId } = lease;
    if (requestId !== undefined) {
      if (requestId === '') throw new LedgerError(`lease ${id}: requestId must not be empty`);
      const other = this.#byRequest.get(requestKey(lease.ownerUid, requestId));
      if (other !== undefined) {
        throw new LedgerError(`lease ${id}: uid ${lease.ownerUid} already used requestId ${requestId} for lease ${other}`);
      }
    }
    const devices = lease.devices ?? [];
    devices.forEach((d, i) => {
      const other = this.#byDevice.get(d.address);
      if (other !== undefined) throw new LedgerError(`lease ${id}: device ${d.address} is held by lease ${other}`);
      if (devices.findIndex((e) => e.address === d.address) !== i) throw new LedgerError(`lease ${id}: device ${d.address} named twice`);
    });
    this.#checkTotal(id, lease.limitBytes);

    const record: LeaseRecord = Object.freeze({
      id,
      name: lease.name,
      targetPid: lease.targetPid,
      targetUid: lease.targetUid,
      targetStartTime: lease.targetStartTime,
      ownerUid: lease.ownerUid,
      memoryBytes: lease.memoryBytes,
      limitBytes: lease.limitBytes,
      ...(requestId === undefined ? {} : { requestId }),
      createdAt: lease.createdAt,
      previousLimit: Object.freeze({ soft: lease.previousLimit.soft, hard: lease.previousLimit.hard }),
      ...(lease.releasedAt === undefined ? {} : { releasedAt: lease.releasedAt }),
      ...(devices.length === 0 ? {} : { devices: Object.freeze(devices.map((d) => Object.freeze({ address: d.address, cdev: d.cdev }))) }),
    });
    this.#leases.set(id, record);
    for (const d of devices) this.#byDevice.set(d.address, id);
    this.#byPid.set(record.targetPid, id);
    if (requestId !== undefined) this.#byRequest.set(requestKey(record.ownerUid, requestId), id);
    this.#charge(record.ownerUid, 1, record.limitBytes);
    if (record.releasedAt !== undefined) this.#released += record.limitBytes;
  }

  /** Records a new size for a live lease; returns the updated record. */
  resize(id: string, memoryBytes: number, limitBytes: number): LeaseRecord {
    const old = this.#mustGet(id);
    if (old.releasedAt !== undefined) throw new LedgerError(`lease ${id} was released; it cannot be resized`);
    checkSizes(id, memoryBytes, limitBytes);
    this.#checkTotal(id, limitBytes - old.limitBytes);
    const record: LeaseRecord = Object.freeze({ ...old, memoryBytes, limitBytes });
    this.#leases.set(id, record);
    this.#charge(old.ownerUid, 0, limitBytes - old.limitBytes);
    return record;
  }

  /**
   * Marks a lease released (its owner or a manager let go of it) while its target lives: it
   * stays charged until release(id). Returns the updated record.
   */
  markReleased(id: string, releasedAt: string): LeaseRecord {
    const old = this.#mustGet(id);
    if (old.releasedAt !== undefined) throw new LedgerError(`lease ${id} was already released at ${old.releasedAt}`);
    const record: LeaseRecord = Object.freeze({ ...old, releasedAt });
    this.#leases.set(id, record);
    this.#released += record.limitBytes;
    return record;
  }

  /**
   * Forgets a lease and returns its bytes: its target exited, or its grant is being undone.
   * Returns the removed record.
   */
  release(id: string): LeaseRecord {
    const old = this.#mustGet(id);
    if (old.releasedAt !== undefined) this.#released -= old.limitBytes;
    this.#leases.delete(id);
    this.#byPid.delete(old.targetPid);
    if (old.requestId !== undefined) this.#byRequest.delete(requestKey(old.ownerUid, old.requestId));
    for (const d of old.devices ?? []) this.#byDevice.delete(d.address);
    this.#charge(old.ownerUid, -1, -old.limitBytes);
    return old;
  }

  /** Sum of limitBytes over the leases in the ledger (released ones included). */
  usedBytes(): number {
    return this.#used;
  }

  /** The part of usedBytes() held by released leases (their targets still live). */
  releasedBytes(): number {
    return this.#released;
  }

  /** Number of leases in the ledger (released ones included). */
  count(): number {
    return this.#leases.size;
  }

  get(id: string): LeaseRecord | undefined {
    return this.#leases.get(id);
  }

  byTargetPid(pid: number): LeaseRecord | undefined {
    const id = this.#byPid.get(pid);
    return id === undefined ? undefined : this.#leases.get(id);
  }

  /** The live lease this owner opened with this requestId, if any. */
  byRequestId(ownerUid: number, requestId: string): LeaseRecord | undefined {
    const id = this.#byRequest.get(requestKey(ownerUid, requestId));
    return id === undefined ? undefined : this.#leases.get(id);
  }

  /** The lease holding this VFIO device (by PCI address), released or not, if any. */
  byDevice(address: string): LeaseRecord | undefined {
    const id = this.#byDevice.get(address);
    return id === undefined ? undefined : this.#leases.get(id);
  }

  /** How many VFIO devices the leases in the ledger hold. */
  devicesHeld(): number {
    return this.#byDevice.size;
  }

  /** Live leases and their summed limitBytes charged to this owner uid. */
  ownerUsage(uid: number): OwnerUsage {
    return this.#byOwner.get(uid) ?? NO_USAGE;
  }

  /** Every live lease, oldest grant first. */
  all(): LeaseRecord[] {
    return [...this.#leases.values()];
  }

  #mustGet(id: string): LeaseRecord {
    const lease = this.#leases.get(id);
    if (lease === undefined) throw new LedgerError(`lease ${id} does not exist`);
    return lease;
  }

  #checkTotal(id: string, deltaBytes: number): void {
    if (this.#used + deltaBytes > Number.MAX_SAFE_INTEGER) {
      throw new LedgerError(`lease ${id}: total limitBytes would exceed ${Number.MAX_SAFE_INTEGER}`);
    }
  }

  #charge(uid: number, leases: number, bytes: number): void {
    this.#used += bytes;
    const before = this.ownerUsage(uid);
    const after = { leases: before.leases + leases, bytes: before.bytes + bytes };
    if (after.leases === 0) this.#byOwner.delete(uid);
    else this.#byOwner.set(uid, Object.freeze(after));
  }
}
