// One lane per lease: the calls that change a lease run one after another, in arrival order.
//
// Invariants:
// - A lease's calls now wait for the journal between their decision and their kernel limit
//   change (group commit, journal/journal.ts). Without a lane, a lowering Resize could run inside a
//   raise's wait and the raise would then land last in the kernel but not in the ledger.
// - run(key, step) starts step at once (synchronously) if the lane is idle, else after the
//   lane's earlier steps have settled; a step that throws does not stop the ones behind it.
// - A step must never run() on its own lane: it would wait for itself.
// - Idle lanes are forgotten, so the map holds only leases with a call in flight.
export class LeaseLanes {
  readonly #tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, step: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(key);
    const result = before === undefined ? step() : before.then(step, step);
    const tail = result.then(noop, noop);
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return result;
  }

  /** Keys with a call in flight (for tests). */
  get busy(): number {
    return this.#tails.size;
  }
}

function noop(): void {}
