// Metrics: counters and the duration histogram under a scripted clock, the gauges of a snapshot,
// the Varlink wrapper, label escaping, and Debian's promtool accepting the output.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { BrokerError } from '../../../../protocol/errors.ts';
import type { DecodedCall } from '../../../../protocol/decode.ts';
import type { Lease, Status } from '../../../../protocol/methods.ts';
import { DURATION_BUCKETS, Metrics, outcomeOf, withMetrics, type BrokerSnapshot } from '../../../../daemon/shell/admin/metrics.ts';
import type { ConnectionPeer } from '../../../../daemon/shell/peer.ts';
import { sourceFiles } from '../../../support/sources.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** A clock the test moves by hand (nanoseconds). */
function scriptedClock(): { now: () => bigint; advance: (seconds: number) => void } {
  let t = 1_000_000n;
  return { now: () => t, advance: (s) => { t += BigInt(Math.round(s * 1e9)); } };
}

function status(over: Partial<Status> = {}): Status {
  return {
    version: '0.1.0',
    device: { kind: 'simulated', path: 'simulated', rlimitModeSupported: null, perFdLimitOption: null, note: 'n' },
    capabilities: { sysResource: false, note: 'c' },
    budget: { totalBytes: 64 * GiB, usedBytes: 11 * GiB, freeBytes: 53 * GiB, releasedBytes: 0 },
    leases: 2, overheadBytes: GiB, ...over,
  };
}

function lease(over: Partial<Lease> = {}): Lease {
  return {
    id: 'l-0123456789abcdef', name: 'vm1', pid: 4242, uid: 107, ownerUid: 0, memoryBytes: 8 * GiB,
    limitBytes: 9 * GiB, accountingMode: 'process', deviceKind: 'iommufd', createdAt: '2026-01-02T03:04:05.000Z', ...over,
  };
}

const SNAPSHOT: BrokerSnapshot = {
  status: status(),
  leases: [lease({ pinnedBytes: 512 * MiB, lockedBytes: 256 * MiB, devices: [{ address: '0000:00:03.0', cdev: 'vfio0' }, { address: '0000:81:00.1', cdev: 'vfio3' }] }), lease({ id: 'l-fedcba9876543210', name: 'vm2', memoryBytes: GiB, limitBytes: 2 * GiB })],
  journal: { records: 40, syncs: 3, compactions: 2, degraded: true },
  pendingCloses: 2,
};

/** The value of the one sample whose line starts with `prefix` (name plus labels). */
function sample(text: string, prefix: string): string {
  const lines = text.split('\n').filter((l) => l.startsWith(`${prefix} `));
  assert.equal(lines.length, 1, `exactly one sample ${prefix} in:\n${text}`);
  return (lines[0] ?? '').slice(prefix.length + 1);
}

test('the backend: its kind as a label, the leases that cannot be resized, each lease\'s FD usage (issue #10)', () => {
  const text = new Metrics().render({
    ...SNAPSHOT,
    status: status({ backend: { kind: 'per-fd', reason: 'r', notResizableCount: 3, notResizable: ['l-0123456789abcdef'] } }),
    leases: [lease({ accountingMode: 'fd', fdPinnedBytes: 768 * MiB }), lease({ id: 'l-fedcba9876543210', name: 'vm2' })],
  });
  assert.equal(sample(text, 'iommufd_broker_backend{kind="per-fd"}'), '1');
  assert.equal(sample(text, 'iommufd_broker_leases_not_resizable'), '3');
  assert.equal(sample(text, 'iommufd_broker_lease_fd_pinned_bytes{lease="l-0123456789abcdef",name="vm1"}'), String(768 * MiB));
  assert.equal(text.split('\n').filter((l) => l.startsWith('iommufd_broker_lease_fd_pinned_bytes{')).length, 1, 'absent without a kept FD');
  assert.ok(!new Metrics().render(SNAPSHOT).includes('iommufd_broker_backend{'), 'an older broker\'s status has no backend');
});

test('the gauges print the snapshot: budget, lease count, and each lease\'s limit, pinned and locked bytes', () => {
  const text = new Metrics().render(SNAPSHOT);
  assert.equal(sample(text, 'iommufd_broker_budget_bytes'), String(64 * GiB));
  assert.equal(sample(text, 'iommufd_broker_budget_used_bytes'), String(11 * GiB));
  assert.equal(sample(text, 'iommufd_broker_leases'), '2');
  assert.equal(sample(text, 'iommufd_broker_journal_records_total'), '40');
  assert.equal(sample(text, 'iommufd_broker_journal_syncs_total'), '3');
  assert.equal(sample(text, 'iommufd_broker_journal_compactions_total'), '2');
  assert.equal(sample(text, 'iommufd_broker_journal_degraded'), '1');
  assert.equal(sample(text, 'iommufd_broker_pending_closes'), '2');
  assert.equal(sample(text, 'iommufd_broker_sys_resource'), '0');
  assert.equal(sample(text, 'iommufd_broker_info{version="0.1.0",device_kind="simulated"}'), '1');
  assert.equal(sample(text, 'iommufd_broker_lease_limit_bytes{lease="l-0123456789abcdef",name="vm1"}'), String(9 * GiB));
  assert.equal(sample(text, 'iommufd_broker_lease_limit_bytes{lease="l-fedcba9876543210",name="vm2"}'), String(2 * GiB));
  assert.equal(sample(text, 'iommufd_broker_lease_memory_bytes{lease="l-fedcba9876543210",name="vm2"}'), String(GiB));
  assert.equal(sample(text, 'iommufd_broker_lease_pinned_bytes{lease="l-0123456789abcdef",name="vm1"}'), String(512 * MiB));
  assert.equal(sample(text, 'iommufd_broker_lease_locked_bytes{lease="l-0123456789abcdef",name="vm1"}'), String(256 * MiB));
  // vm2's usage was unreadable: no sample at all rather than a made-up 0.
  assert.doesNotMatch(text, /lease_pinned_bytes\{lease="l-fedcba9876543210"/);
  assert.doesNotMatch(text, /lease_locked_bytes\{lease="l-fedcba9876543210"/);
  // One info sample per device a lease holds; a lease without devices has none.
  assert.equal(sample(text, 'iommufd_broker_lease_device_info{lease="l-0123456789abcdef",name="vm1",address="0000:00:03.0",cdev="vfio0"}'), '1');
  assert.equal(sample(text, 'iommufd_broker_lease_device_info{lease="l-0123456789abcdef",name="vm1",address="0000:81:00.1",cdev="vfio3"}'), '1');
  assert.doesNotMatch(text, /lease_device_info\{lease="l-fedcba9876543210"/);
  assert.ok(text.endsWith('\n'));
});

test('byte counts up to 2^53 print as exact integers', () => {
  const big = Number.MAX_SAFE_INTEGER;
  const text = new Metrics().render({ status: status({ budget: { totalBytes: big, usedBytes: 0, freeBytes: big, releasedBytes: 0 } }), leases: [], journal: { records: 0, syncs: 0, compactions: 0, degraded: false } });
  assert.equal(sample(text, 'iommufd_broker_budget_bytes'), '9007199254740991');
});

test('requests are counted by api, method and outcome', () => {
  const m = new Metrics();
  m.observeCall('varlink', 'io.iommufd.Broker.Open', 'ok', 0.001);
  m.observeCall('varlink', 'io.iommufd.Broker.Open', 'ok', 0.001);
  m.observeCall('varlink', 'io.iommufd.Broker.Open', 'BudgetExceeded', 0.001);
  m.observeCall('admin', 'PATCH /v1/leases/:id', 'NoSuchLease', 0.001);
  const text = m.render(SNAPSHOT);
  assert.equal(sample(text, 'iommufd_broker_requests_total{api="varlink",method="io.iommufd.Broker.Open",outcome="ok"}'), '2');
  assert.equal(sample(text, 'iommufd_broker_requests_total{api="varlink",method="io.iommufd.Broker.Open",outcome="BudgetExceeded"}'), '1');
  assert.equal(sample(text, 'iommufd_broker_requests_total{api="admin",method="PATCH /v1/leases/:id",outcome="NoSuchLease"}'), '1');
  assert.equal(text.split('\n').filter((l) => l.startsWith('iommufd_broker_requests_total{')).length, 3);
});

test('the duration histogram is cumulative, a value on a bound falls in that bucket, and +Inf equals the count', () => {
  const clock = scriptedClock();
  const m = new Metrics({ now: clock.now });
  const durations = [0.0001, 0.0003, 0.002, 5];
  for (const d of durations) {
    const elapsed = m.startTimer();
    clock.advance(d);
    m.observeCall('varlink', 'io.iommufd.Broker.List', 'ok', elapsed());
  }
  const text = m.render(SNAPSHOT);
  const bucket = (le: string): number => Number(sample(text,
    `iommufd_broker_request_duration_seconds_bucket{api="varlink",method="io.iommufd.Broker.List",le="${le}"}`));
  assert.equal(bucket('0.0001'), 1);
  assert.equal(bucket('0.00025'), 1);
  assert.equal(bucket('0.0005'), 2);
  assert.equal(bucket('0.0025'), 3);
  assert.equal(bucket('2.5'), 3);
  assert.equal(bucket('+Inf'), 4);
  assert.equal(sample(text, 'iommufd_broker_request_duration_seconds_count{api="varlink",method="io.iommufd.Broker.List"}'), '4');
  assert.ok(Math.abs(Number(sample(text, 'iommufd_broker_request_duration_seconds_sum{api="varlink",method="io.iommufd.Broker.List"}')) - 5.0024) < 1e-9);
  const bounds = text.split('\n').filter((l) => l.startsWith('iommufd_broker_request_duration_seconds_bucket{')).length;
  assert.equal(bounds, DURATION_BUCKETS.length + 1);
});

test('refusals before dispatch are counted by stage and reason', () => {
  const m = new Metrics();
  m.observeRefusal('message', 'org.varlink.service.InvalidParameter');
  m.observeRefusal('message', 'org.varlink.service.InvalidParameter');
  m.observeRefusal('connection', 'too-many-connections');
  const text = m.render(SNAPSHOT);
  assert.equal(sample(text, 'iommufd_broker_refused_total{stage="message",reason="org.varlink.service.InvalidParameter"}'), '2');
  assert.equal(sample(text, 'iommufd_broker_refused_total{stage="connection",reason="too-many-connections"}'), '1');
  assert.doesNotMatch(new Metrics().render(SNAPSHOT), /^iommufd_broker_refused_total\{/m, 'no series before the first refusal');
});

test('a negative or non-finite duration is refused, not recorded', () => {
  const m = new Metrics();
  assert.throws(() => m.observeCall('varlink', 'x', 'ok', -1), RangeError);
  assert.throws(() => m.observeCall('varlink', 'x', 'ok', Number.NaN), RangeError);
  assert.doesNotMatch(m.render(SNAPSHOT), /method="x"/);
});

test('label values are escaped: backslash, double quote and newline', () => {
  const m = new Metrics();
  m.observeCall('admin', 'a"b\\c\nd', 'ok', 0);
  assert.match(m.render(SNAPSHOT), /method="a\\"b\\\\c\\nd"/);
});

const PEER: ConnectionPeer = { pid: 1, uid: 0, gid: 0, groups: [], pidfd: undefined };
const STATUS_CALL = { kind: 'call', method: 'io.iommufd.Broker.Status', parameters: {}, oneway: false, more: false, unusedFds: [] } as const satisfies DecodedCall;

test('withMetrics counts answered and refused calls and passes both through unchanged', async () => {
  const clock = scriptedClock();
  const m = new Metrics({ now: clock.now });
  const ok = withMetrics(async () => { clock.advance(0.002); return { parameters: { fine: true } }; }, m);
  assert.deepEqual(await ok(STATUS_CALL, PEER), { parameters: { fine: true } });
  const refusal = new BrokerError('NoSuchLease', { lease: 'l-0000000000000000' });
  const refused = withMetrics(async () => { throw refusal; }, m);
  await assert.rejects(refused(STATUS_CALL, PEER), (e) => e === refusal);
  const bug = new TypeError('oops');
  const broken = withMetrics(async () => { throw bug; }, m);
  await assert.rejects(broken(STATUS_CALL, PEER), (e) => e === bug);
  const text = m.render(SNAPSHOT);
  const total = (outcome: string): string => sample(text, `iommufd_broker_requests_total{api="varlink",method="io.iommufd.Broker.Status",outcome="${outcome}"}`);
  assert.equal(total('ok'), '1');
  assert.equal(total('NoSuchLease'), '1');
  assert.equal(total('InternalError'), '1');
  assert.equal(sample(text, 'iommufd_broker_request_duration_seconds_bucket{api="varlink",method="io.iommufd.Broker.Status",le="0.001"}'), '2');
  assert.equal(sample(text, 'iommufd_broker_request_duration_seconds_bucket{api="varlink",method="io.iommufd.Broker.Status",le="0.0025"}'), '3');
});

test('outcomeOf names BrokerErrors and calls everything else InternalError', () => {
  assert.equal(outcomeOf(new BrokerError('BudgetExceeded', { requestedBytes: 1, availableBytes: 0, budgetBytes: 0 })), 'BudgetExceeded');
  assert.equal(outcomeOf(new Error('x')), 'InternalError');
  assert.equal(outcomeOf('a string'), 'InternalError');
});

/** promtool's verdict on a metrics text: exit status and what it printed. */
function promtool(text: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (r.error !== undefined) {
    assert.fail(`promtool could not run (${r.error.message}): install Debian's prometheus package (apt-get install prometheus)`);
  }
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

test('promtool check metrics accepts the output: empty, and with leases, requests and durations', () => {
  const empty = promtool(new Metrics().render({ status: status({ leases: 0 }), leases: [], journal: { records: 0, syncs: 0, compactions: 0, degraded: false } }));
  assert.deepEqual(empty, { status: 0, output: '' });
  const m = new Metrics();
  m.observeCall('varlink', 'io.iommufd.Broker.Open', 'ok', 0.0002);
  m.observeCall('varlink', 'io.iommufd.Broker.Resize', 'KernelRefused', 0.3);
  m.observeCall('admin', 'GET /v1/status', 'PermissionDenied', 0);
  m.observeRefusal('message', 'org.varlink.service.MethodNotFound');
  const full = promtool(m.render(SNAPSHOT));
  assert.deepEqual(full, { status: 0, output: '' });
});

test('promtool is a real check: it rejects a malformed line', () => {
  const bad = promtool(`${new Metrics().render(SNAPSHOT)}iommufd_broker_leases{oops 1\n`);
  assert.notEqual(bad.status, 0);
});

test('docs/ADMIN-API.md lists every metric family render() prints', () => {
  const doc = readFileSync(new URL('../../../../docs/ADMIN-API.md', import.meta.url), 'utf8');
  const m = new Metrics();
  m.observeCall('varlink', 'io.iommufd.Broker.Open', 'ok', 0);
  const families = [...m.render(SNAPSHOT).matchAll(/^# TYPE (\S+) /gm)].map((f) => f[1] ?? '');
  assert.ok(families.length >= 10);
  for (const f of families) assert.ok(doc.includes(`\`${f}\``), `${f} is documented`);
});

test('docs/ADMIN-API.md names every reason the Varlink server counts a refused connection under', () => {
  const doc = readFileSync(new URL('../../../../docs/ADMIN-API.md', import.meta.url), 'utf8');
  const row = doc.split('\n').find((l) => l.startsWith('| `iommufd_broker_refused_total`')) ?? '';
  const reasons = new Set(sourceFiles(['daemon/shell/varlink'])
    .flatMap((f) => [...f.text.matchAll(/reason: '([a-z]+(?:-[a-z]+)+)'/g)].map((m) => m[1] ?? '')));
  assert.ok(reasons.size >= 4, `found the reasons in the sources: ${[...reasons].join(', ')}`);
  for (const r of reasons) assert.ok(row.includes(`\`${r}\``), `refused_total's reason ${r} is documented`);
});
