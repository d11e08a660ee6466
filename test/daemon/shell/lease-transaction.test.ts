// A model test of the lease runner, without a kernel: fast-check drives sequences of plans
// (Open, raise, lower, Release, target exit, restart) through runPlan against fake effects,
// injecting a failure at any step (journal write, flush, prlimit or watch fails), a target
// that dies between steps, or a crash at any point followed by a restore. Between every two
// steps, and after every operation, it checks the broker's promise:
//   I1: the journal on disk never claims less than the limit a live target has in the kernel;
//   I2: the ledger never counts less than what a live target may pin (its kernel limit).
// The targets start with a limit of 0 (they can pin nothing until the broker lets them).
// The same property run with deliberately wrong step orders must fail: that shows the test
// catches what the ordering rule in lease-transaction.ts prevents.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Ledger, type LeaseRecord } from '../../../daemon/core/ledger.ts';
import {
  planGrant, planRelease, planResize, planRestore, planTargetExit, type JournalRecord, type LeasePlan,
} from '../../../daemon/core/lease-plan.ts';
import { STEPS, runPlan, runSteps, type PlanEffects, type Step } from '../../../daemon/shell/lease-transaction.ts';

const MiB = 1024 * 1024;

type Runner = (plan: LeasePlan, fx: PlanEffects) => Promise<void> | undefined;
type FaultKind = 'fail' | 'die' | 'crash';
interface Fault { readonly at: number; readonly kind: FaultKind }
type Op =
  | { op: 'open'; mib: number; fault: Fault | undefined }
  | { op: 'resize'; which: number; mib: number; fault: Fault | undefined }
  | { op: 'release'; which: number }
  | { op: 'die'; which: number }
  | { op: 'reap' }
  | { op: 'flush' }
  | { op: 'crash' };

class Crash extends Error {}
class Broken extends Error {}

function applyRecord(leases: Map<string, LeaseRecord>, r: JournalRecord): void {
  if (r.kind === 'grant') leases.set(r.lease.id, r.lease);
  else if (r.kind === 'release') leases.delete(r.id);
  else if (r.kind === 'mark-released') {
    const old = leases.get(r.id);
    if (old !== undefined) leases.set(r.id, { ...old, releasedAt: r.at });
  } else {
    const old = leases.get(r.id);
    if (old !== undefined) leases.set(r.id, { ...old, ...r.to });
  }
}

class World {
  readonly targets = new Map<number, { alive: boolean; kernel: number }>();
  readonly durable = new Map<string, LeaseRecord>();
  pending: JournalRecord[] = [];
  ledger = new Ledger();
  readonly watched = new Map<string, number>();
  crashed = false;
  restoring = false;
  next = 0;

  constructor(readonly run: Runner) {}

  /** I1 and I2; throws Broken naming the first live target that breaks one. */
  check(where: string): void {
    if (this.restoring) return; // the daemon answers nothing until restore() is done
    for (const [pid, t] of this.targets) {
      if (!t.alive) continue;
      const claimed = [...this.durable.values()].find((l) => l.targetPid === pid)?.limitBytes ?? 0;
      if (t.kernel > claimed) throw new Broken(`${where}: pid ${pid} may pin ${t.kernel}, the journal on disk claims ${claimed}`);
      const counted = this.ledger.byTargetPid(pid)?.limitBytes ?? 0;
      if (t.kernel > counted) throw new Broken(`${where}: pid ${pid} may pin ${t.kernel}, the ledger counts ${counted}`);
    }
  }

  effects(id: string, pid: number, fault: Fault | undefined): PlanEffects {
    let calls = 0;
    // Every effect passes here first: check the promise between steps, then maybe inject the fault.
    const tick = (what: string): boolean => {
      if (this.crashed) return false; // the process is gone: the undos it would run never happen
      this.check(`before ${what}`);
      const now = calls++;
      if (fault === undefined || fault.at !== now) return true;
      if (fault.kind === 'crash') {
        this.crashed = true;
        throw new Crash(`crash before ${what}`);
      }
      if (fault.kind === 'die') {
        const t = this.targets.get(pid);
        if (t !== undefined) t.alive = false;
        return true;
      }
      throw new Error(`injected: ${what} fails`);
    };
    const setKernel = (bytes: number): void => {
      const t = this.targets.get(pid);
      if (t === undefined || !t.alive) throw new Error('ESRCH');
      t.kernel = bytes;
    };
    return {
      ledger: this.ledger,
      journal: {
        write: (r) => {
          if (tick('journal write')) this.pending.push(r);
        },
        flush: async () => {
          if (!tick('flush')) return;
          for (const r of this.pending) applyRecord(this.durable, r);
          this.pending = [];
        },
      },
      kernel: {
        setFd: () => {
          throw new Error('the model\'s plans are memlock plans: no FD limit');
        },
        set: (bytes) => {
          if (tick('prlimit')) setKernel(bytes);
        },
        restore: (previous) => {
          if (tick('prlimit restore')) setKernel(previous.soft);
        },
      },
      watch: {
        start: () => {
          if (tick('watch')) this.watched.set(id, pid);
        },
        stop: () => {
          if (tick('forget')) this.watched.delete(id);
        },
      },
      fd: {
        keep: () => { throw new Error('the model\'s plans are memlock plans: no kept FD'); },
        drop: () => { throw new Error('the model\'s plans are memlock plans: no kept FD'); },
      },
      warn: () => {},
    };
  }

  /** Runs a plan; a Crash restarts the broker (lost: the ledger, unflushed records, watches) and restores. */
  async carryOut(plan: LeasePlan, pid: number, fault: Fault | undefined): Promise<void> {
    try {
      await this.run(plan, this.effects(plan.id, pid, fault));
    } catch (err) {
      if (err instanceof Broken) throw err;
    }
    // A crash ends the process wherever it hit, whatever error the runner let out afterwards: a
    // crash inside an undo comes out as the error that started the undo (the runner rethrows
    // that one), so the error's class cannot say whether the broker crashed.
    if (this.crashed) await this.restart();
    this.check(`after ${plan.id}`);
  }

  async restart(): Promise<void> {
    this.crashed = false;
    this.pending = [];
    this.ledger = new Ledger();
    this.watched.clear();
    this.restoring = true;
    for (const record of [...this.durable.values()]) {
      const alive = this.targets.get(record.targetPid)?.alive === true;
      await this.run(planRestore(record, alive), this.effects(record.id, record.targetPid, undefined));
    }
    this.restoring = false;
    this.check('after restore');
  }

  async step(op: Op): Promise<void> {
    const live = this.ledger.all();
    switch (op.op) {
      case 'open': {
        const n = this.next++;
        const pid = 100 + n;
        this.targets.set(pid, { alive: true, kernel: 0 });
        const lease: LeaseRecord = {
          id: `l-${n}`, name: 'vm', targetPid: pid, targetUid: 1000, targetStartTime: '1', ownerUid: 1000,
          memoryBytes: op.mib * MiB, limitBytes: op.mib * MiB, createdAt: 't', previousLimit: { soft: 0, hard: 0 },
        };
        return this.carryOut(planGrant(lease), pid, op.fault);
      }
      case 'resize': {
        const resizable = live.filter((l) => l.releasedAt === undefined);
        const lease = resizable[op.which % Math.max(1, resizable.length)];
        if (lease === undefined) return;
        const bytes = op.mib * MiB;
        return this.carryOut(planResize(lease, { memoryBytes: bytes, limitBytes: bytes }), lease.targetPid, op.fault);
      }
      case 'release': {
        const lease = live[op.which % Math.max(1, live.length)];
        if (lease === undefined) return;
        return this.carryOut(planRelease(lease, 'r'), lease.targetPid, undefined);
      }
      case 'die': {
        const pids = [...this.targets.keys()];
        const t = this.targets.get(pids[op.which % Math.max(1, pids.length)] ?? -1);
        if (t !== undefined) t.alive = false;
        this.check('after a target died');
        return;
      }
      case 'reap': // TargetWatch's exit callback, for every watched target that died
        for (const [id, pid] of [...this.watched]) {
          const lease = this.ledger.get(id);
          if (this.targets.get(pid)?.alive === false && lease !== undefined) await this.carryOut(planTargetExit(lease), pid, undefined);
        }
        return;
      case 'flush':
        await this.effects('-', -1, undefined).journal.flush();
        this.check('after a flush');
        return;
      case 'crash':
        await this.restart();
        return;
    }
  }
}

const fault = fc.option(
  fc.record({ at: fc.nat(5), kind: fc.constantFrom<FaultKind>('fail', 'die', 'crash') }),
  { nil: undefined },
);
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('open' as const), mib: fc.integer({ min: 1, max: 8 }), fault }) },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('resize' as const), which: fc.nat(), mib: fc.integer({ min: 1, max: 8 }), fault }) },
  fc.record({ op: fc.constant('release' as const), which: fc.nat() }),
  fc.record({ op: fc.constant('die' as const), which: fc.nat() }),
  fc.record({ op: fc.constant('reap' as const) }),
  fc.record({ op: fc.constant('flush' as const) }),
  fc.record({ op: fc.constant('crash' as const) }),
);

function promiseHolds(run: Runner): fc.IAsyncProperty<[Op[]]> {
  return fc.asyncProperty(fc.array(op, { maxLength: 30 }), async (ops) => {
    const world = new World(run);
    for (const o of ops) await world.step(o);
  });
}

function runnerWith(order: Readonly<Record<LeasePlan['order'], readonly Step[]>>): Runner {
  return (plan, fx) => runSteps(plan, fx, order[plan.order]);
}

describe('lease-transaction: the ordering rule, as a model', () => {
  it('runPlan keeps the journal and the ledger on the safe side through any failure, death or crash', async () => {
    await fc.assert(promiseHolds(runPlan), { numRuns: 400 });
  });

  it('catches a raise applied before its flush (a deliberately wrong order)', async () => {
    const wrong = runnerWith({ ...STEPS, 'journal-first': ['reserve', 'journal', 'apply', 'flush', 'watch'] });
    const result = await fc.check(promiseHolds(wrong), { numRuns: 400 });
    assert.equal(result.failed, true, 'the model must catch a raise that reaches the kernel before the disk');
    assert.match(String(result.errorInstance), /the journal on disk claims/);
  });

  it('catches a lowering counted before the kernel holds it (a deliberately wrong order)', async () => {
    const wrong = runnerWith({ ...STEPS, 'kernel-first': ['reserve', 'journal', 'flush', 'apply', 'watch'] });
    const result = await fc.check(promiseHolds(wrong), { numRuns: 400 });
    assert.equal(result.failed, true, 'the model must catch a ledger that counts less than the kernel allows');
    assert.match(String(result.errorInstance), /the ledger counts/);
  });
});

describe('runPlan', () => {
  it('runs a plan with no awaited flush synchronously (a reservation lands in the decision\'s tick)', () => {
    const world = new World(runPlan);
    world.targets.set(7, { alive: true, kernel: 0 });
    const lease: LeaseRecord = {
      id: 'l-x', name: 'vm', targetPid: 7, targetUid: 1, targetStartTime: '1', ownerUid: 1,
      memoryBytes: MiB, limitBytes: MiB, createdAt: 't', previousLimit: { soft: 0, hard: 0 },
    };
    world.durable.set('l-x', lease); // as journaled before a restart
    assert.equal(runPlan(planRestore(lease, true), world.effects('l-x', 7, undefined)), undefined);
    assert.equal(world.ledger.get('l-x')?.limitBytes, MiB);
    assert.equal(world.targets.get(7)?.kernel, MiB);
    const pending = runPlan(planGrant({ ...lease, id: 'l-y', targetPid: 8 }), world.effects('l-y', 8, undefined));
    assert.ok(pending instanceof Promise);
    assert.equal(world.ledger.get('l-y')?.limitBytes, MiB, 'reserved before the flush is awaited');
    void pending.catch(() => {}); // target 8 does not exist: its prlimit fails after the flush
  });
});

describe('runPlan: the per-fd backend\'s steps', () => {
  const lease: LeaseRecord = {
    id: 'l-f', name: 'vm', targetPid: 9, targetUid: 1, targetStartTime: '1', ownerUid: 1,
    memoryBytes: MiB, limitBytes: 2 * MiB, createdAt: 't', previousLimit: { soft: 0, hard: 0 },
  };
  /** Effects that only record what ran, in order; `failing` names a step that throws. */
  function recorder(failing?: string): { log: string[]; fx: PlanEffects } {
    const log: string[] = [];
    const step = (name: string) => (arg?: unknown): void => {
      log.push(arg === undefined ? name : `${name} ${String(arg)}`);
      if (name === failing) throw new Error(`${name} failed`);
    };
    return {
      log,
      fx: {
        ledger: new Ledger(),
        journal: { write: (r) => step('journal')(r.kind), flush: async () => step('flush')() },
        kernel: { setFd: step('fd-limit'), set: step('rlimit'), restore: (p) => step('restore')(p.soft) },
        watch: { start: step('watch'), stop: step('forget') },
        fd: { keep: step('keep'), drop: step('drop') },
        warn: (_err, what) => log.push(`warn: ${what}`),
      },
    };
  }

  it('a grant sets the FD\'s limit before the target\'s, after the flush, and keeps the FD last', async () => {
    const { log, fx } = recorder();
    await runPlan(planGrant(lease, 'per-fd'), fx);
    assert.deepEqual(log, ['journal grant', 'flush', `fd-limit ${2 * MiB}`, `rlimit ${2 * MiB}`, 'watch', 'keep']);
  });

  it('a grant whose FD limit is refused keeps no FD and sets no rlimit; the journal is undone', async () => {
    const { log, fx } = recorder('fd-limit');
    await assert.rejects(async () => runPlan(planGrant(lease, 'per-fd'), fx), /fd-limit failed/);
    assert.deepEqual(log, ['journal grant', 'flush', `fd-limit ${2 * MiB}`, 'journal release']);
  });

  it('a lowering sets the FD\'s limit first of all (kernel-first); a target\'s exit drops the FD after forgetting it', () => {
    const { log, fx } = recorder();
    fx.ledger.grant(lease);
    void runPlan(planResize(lease, { memoryBytes: MiB, limitBytes: MiB }, 'per-fd'), fx)?.catch(() => {});
    assert.deepEqual(log.slice(0, 3), [`fd-limit ${MiB}`, `rlimit ${MiB}`, 'journal resize']);
    const exit = recorder();
    exit.fx.ledger.grant(lease);
    assert.equal(runPlan(planTargetExit(lease, 'per-fd'), exit.fx), undefined);
    assert.deepEqual(exit.log, ['journal release', 'forget', 'drop']);
  });

  it('a raise whose RLIMIT_MEMLOCK step fails puts the FD\'s old limit back, then undoes the journal', async () => {
    const { log, fx } = recorder('rlimit');
    fx.ledger.grant(lease);
    await assert.rejects(async () => runPlan(planResize(lease, { memoryBytes: 4 * MiB, limitBytes: 4 * MiB }, 'per-fd'), fx), /rlimit failed/);
    assert.deepEqual(log, ['journal resize', 'flush', `fd-limit ${4 * MiB}`, `rlimit ${4 * MiB}`, `fd-limit ${2 * MiB}`, 'journal resize']);
    assert.equal(fx.ledger.get('l-f')?.limitBytes, 2 * MiB);
  });

  it('a restore re-applies the FD\'s limit when it came back; a refusal is a warning, the lease is kept', () => {
    const { log, fx } = recorder('fd-limit');
    assert.equal(runPlan(planRestore(lease, true, 'per-fd', true), fx), undefined);
    assert.deepEqual(log, [`fd-limit ${2 * MiB}`, 'warn: could not re-apply the journaled limit on the lease\'s FD; keeping the lease',
      `rlimit ${2 * MiB}`, 'watch']);
    assert.equal(fx.ledger.get('l-f')?.limitBytes, 2 * MiB);
  });
});
