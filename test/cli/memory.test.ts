// runCli in-process for the memory commands (hotplug, unplug, measure) and --size-from-qmp on
// pass and resize, against a scripted broker and a scripted QEMU: what is asked, what is
// printed, the exit codes, and that QMP is reached before the broker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseCommand, UsageError } from '../../cli/args.ts';
import { runCli } from '../../cli/main.ts';
import { PINNED_MARGIN_BYTES } from '../../client/qmp-sizing.ts';
import { memfd } from '../../native/sys.ts';
import { DEFAULT_SOCKET } from '../../protocol/address.ts';
import { DEFAULT_CALL_TIMEOUT_MS } from '../../client/defaults.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { captureIo } from './io-capture.ts';
import { FakeBroker, wireLease, type Script } from '../client/fake-broker.ts';
import { FakeQmp, type QmpScript } from '../client/fake-qmp.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const LEASE = 'l-0123456789abcdef';
const ESTIMATE = 82_624 * KiB + PINNED_MARGIN_BYTES;
const fixture = (name: string): string => readFileSync(join(import.meta.dirname, '..', 'client', 'fixtures', `qemu-7.2-${name}.txt`), 'utf8');

interface Run { code: number; stdout: string; stderr: string; broker: FakeBroker; qmp: FakeQmp }

async function cli(argv: string[], brokerScript: Script, qmpScript: QmpScript, qmpSocket?: string): Promise<Run> {
  const before = openFds();
  const broker = FakeBroker.start(brokerScript);
  const qmp = FakeQmp.start(qmpScript);
  const cap = captureIo();
  try {
    const code = await runCli([...argv.map((a) => a === 'QMP' ? qmpSocket ?? qmp.socket : a), '--socket', broker.socket], cap.io);
    assert.deepEqual(broker.rejected, []);
    return { code, stdout: cap.stdout(), stderr: cap.stderr(), broker, qmp };
  } finally {
    broker.close();
    qmp.close();
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(leakedSince(before), [], 'no fd leaked');
  }
}

/** A broker holding one lease of `memory` with 1 GiB of overhead (or `overhead`). */
function leaseBroker(memory: number, overhead = GiB): Script {
  let current = memory;
  return (call) => {
    if (call.method === 'io.iommufd.Broker.List') return { reply: { leases: [wireLease({ memoryBytes: current, limitBytes: current + overhead })] } };
    if (call.method === 'io.iommufd.Broker.Open') {
      current = call.parameters['memoryBytes'] as number;
      return { reply: { lease: wireLease({ memoryBytes: current, limitBytes: current + overhead }), fileDescriptor: 0 }, fds: [memfd('fake-iommufd')] };
    }
    const previousLimitBytes = current + overhead;
    current = call.parameters['memoryBytes'] as number;
    return { reply: { lease: wireLease({ memoryBytes: current, limitBytes: current + overhead }), previousLimitBytes } };
  };
}

const sizingQemu: QmpScript = (c) => {
  if (c.execute === 'human-monitor-command') {
    return { return: fixture(c.arguments['command-line'] === 'info mtree -f' ? 'q35-running.mtree' : 'q35-running.ramblock') };
  }
  if (c.execute === 'query-memory-size-summary') return { return: { 'base-memory': 64 * MiB, 'plugged-memory': 0 } };
  return { return: {} };
};

const COMMON = { socketPath: DEFAULT_SOCKET, json: false, timeoutMs: DEFAULT_CALL_TIMEOUT_MS };

const methods = (r: Run): string[] => r.broker.calls.map((c) => c.method.replace('io.iommufd.Broker.', ''));

test('hotplug: raises, plugs, and prints what was added and the limit change', async () => {
  const r = await cli(['hotplug', LEASE, '--qmp', 'QMP', '--memory', '64M', '--id', 'mem1'], leaseBroker(GiB), () => ({ return: {} }));
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(methods(r), ['List', 'Resize']);
  assert.deepEqual(r.qmp.calls.map((c) => c.execute), ['object-add', 'device_add']);
  assert.match(r.stdout, /^added 64 MiB DIMM mem1 \(backend mem1-mem\)\nlimit of l-0123456789abcdef \(pid \d+\) changed from 2 GiB to 2112 MiB\n/);
  const json = await cli(['hotplug', LEASE, '--qmp', 'QMP', '--memory', '64M', '--json'], leaseBroker(GiB), (c) => c.execute === 'query-memory-devices' ? { return: [] } : { return: {} });
  assert.deepEqual((JSON.parse(json.stdout) as { dimmId: string }).dimmId, 'dimm-0');
});

test('hotplug: a QEMU refusal exits 1 with the step, what was undone and where the limit is', async () => {
  const r = await cli(['hotplug', LEASE, '--qmp', 'QMP', '--memory', '64M', '--id', 'mem1'], leaseBroker(GiB),
    (c) => c.execute === 'device_add' ? { error: { class: 'GenericError', desc: 'no free slots' } } : { return: {} });
  assert.equal(r.code, 1);
  assert.deepEqual(r.broker.calls.map((c) => c.parameters['memoryBytes']), [undefined, GiB + 64 * MiB, GiB]);
  assert.match(r.stderr, /HotplugFailed at step device-add .*QEMU refused device_add: no free slots .*\n  undone: object-del mem1-mem\n  undone: resize .*\n  the lease's limit is where it was before\n$/);
});

test('hotplug/unplug: an unreachable QEMU exits 3 before the broker is asked', async () => {
  for (const argv of [['hotplug', LEASE, '--qmp', 'QMP', '--memory', '64M'], ['unplug', LEASE, '--qmp', 'QMP', '--id', 'dimm-0']]) {
    const r = await cli(argv, leaseBroker(GiB), () => ({ return: {} }), '/nonexistent/qmp.sock');
    assert.equal(r.code, 3);
    assert.deepEqual(r.broker.calls, []);
  }
});

const withDimm: QmpScript = (c) => c.execute === 'query-memory-devices'
  ? { return: [{ type: 'dimm', data: { id: 'dimm-0', size: 64 * MiB, memdev: '/objects/dimm-0-mem' } }] }
  : c.execute === 'device_del' ? { return: {}, eventsAfter: [{ event: 'DEVICE_DELETED', data: { device: 'dimm-0' } }] } : { return: {} };

test('unplug: lowers after DEVICE_DELETED and object-del; without the event in --timeout, exits 3 and lowers nothing', async () => {
  const ok = await cli(['unplug', LEASE, '--qmp', 'QMP', '--id', 'dimm-0'], leaseBroker(GiB + 64 * MiB), withDimm);
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(ok.qmp.calls.map((c) => c.execute), ['query-memory-devices', 'device_del', 'object-del']);
  assert.match(ok.stdout, /^removed 64 MiB DIMM dimm-0 \(backend dimm-0-mem\)\nlimit of .* changed from 2112 MiB to 2 GiB\n/);
  const late = await cli(['unplug', LEASE, '--qmp', 'QMP', '--id', 'dimm-0', '--timeout', '0.05'], leaseBroker(GiB + 64 * MiB),
    (c) => c.execute === 'device_del' ? { return: {} } : withDimm(c));
  assert.equal(late.code, 3);
  assert.deepEqual(methods(late), ['List']);
  assert.match(late.stderr, /UnplugFailed at step device-deleted .*the limit was not lowered\n  the lease's limit is where it was before\n$/);
});

test('measure: the regions, what is mapped now and the estimate, without the broker', async () => {
  const r = await cli(['measure', '--qmp', 'QMP'], leaseBroker(GiB), sizingQemu);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.broker.calls, []);
  assert.match(r.stdout, /^REGION\s+MAPPED NOW\s+RAM BLOCKS\s+COUNTED\n/);
  assert.match(r.stdout, /^vga\.vram\s+16 MiB\s+16 MiB\s+16 MiB$/m);
  assert.match(r.stdout, /^mapped now: 80.125 MiB \(what VFIO would pin at this moment\)$/m);
  assert.match(r.stdout, /^estimate:\s+83648 KiB /m);
  const json = await cli(['measure', '--qmp', 'QMP', '--json'], leaseBroker(GiB), sizingQemu);
  assert.equal((JSON.parse(json.stdout) as { estimateBytes: number }).estimateBytes, ESTIMATE);
});

test('pass --size-from-qmp opens with the estimate; the broker\'s overhead on top is noted', async () => {
  const r = await cli(['pass', '--qmp', 'QMP', '--fdname', 'iommufd0', '--name', 'vm1', '--size-from-qmp'], leaseBroker(0), sizingQemu);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.broker.calls[0]?.parameters['memoryBytes'], ESTIMATE);
  assert.deepEqual(r.qmp.calls.map((c) => c.execute), ['human-monitor-command', 'human-monitor-command', 'query-memory-size-summary', 'getfd']);
  assert.match(r.stderr, /^note: limit 1132224 KiB = the 83648 KiB QEMU will pin \(sized from QMP\) \+ 1 GiB of the broker's overhead; .*limits\.overhead = 0/m);
});

test('resize --qmp --size-from-qmp resizes to the estimate; with overhead 0 nothing is noted', async () => {
  const r = await cli(['resize', LEASE, '--qmp', 'QMP', '--size-from-qmp'], leaseBroker(GiB, 0), sizingQemu);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.broker.calls.map((c) => c.parameters), [{ lease: LEASE, memoryBytes: ESTIMATE }]);
  assert.match(r.stdout, /changed from 1 GiB to 83648 KiB/);
  assert.equal(r.stderr, '');
});

test('memory options: usage errors before anything is contacted', () => {
  const bad = (argv: string[], pattern: RegExp): void => assert.throws(() => parseCommand(argv), (e: unknown) => e instanceof UsageError && pattern.test(e.message));
  bad(['pass', '--qmp', '/q', '--fdname', 'f', '--name', 'vm1', '--memory', '1G', '--size-from-qmp'], /--memory SIZE or --size-from-qmp, not both/);
  bad(['pass', '--qmp', '/q', '--fdname', 'f', '--name', 'vm1'], /needs --memory/);
  bad(['resize', LEASE, '--qmp', '/q', '--memory', '1G'], /--qmp applies to resize only with --size-from-qmp/);
  bad(['resize', LEASE, '--size-from-qmp'], /needs --qmp/);
  bad(['hotplug', LEASE, '--qmp', '/q'], /needs --memory/);
  bad(['hotplug', LEASE, '--qmp', '/q', '--memory', '1G', '--id', '1bad'], /--id '1bad' is not a QEMU id/);
  bad(['hotplug', LEASE, '--qmp', '/q', '--memory', '1G', '--node', '-1'], /--node|Unknown|ambiguous/);
  bad(['unplug', LEASE, '--qmp', '/q'], /needs --id/);
  bad(['measure'], /needs --qmp/);
  bad(['measure', '--qmp', '/q', '--memory', '1G'], /does not apply/);
  assert.deepEqual(parseCommand(['pass', '--qmp', '/q', '--fdname', 'f', '--name', 'vm1', '--size-from-qmp', '--request-id', 'r']),
    { kind: 'pass', common: COMMON, request: { name: 'vm1', sizeFromQmp: true, requestId: 'r' }, qmpSocket: '/q', fdname: 'f', devices: [] });
  assert.deepEqual(parseCommand(['hotplug', LEASE, '--qmp', '/q', '--memory', '1G', '--id', 'm.1', '--node', '1']),
    { kind: 'hotplug', common: COMMON, lease: LEASE, qmpSocket: '/q', sizeBytes: GiB, dimmId: 'm.1', node: 1 });
});
