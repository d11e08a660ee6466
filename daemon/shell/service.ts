// The broker's methods, once: the Varlink layer and the admin API both call this.
//
// Invariants:
// - Decisions and their plans come from the pure core (core/lease-plan.ts decides a lease's
//   order of effects); this file only gathers facts (peer, target, device), binds the effects
//   (ledger, journal, the target's limit, its exit watch) and hands each plan to runPlan
//   (lease-transaction.ts), which enforces that order and undoes a failed plan. No reply is
//   sent before its record is on disk (Release included: its `released` record survives a restart).
// - Decision and ledger update happen in one synchronous step, before any wait for the disk:
//   runPlan reserves the bytes at once, so two calls can never both pass a budget check for
//   the same bytes. A call that fails after its reservation gives it back (the plan's undo).
// - The calls that change one lease (Resize, Release, its target's exit, and the Open that
//   creates it) run one at a time in its lane (lease-lanes.ts), so a lease's kernel limit,
//   ledger entry and journal record change in the same order.
// - Release never changes a target's limit and never returns bytes while the target lives: the
//   lease stays in the ledger, charged and marked released, until TargetWatch sees the target
//   exit (the budget never counts less than live targets may pin; see core/ledger.ts).
// - A degraded journal (journal/journal.ts): Open, Resize and Release are JournalUnavailable before any
//   side effect (or after undoing their reservation if it degrades under them); List and
//   Status work. A target's exit still ends its lease in memory; the journal makes that durable
//   when it recovers. Nothing is raised while degraded, so the journal on disk never claims
//   less than the kernel enforces: a failing disk is no reason to exit. The daemon gives up
//   (deps.fatal: exit 1, systemd restarts it and replays) only if ending an exited target's
//   lease throws, a bug after which only a replay can settle what the broker holds.
// - restore() is lease-restore.ts: it validates the leases it will re-adopt before touching any
//   limit, and each stored fd is adopted by its live lease or closed.
// - VFIO devices (Open's `devices`): the core decides who may have them and that no other lease
//   holds them; only then are they resolved and opened (vfio/resolve.ts), before the plan runs,
//   in the same synchronous step as the decision, and recorded in the lease (ledger, journal).
//   A device is held until its lease's target exits, released or not.
// - fd ownership: a target pidfd belongs to the call until the lease is granted, then to
//   TargetWatch. The iommufd and the VFIO device fds opened by open() belong to the call until
//   it returns them (the server sends and closes them); a failed open() closes them all. On the
//   per-fd backend (device.fdLimits) Open also makes a duplicate of the iommufd, owned by the
//   call until the plan's 'keep' step hands it to LeaseFds (lease-fds.ts), which owns it until
//   the lease ends; its limit is set before the reply hands the FD out.
// - Every change of a lease and every refusal is audited (lease-audit.ts).
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { VarlinkServiceError } from '../../protocol/errors.ts';
import { DEFAULT_LIST_LIMIT, type BrokerParameters, type BrokerReply, type Lease, type Status } from '../../protocol/methods.ts';
import { closeFd, dupCloexec } from '../../native/sys.ts';
import { decideRelease, decideResize, mayView, visibleLeases } from '../core/lease-decisions.ts';
import { Ledger, type LeaseRecord } from '../core/ledger.ts';
import { callerExited, decideOpen } from '../core/open-decision.ts';
import { planGrant, planTargetExit, type PlanBackend } from '../core/lease-plan.ts';
import { formatCursor, leasePage, parseCursor } from '../core/lease-pages.ts';
import type { Policy } from '../core/policy.ts';
import type { Device } from './device.ts';
import { HOST_VFIO_ROOTS, openDevices, type OpenedDevice, type VfioRoots } from './vfio/resolve.ts';
import { LeaseFds, type FdStore } from './lease-fds.ts';
import type { LeaseJournal } from './journal/journal.ts';
import { journalReady } from './journal/guard.ts';
import { isPeerProcess, peerIsAlive, type ConnectionPeer as Peer } from './peer.ts';
import { pageSize } from './target/procfs.ts';
import { describeTarget, readLimit, type Target, type TargetUsage } from './target/target.ts';
import { auditDenial, auditLease } from './lease-audit.ts';
import { LeaseLanes } from './lease-lanes.ts';
import { restoreLeases, type RestoreCounts } from './lease-restore.ts';
import { leaseEffects } from './lease-effects.ts';
import { runPlan, type PlanEffects } from './lease-transaction.ts';
import { brokerStatus, wireLease, type ServiceView } from './lease-views.ts';
import { TargetWatch } from './target/watch.ts';

export interface ServiceDeps {
  policy: Readonly<Policy>;
  device: Device;
  journal: LeaseJournal;
  log: Logger;
  haveSysResource: boolean;
  version: string;
  /** Where VFIO devices are looked up (default the host's sysfs and /dev; a fake tree only when simulated). */
  vfio?: VfioRoots;
  now?: () => Date;
  /** Called after every grant, resize and release (e.g. to update systemd's STATUS=). */
  onLeasesChanged?: () => void;
  /** The broker can no longer vouch for its state (see the module comment): log and exit non-zero. */
  fatal?: (err: unknown, why: string) => void;
  /** Where kept lease FDs survive a restart (systemd's fd store); absent: they do not. */
  fdStore?: FdStore;
}

/** What a granted Open hands back: the lease, the iommufd and one fd per VFIO device asked for (all the caller's). */
export interface OpenResult {
  lease: Lease;
  fd: number;
  devices: { address: string; fd: number }[];
}

export class BrokerService {
  readonly #ledger = new Ledger();
  readonly #lanes = new LeaseLanes();
  readonly #targets = new TargetWatch((id) => {
    void this.#lanes.run(id, async () => this.#targetExited(id)).catch((err: unknown) => {
      this.deps.log.error({ err, lease: id }, 'could not end the lease of an exited target');
      this.deps.fatal?.(err, `could not end lease ${id} of an exited target`);
    });
  });
  #policy: Readonly<Policy>;
  readonly #now: () => Date;
  readonly #pageSize = pageSize();
  readonly #fds: LeaseFds;
  /** 'per-fd' when leases keep their FD (device.fdLimits): the plans' backend. */
  readonly #backend: PlanBackend;

  constructor(private readonly deps: ServiceDeps) {
    this.#policy = deps.policy;
    this.#now = deps.now ?? (() => new Date());
    this.#fds = new LeaseFds(deps.fdStore);
    this.#backend = deps.device.fdLimits === undefined ? 'memlock' : 'per-fd';
  }

  get policy(): Readonly<Policy> {
    return this.#policy;
  }

  /** SIGHUP: a new, already validated policy. Existing leases keep their limits. */
  replacePolicy(policy: Readonly<Policy>): void {
    this.#policy = policy;
  }

  /** At start: re-adopts the journaled leases whose targets still live, drops the rest (lease-restore.ts). */
  restore(
    journaled: readonly LeaseRecord[], earlierBoot: ReadonlySet<string> = new Set(), stored: ReadonlyMap<string, number> = new Map(),
  ): RestoreCounts {
    const effects = (id: string, target: Target | undefined): PlanEffects => this.#effects(id, target);
    return restoreLeases({ deps: this.deps, fds: this.#fds, backend: this.#backend, effects }, journaled, earlierBoot, stored);
  }

  async open(peer: Peer, p: BrokerParameters<'Open'>, targetPidFd: number | undefined): Promise<OpenResult> {
    // usage: read with the target's identity (one /proc read less per Open); not kept.
    const { usage, ...target } = describeTarget(targetPidFd ?? this.#selfPidfd(peer, p), peer.uid);
    // owner of target.pidfd: this call, until #targets.watch takes it
    const id = `l-${randomBytes(8).toString('hex')}`;
    let deviceFd: number | undefined; // owner: this call, until it is returned for the reply
    let vfio: OpenedDevice[] = []; // owner of their fds: this call, until they are returned for the reply
    let keptFd: number | undefined; // owner: this call, until the plan's 'keep' step hands it to #fds
    let watched = false;
    try {
      // Who the caller is, judged from pidfds right before the decision, never from pids: the
      // pid the caller connected from may belong to someone else by now.
      const decision = decideOpen(this.#policy, this.#ledger, {
        peer, peerAlive: peerIsAlive(peer), targetIsPeer: isPeerProcess(peer, target.pidfd),
        targetPid: target.pid, targetUid: target.uid, targetIds: target.ids, targetIpcLockSet: target.ipcLockSet,
        targetNoNewPrivs: target.noNewPrivs, perFdLimit: this.deps.device.backend.kind === 'per-fd',
        name: p.name, memoryBytes: p.memoryBytes, pageSize: this.#pageSize, devices: p.devices,
        ...(p.requestId === undefined ? {} : { requestId: p.requestId }),
      });
      if (!decision.ok) throw decision.error;
      journalReady(this.deps.journal);
      deviceFd = this.deps.device.openForLease();
      vfio = openDevices(this.deps.vfio ?? HOST_VFIO_ROOTS, p.devices ?? []);
      if (this.#backend === 'per-fd') keptFd = dupCloexec(deviceFd);
      const record: LeaseRecord = {
        id, name: p.name, targetPid: target.pid, targetUid: target.uid,
        targetStartTime: target.startTime, ownerUid: peer.uid, memoryBytes: p.memoryBytes,
        limitBytes: decision.limitBytes, createdAt: this.#now().toISOString(), previousLimit: readLimit(target, this.deps.haveSysResource),
        ...(p.requestId === undefined ? {} : { requestId: p.requestId }),
        ...(vfio.length === 0 ? {} : { devices: vfio.map((d) => ({ address: d.address, cdev: d.cdev })) }),
      };
      // The lane is idle (a new id): runPlan reserves in this same synchronous step. A crash from
      // here on leaves a lease that restore() re-applies or drops.
      const pending = keptFd;
      await this.#lanes.run(id, async () => runPlan(planGrant(record, this.#backend), this.#effects(id, target, pending)));
      watched = true; // granted: from here on the lease is the lane's and the watch's (and the kept fd #fds')
      keptFd = undefined;
      auditLease(this.deps.log, 'grant', peer, record);
      this.deps.onLeasesChanged?.();
      return { lease: this.#toWire(record, usage), fd: deviceFd, devices: vfio.map((d) => ({ address: d.address, fd: d.fd })) };
    } catch (err) {
      // A failed plan undid itself (lease-transaction.ts); the watch, its last step, never took the pidfd.
      if (deviceFd !== undefined) closeFd(deviceFd);
      for (const d of vfio) closeFd(d.fd);
      if (keptFd !== undefined) closeFd(keptFd);
      if (!watched) closeFd(target.pidfd);
      auditDenial(this.deps.log, 'open', peer, err, { name: p.name, memoryBytes: p.memoryBytes, targetPid: target.pid, devices: p.devices });
      throw err;
    }
  }

  resize(peer: Peer, p: BrokerParameters<'Resize'>): Promise<{ lease: Lease; previousLimitBytes: number }> {
    return this.#lanes.run(p.lease, async () => {
      try {
        return await this.#resizeNow(peer, p);
      } catch (err) {
        auditDenial(this.deps.log, 'resize', peer, err, { lease: p.lease, memoryBytes: p.memoryBytes });
        throw err;
      }
    });
  }

  async #resizeNow(peer: Peer, p: BrokerParameters<'Resize'>): Promise<{ lease: Lease; previousLimitBytes: number }> {
    const decision = decideResize(this.#policy, this.#ledger, peer, p.lease, p.memoryBytes, this.#pageSize,
      this.#backend, this.#fds.has(p.lease));
    if (!decision.ok) throw decision.error;
    journalReady(this.deps.journal);
    const { plan } = decision;
    // A lowering whose flush fails stays applied (JournalUnavailable); the journal records it on recovery.
    await runPlan(plan, this.#effects(plan.id, this.#targets.get(plan.id)));
    const previousLimitBytes = plan.before.limitBytes;
    auditLease(this.deps.log, 'resize', peer, plan.after, { previousLimitBytes });
    this.deps.onLeasesChanged?.();
    return { lease: this.#toWire(plan.after), previousLimitBytes };
  }

  release(peer: Peer, p: BrokerParameters<'Release'>): Promise<{ limitRestored: boolean }> {
    return this.#lanes.run(p.lease, async () => {
      const decision = decideRelease(this.#policy, this.#ledger, peer, p.lease, this.#now().toISOString());
      if (!decision.ok) {
        auditDenial(this.deps.log, 'release', peer, decision.error, { lease: p.lease });
        throw decision.error;
      }
      // A degraded journal refuses every change before it changes anything (docs/PROTOCOL.md).
      journalReady(this.deps.journal);
      // The target keeps its FD and may still pin up to the limit the broker set, so Release
      // never touches that limit (restoring the earlier one is usually a raise, often to
      // unlimited) and never returns the bytes: the lease stays charged, marked released, until
      // its target exits (#targetExited). Journaled (the reply waits for the flush), so after a
      // restart it is re-adopted still released, with its releasedAt. See planRelease.
      const { plan } = decision;
      if (plan.ledger !== undefined) { // undefined: released before, a retried Release changes nothing
        await runPlan(plan, this.#effects(plan.id, undefined));
        auditLease(this.deps.log, 'release', peer, plan.after, { reason: 'released; charged until the target exits', limitRestored: false });
        this.deps.onLeasesChanged?.();
      }
      return { limitRestored: false };
    });
  }

  /**
   * One page of the leases this peer may see (List). Only the page's leases are read from
   * /proc and put on the wire, so a call costs at most MAX_LIST_LIMIT of each.
   */
  list(peer: Peer, page: BrokerParameters<'List'> = {}): BrokerReply<'List'> {
    const after = page.cursor === undefined ? undefined : parseCursor(page.cursor);
    if (page.cursor !== undefined && after === undefined) {
      throw new VarlinkServiceError('org.varlink.service.InvalidParameter', { parameter: 'cursor', reason: 'not a cursor this broker handed out' });
    }
    const found = leasePage(visibleLeases(this.#policy, this.#ledger, peer), page.limit ?? DEFAULT_LIST_LIMIT, after);
    const leases = found.leases.map((r) => this.#toWire(r));
    return found.next === undefined ? { leases } : { leases, next: formatCursor(found.next) };
  }

  /** The lease with this id if this peer may see it (List's visibility), else undefined. */
  visibleLease(peer: Peer, id: string): Lease | undefined {
    const record = this.#ledger.get(id);
    return record !== undefined && mayView(this.#policy, peer, record) ? this.#toWire(record) : undefined;
  }

  /** Every lease this peer may see, unpaged: for /metrics, never for a reply with a size cap. */
  allVisible(peer: Peer): Lease[] {
    return visibleLeases(this.#policy, this.#ledger, peer).map((r) => this.#toWire(r));
  }

  status(): Status {
    return brokerStatus(this.#view());
  }

  /** What the wire views read: one object, so lease-views.ts needs no access to the class. */
  #view(): ServiceView {
    return { deps: this.deps, ledger: this.#ledger, policy: this.#policy, fds: this.#fds, backend: this.#backend };
  }

  #toWire(r: LeaseRecord, usage?: TargetUsage): Lease {
    return wireLease(this.#view(), r, usage);
  }

  #effects(id: string, target: Target | undefined, pendingFd?: number): PlanEffects {
    return leaseEffects({ id, target, pendingFd, deps: this.deps, ledger: this.#ledger, fds: this.#fds, targets: this.#targets });
  }

  /** The journal's records, fdatasyncs and compactions so far, and whether it is degraded (for /metrics). */
  journalStats(): { records: number; syncs: number; compactions: number; degraded: boolean } {
    const { journal } = this.deps;
    return { ...journal.stats, compactions: journal.compactions, degraded: journal.degraded !== null };
  }

  /** Stops watching targets and closes the kept FDs (leases stay journaled, systemd's fd store keeps its copies). */
  close(): void {
    this.#targets.forgetAll();
    this.#fds.closeAll();
  }

  /**
   * Ends a lease whose target exited (planTargetExit): journal, return the budget, forget the
   * watch. Runs in the lease's lane; the record is durable after the next flush.
   */
  #targetExited(id: string): void {
    const record = this.#ledger.get(id);
    if (record === undefined) return;
    void runPlan(planTargetExit(record, this.#backend), this.#effects(id, undefined)); // synchronous: no flush awaited
    auditLease(this.deps.log, 'release', undefined, record, { reason: 'target exited', limitRestored: false });
    this.deps.onLeasesChanged?.();
  }

  /** The caller's own process as the target: a copy of its pidfd (the connection owns peer.pidfd). */
  #selfPidfd(peer: Peer, p: BrokerParameters<'Open'>): number {
    if (peer.pidfd === undefined || !peerIsAlive(peer)) {
      const err = callerExited(peer); // no process left to limit, and its pid may be someone else's
      auditDenial(this.deps.log, 'open', peer, err, { name: p.name, memoryBytes: p.memoryBytes });
      throw err;
    }
    return dupCloexec(peer.pidfd);
  }
}
