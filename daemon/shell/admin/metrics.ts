// The broker's Prometheus metrics: request counts and durations, recorded as calls finish, and
// the budget and per-lease gauges, read from the service at scrape time.
//
// Invariants:
// - Label values are bounded: `api` is 'varlink' or 'admin'; `method` is a qualified Varlink
//   method the decoder accepted or an admin route pattern ('PATCH /v1/leases/:id', never a raw
//   URL; 'unmatched' for the rest); `outcome` is 'ok' or a stable error name
//   (protocol/errors.ts, or the admin API's own). A lease's series exist while the lease lives.
// - Gauges are never cached here: render() prints the snapshot it is handed, so /metrics and
//   /v1/status taken from the same service state agree.
// - Output is the Prometheus text exposition format 0.0.4: one HELP and one TYPE line per
//   family, label values escaped (\\, \", \n), histogram buckets cumulative and le="+Inf"
//   equal to _count. `promtool check metrics` accepts it (test/daemon/shell/admin/metrics.test.ts).
// - Durations come from a monotonic clock (injectable for tests); no I/O, no fds.
import { BrokerError } from '../../../protocol/errors.ts';
import type { Lease, Status } from '../../../protocol/methods.ts';
import type { CallHandler } from '../varlink/server.ts';

/** Which face of the broker a request came through. */
export type RequestApi = 'varlink' | 'admin';

/** What the gauges are read from: the service's status() and list() of one scrape. */
export interface BrokerSnapshot {
  status: Status;
  leases: readonly Lease[];
  /** The journal's records, fdatasyncs and compactions since the daemon started, and whether it is degraded. */
  journal: { records: number; syncs: number; compactions: number; degraded: boolean };
  /**
   * fds handed to the native closer threads and not closed yet (native/src/closer.c); absent:
   * not shown. A close that never returns (a client's stuck FUSE file, say) stays counted.
   */
  pendingCloses?: number;
}

/** Upper bounds (seconds) of the request duration histogram; a call takes ~0.1 ms on these hosts. */
export const DURATION_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

/** The Content-Type of render()'s output. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const PREFIX = 'iommufd_broker';

interface Histogram {
  /** Per bucket (same order as DURATION_BUCKETS), not yet cumulative. */
  counts: number[];
  sum: number;
  count: number;
}

export interface MetricsOptions {
  /** Monotonic nanoseconds; default process.hrtime.bigint. */
  now?: () => bigint;
}

export class Metrics {
  readonly #now: () => bigint;
  /** api \0 method \0 outcome -> count */
  readonly #requests = new Map<string, number>();
  /** api \0 method -> durations */
  readonly #durations = new Map<string, Histogram>();
  /** stage \0 reason -> count */
  readonly #refusals = new Map<string, number>();

  constructor(options: MetricsOptions = {}) {
    this.#now = options.now ?? (() => process.hrtime.bigint());
  }

  /** Starts timing one request; the returned function gives the seconds elapsed since. */
  startTimer(): () => number {
    const started = this.#now();
    return () => Number(this.#now() - started) / 1e9;
  }

  /** Records one finished request. `seconds` must be a finite number >= 0. */
  observeCall(api: RequestApi, method: string, outcome: string, seconds: number): void {
    if (!Number.isFinite(seconds) || seconds < 0) throw new RangeError(`a request duration must be finite and >= 0, got ${seconds}`);
    const key = `${api}\0${method}\0${outcome}`;
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
    const hKey = `${api}\0${method}`;
    let h = this.#durations.get(hKey);
    if (h === undefined) {
      h = { counts: DURATION_BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.#durations.set(hKey, h);
    }
    const bucket = DURATION_BUCKETS.findIndex((le) => seconds <= le);
    if (bucket >= 0) h.counts[bucket] = (h.counts[bucket] ?? 0) + 1;
    h.sum += seconds;
    h.count += 1;
  }

  /**
   * Records one refusal before dispatch (daemon/shell/varlink/server.ts Refusal): `reason` is a fixed
   * connection reason or a Varlink error name, so the label set stays bounded.
   */
  observeRefusal(stage: 'connection' | 'message', reason: string): void {
    const key = `${stage}\0${reason}`;
    this.#refusals.set(key, (this.#refusals.get(key) ?? 0) + 1);
  }

  /** Every family, in the text exposition format (ends with '\n'). */
  render(snapshot: BrokerSnapshot): string {
    const { status, leases } = snapshot;
    const out: string[] = [];
    family(out, 'info', 'gauge', 'Always 1; labels say which broker build and device kind serve', [
      [{ version: status.version, device_kind: status.device.kind }, 1],
    ]);
    family(out, 'sys_resource', 'gauge', '1 if the broker holds CAP_SYS_RESOURCE (limits can be raised), else 0', [
      [{}, status.capabilities.sysResource ? 1 : 0],
    ]);
    family(out, 'budget_bytes', 'gauge', 'Host-wide budget: the most limit bytes all leases together may hold', [[{}, status.budget.totalBytes]]);
    family(out, 'budget_used_bytes', 'gauge', 'Limit bytes held by live leases', [[{}, status.budget.usedBytes]]);
    family(out, 'leases', 'gauge', 'Live leases', [[{}, status.leases]]);
    const id = (l: Lease): Labels => ({ lease: l.id, name: l.name });
    family(out, 'lease_memory_bytes', 'gauge', 'VM memory size the lease was sized for', leases.map((l) => [id(l), l.memoryBytes]));
    family(out, 'lease_limit_bytes', 'gauge', 'RLIMIT_MEMLOCK the broker set on the lease\'s target', leases.map((l) => [id(l), l.limitBytes]));
    family(out, 'lease_pinned_bytes', 'gauge', 'Pinned memory of the lease\'s target now (VmPin of /proc/PID/status)',
      leases.flatMap((l): Sample[] => (l.pinnedBytes === undefined ? [] : [[id(l), l.pinnedBytes]])));
    family(out, 'lease_locked_bytes', 'gauge', 'Locked memory of the lease\'s target now (VmLck of /proc/PID/status)',
      leases.flatMap((l): Sample[] => (l.lockedBytes === undefined ? [] : [[id(l), l.lockedBytes]])));
    family(out, 'lease_device_info', 'gauge', 'A VFIO device a lease holds (always 1): its PCI address and vfio cdev',
      leases.flatMap((l): Sample[] => (l.devices ?? []).map((d) => [{ ...id(l), address: d.address, cdev: d.cdev }, 1])));
    family(out, 'journal_records_total', 'counter', 'Lease journal records written since start', [[{}, snapshot.journal.records]]);
    family(out, 'journal_syncs_total', 'counter', 'fdatasyncs of the lease journal since start (records / syncs = group-commit batch)',
      [[{}, snapshot.journal.syncs]]);
    family(out, 'journal_compactions_total', 'counter', 'Rewrites of the lease journal as its live leases since start (bounds its size)',
      [[{}, snapshot.journal.compactions]]);
    family(out, 'journal_degraded', 'gauge', '1 while the lease journal cannot make records durable (changes are refused), else 0',
      [[{}, snapshot.journal.degraded ? 1 : 0]]);
    if (snapshot.pendingCloses !== undefined) {
      family(out, 'pending_closes', 'gauge', 'Client fds and sockets handed to the closer threads and not closed yet (stuck closes stay counted)',
        [[{}, snapshot.pendingCloses]]);
    }
    family(out, 'requests_total', 'counter', 'Requests answered, by API, method and outcome (ok or the error name)',
      [...this.#requests].sort(byKey).map(([key, n]) => {
        const [api = '', method = '', outcome = ''] = key.split('\0');
        return [{ api, method, outcome }, n];
      }));
    family(out, 'refused_total', 'counter', 'Connections and messages turned away before any method ran, by stage and reason',
      [...this.#refusals].sort(byKey).map(([key, n]) => {
        const [stage = '', reason = ''] = key.split('\0');
        return [{ stage, reason }, n];
      }));
    this.#renderDurations(out);
    return out.join('');
  }

  #renderDurations(out: string[]): void {
    const name = `${PREFIX}_request_duration_seconds`;
    out.push(`# HELP ${name} Time from a decoded request to its answer, by API and method\n# TYPE ${name} histogram\n`);
    for (const [key, h] of [...this.#durations].sort(byKey)) {
      const [api = '', method = ''] = key.split('\0');
      let cumulative = 0;
      DURATION_BUCKETS.forEach((le, i) => {
        cumulative += h.counts[i] ?? 0;
        out.push(`${name}_bucket${labels({ api, method, le: String(le) })} ${cumulative}\n`);
      });
      out.push(`${name}_bucket${labels({ api, method, le: '+Inf' })} ${h.count}\n`);
      out.push(`${name}_sum${labels({ api, method })} ${number(h.sum)}\n`);
      out.push(`${name}_count${labels({ api, method })} ${h.count}\n`);
    }
  }
}

/** The outcome label of a failed call: the BrokerError's name, else InternalError (what the client is told). */
export function outcomeOf(error: unknown): string {
  return error instanceof BrokerError ? error.errorName : 'InternalError';
}

/** Wraps the Varlink dispatcher so that every call it answers is counted and timed. */
export function withMetrics(dispatch: CallHandler, metrics: Metrics): CallHandler {
  return async (call, peer) => {
    const elapsed = metrics.startTimer();
    try {
      const reply = await dispatch(call, peer);
      metrics.observeCall('varlink', call.method, 'ok', elapsed());
      return reply;
    } catch (error) {
      metrics.observeCall('varlink', call.method, outcomeOf(error), elapsed());
      throw error;
    }
  };
}

type Labels = Readonly<Record<string, string>>;
type Sample = readonly [Labels, number];

function family(out: string[], suffix: string, type: 'gauge' | 'counter', help: string, samples: readonly Sample[]): void {
  const name = `${PREFIX}_${suffix}`;
  out.push(`# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`);
  for (const [l, v] of samples) out.push(`${name}${labels(l)} ${number(v)}\n`);
}

/** {a="x",b="y"} with values escaped as the format requires; '' when there are none. */
function labels(l: Labels): string {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

/**
 * A sample value: integers in full (byte counts up to 2^53), other numbers as JS prints them
 * (Prometheus parses both). Values are finite: byte counts come from zod-checked replies and
 * observeCall refuses non-finite durations.
 */
function number(v: number): string {
  return Number.isInteger(v) ? v.toFixed(0) : String(v);
}

function byKey(a: readonly [string, unknown], b: readonly [string, unknown]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}
