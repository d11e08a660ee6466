// The duplicates of leases' FDs the broker keeps on the per-FD backend (and on the simulated
// device, which models that lifecycle), so a Resize can change a handed-out FD's limit later.
//
// Invariants:
// - fd ownership: each kept fd is owned by this table from keep()/adopt() until drop() (the
//   lease ended) or closeAll() (the broker stops), which close it; nothing else closes it. At most one fd per lease id: keeping a second one for the
//   same id closes the new one and throws (a bug). The table grows only with leases, whose
//   number the policy bounds.
// - A kept duplicate holds the VM's iommufd context, and with it every page the VM pinned, alive:
//   the lease's end (its target's exit, or a restore that finds the target gone) must drop it.
// - The fd store (systemd's, FDSTORE=1 with FDNAME=lease-<id>) hears about every keep (the fd
//   goes there too, so a restarted broker takes it back by name) and every drop
//   (FDSTOREREMOVE=1). adopt() takes an fd that came back from the store: it is there already.
//   Without a store (not run by systemd) a restart loses the fds: such leases cannot be
//   resized (lease-decisions.ts) and Status lists them.
import { closeFd } from '../../native/sys.ts';

/** Where kept fds survive a restart: systemd's fd store (daemon/shell/systemd/notify.ts). */
export interface FdStore {
  /** Hands a copy of `fd` to the store under `name` (the store owns its copy). */
  store(name: string, fd: number): void;
  /** The store closes its copy of `name`. */
  remove(name: string): void;
}

/** The fd store's name of a lease's FD: FDNAME= and LISTEN_FDNAMES use it. */
export function fdStoreName(leaseId: string): string {
  return `lease-${leaseId}`;
}

/** The lease id of a stored fd's name, or undefined if the name is not one of ours. */
export function leaseIdOfStoreName(name: string): string | undefined {
  const m = /^lease-(l-[0-9a-f]{16})$/.exec(name);
  return m?.[1];
}

export class LeaseFds {
  readonly #fds = new Map<string, number>();
  readonly #store: FdStore | undefined;

  constructor(store: FdStore | undefined) {
    this.#store = store;
  }

  /** The table takes `fd` (a fresh duplicate of the lease's FD) and gives the store a copy. */
  keep(id: string, fd: number): void {
    this.adopt(id, fd);
    this.#store?.store(fdStoreName(id), fd);
  }

  /** The table takes `fd`, which came back from the fd store at start. */
  adopt(id: string, fd: number): void {
    if (this.#fds.has(id)) {
      closeFd(fd);
      throw new Error(`lease ${id} already has a kept FD (a bug)`);
    }
    this.#fds.set(id, fd);
  }

  /** The kept fd of lease `id` (still owned by the table), or undefined. */
  get(id: string): number | undefined {
    return this.#fds.get(id);
  }

  has(id: string): boolean {
    return this.#fds.has(id);
  }

  /** Closes the lease's kept fd, if any, and tells the store to forget it. */
  drop(id: string): void {
    const fd = this.#fds.get(id);
    this.#fds.delete(id);
    if (fd !== undefined) closeFd(fd);
    this.#store?.remove(fdStoreName(id));
  }

  /** Closes every kept fd without telling the store (a stop: the store keeps its copies for the next start). */
  closeAll(): void {
    for (const fd of this.#fds.values()) closeFd(fd);
    this.#fds.clear();
  }

  get size(): number {
    return this.#fds.size;
  }
}
