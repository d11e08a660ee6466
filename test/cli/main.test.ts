// runCli in-process against a scripted broker: what each command prints (human and --json),
// and the exit-code contract (0 ok, 1 refused, 2 usage, 3 unreachable, 4 internal).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { runCli } from '../../cli/main.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { captureIo } from './io-capture.ts';
import { FakeBroker, wireLease, wireStatus, type Script } from '../client/fake-broker.ts';
import { memfd } from '../../native/sys.ts';

const GiB = 1024 ** 3;
const LEASE = 'l-0123456789abcdef';

interface Run { code: number; stdout: string; stderr: string; fake: FakeBroker }

/** Runs iommufdctl against a fresh fake broker; checks that nothing leaked. */
async function cli(argv: string[], script: Script, onHold?: () => void): Promise<Run> {
  const before = openFds();
  const fake = FakeBroker.start(script);
  const cap = captureIo(onHold === undefined ? {} : { onHold });
  try {
    const code = await runCli([...argv, '--socket', fake.socket], cap.io);
    assert.deepEqual(fake.rejected, []);
    return { code, stdout: cap.stdout(), stderr: cap.stderr(), fake };
  } finally {
    fake.close();
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(leakedSince(before), [], 'no fd leaked');
  }
}

const openReply: Script = () => ({ reply: { lease: wireLease(), fileDescriptor: 0 }, fds: [memfd('fake-iommufd')] });

test('status: a readable block with bars (Status, then List), or the Status reply alone as JSON', async () => {
  const human = await cli(['status'], (call) => (call.method === 'io.iommufd.Broker.List'
    ? { reply: { leases: [wireLease({ pinnedBytes: 512 * 1024 ** 2 })] } } : { reply: wireStatus(2) }));
  assert.equal(human.code, 0);
  assert.deepEqual(human.fake.calls.map((c) => c.method), ['io.iommufd.Broker.Status', 'io.iommufd.Broker.List']);
  assert.match(human.stdout, /^budget: +0 B used of 8 GiB \(8 GiB free\)$/m);
  assert.match(human.stdout, /^budget use: +\[-{30}\] +0%$/m);
  assert.match(human.stdout, /^leases: +2$/m);
  assert.match(human.stdout, /^l-0123456789abcdef +vm1 +\[#{7}-{23}\] +25% +512 MiB of 2 GiB$/m);
  assert.match(human.stdout, /^\(1 more lease of other users not shown\)$/m);
  const json = await cli(['status', '--json'], () => ({ reply: wireStatus(2) }));
  assert.equal(json.code, 0);
  assert.deepEqual(json.fake.calls.map((c) => c.method), ['io.iommufd.Broker.Status']);
  assert.deepEqual(JSON.parse(json.stdout), wireStatus(2));
});

test('list: a table, or JSON', async () => {
  const human = await cli(['list'], () => ({ reply: { leases: [wireLease()] } }));
  assert.equal(human.code, 0);
  assert.match(human.stdout, /^LEASE +NAME .*\nl-0123456789abcdef +vm1 +\d+ +0 +1 GiB +2 GiB +- +simulated /);
  const json = await cli(['list', '--json'], () => ({ reply: { leases: [wireLease()] } }));
  assert.deepEqual(JSON.parse(json.stdout), { leases: [wireLease()] });
});

test('resize and release send what was typed and say what happened', async () => {
  const resized = await cli(['resize', LEASE, '--memory', '10G'],
    () => ({ reply: { lease: wireLease({ memoryBytes: 10 * GiB, limitBytes: 11 * GiB }), previousLimitBytes: 2 * GiB } }));
  assert.equal(resized.code, 0);
  assert.deepEqual(resized.fake.calls.map((c) => c.parameters), [{ lease: LEASE, memoryBytes: 10 * GiB }]);
  assert.match(resized.stdout, /changed from 2 GiB to 11 GiB/);
  const released = await cli(['release', LEASE, '--json'], () => ({ reply: { limitRestored: true } }));
  assert.equal(released.code, 0);
  assert.deepEqual(JSON.parse(released.stdout), { limitRestored: true });
  assert.deepEqual(released.fake.calls.map((c) => c.method), ['io.iommufd.Broker.Release']);
});

test('open: prints the lease, closes the FD, and says the lease on itself ends with it', async () => {
  const r = await cli(['open', '--name', 'vm1', '--memory', '1G', '--request-id', 'x1'], openReply);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^lease: +l-0123456789abcdef$/m);
  assert.match(r.stderr, /target is iommufdctl itself .* ends as iommufdctl exits/);
  assert.deepEqual(r.fake.calls[0]?.parameters, { name: 'vm1', memoryBytes: GiB, requestId: 'x1' });
});

test('open --hold keeps the FD open until released, then closes it', async () => {
  let heldDuringWait = false;
  const r = await cli(['open', '--name', 'vm1', '--memory', '1G', '--hold', '--json'], openReply, () => {
    heldDuringWait = [...openFds().values()].some((t) => t.includes('memfd:fake-iommufd'));
  });
  assert.equal(r.code, 0);
  assert.ok(heldDuringWait, 'the FD was open while holding');
  const printed = JSON.parse(r.stdout) as { lease: { id: string }; fd: number; pid: number };
  assert.equal(printed.lease.id, LEASE);
  assert.equal(printed.pid, process.pid);
  assert.match(r.stderr, /holding the iommufd FD as fd \d+ .*\nSIGTERM: closing the FD/);
});

test('open --target-pid sends a pidfd for that process', async () => {
  const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    const pid = sleeper.pid;
    assert.ok(pid !== undefined);
    const r = await cli(['open', '--name', 'vm1', '--memory', '1G', '--target-pid', String(pid)],
      () => ({ reply: { lease: wireLease({ pid }), fileDescriptor: 0 }, fds: [memfd('fake-iommufd')] }));
    assert.equal(r.code, 0);
    assert.deepEqual(r.fake.calls[0]?.fdPids, [pid]);
    assert.equal(r.fake.calls[0]?.parameters['targetPidFileDescriptor'], 0);
    assert.match(r.stderr, new RegExp(`lease on pid ${pid} stays`));
  } finally {
    sleeper.kill('SIGKILL');
    await once(sleeper, 'exit');
  }
});

test('a refusal exits 1 with the error name, its parameters and an explanation (or JSON on stderr)', async () => {
  const refuse: Script = () => ({ error: 'io.iommufd.Broker.BudgetExceeded', parameters: { requestedBytes: 9 * GiB, availableBytes: GiB, budgetBytes: 10 * GiB } });
  const human = await cli(['open', '--name', 'vm1', '--memory', '8G'], refuse);
  assert.equal(human.code, 1);
  assert.equal(human.stdout, '');
  assert.match(human.stderr, /the broker refused: BudgetExceeded: requestedBytes=9 GiB, availableBytes=1 GiB, budgetBytes=10 GiB\n  .*budget/);
  const json = await cli(['open', '--name', 'vm1', '--memory', '8G', '--json'], refuse);
  assert.equal(json.code, 1);
  assert.equal(JSON.parse(json.stderr).error, 'io.iommufd.Broker.BudgetExceeded');
  const service = await cli(['list'], () => ({ error: 'org.varlink.service.MethodNotFound', parameters: { method: 'io.iommufd.Broker.List' } }));
  assert.equal(service.code, 1);
});

test('usage errors exit 2 without contacting the broker; help exits 0', async () => {
  const r = await cli(['resize', LEASE, '--memory', '8GB'], () => 'hang');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--memory '8GB'.*ambiguous.*\nusage: iommufdctl resize LEASE \(--memory SIZE \| --qmp SOCKET --size-from-qmp\)/s);
  assert.equal(r.fake.calls.length, 0);
  const help = captureIo();
  assert.equal(await runCli(['help', 'exec'], help.io), 0);
  assert.match(help.stdout(), /exec --name NAME --memory SIZE/);
  const bad = captureIo();
  assert.equal(await runCli(['help', 'nonsense'], bad.io), 2);
});

test('an unreachable broker exits 3, naming the socket and what to check', async () => {
  const cap = captureIo();
  assert.equal(await runCli(['status', '--socket', '/nonexistent/broker.sock'], cap.io), 3);
  assert.match(cap.stderr(), /no socket at \/nonexistent\/broker.sock: is iommufd-broker running/);
  const json = captureIo();
  assert.equal(await runCli(['list', '--json', '--socket', '/nonexistent/b.sock'], json.io), 3);
  assert.deepEqual(JSON.parse(json.stderr()).parameters, { socket: '/nonexistent/b.sock', errno: 'ENOENT' });
});

test('a broker that never answers exits 3 once --timeout passes; a broken reply exits 4', async () => {
  const silent = await cli(['list', '--timeout', '0.05'], () => 'hang');
  assert.equal(silent.code, 3);
  assert.match(silent.stderr, /got no reply from the broker at .* within 50 ms/);
  const broken = await cli(['list'], () => ({ reply: { nonsense: true } }));
  assert.equal(broken.code, 4);
  assert.match(broken.stderr, /not valid.*\n  iommufdctl and the broker disagree on the protocol/s);
});
