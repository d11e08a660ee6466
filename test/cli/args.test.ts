// iommufdctl argument parsing: every command's happy path, and the mistakes that must be
// usage errors (exit 2) before anything contacts the broker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCommand, UsageError, type Command } from '../../cli/args.ts';
import { DEFAULT_SOCKET } from '../../protocol/address.ts';
import { DEFAULT_CALL_TIMEOUT_MS } from '../../client/defaults.ts';

const GiB = 1024 ** 3;
const LEASE = 'l-0123456789abcdef';

function usageError(argv: string[], pattern: RegExp): void {
  assert.throws(() => parseCommand(argv), (e: unknown) => {
    assert.ok(e instanceof UsageError, `expected a UsageError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return true;
  });
}

test('open: name and binary size, defaults for socket, json and timeout', () => {
  const c = parseCommand(['open', '--name', 'vm1', '--memory', '8G']);
  assert.deepEqual(c, {
    kind: 'open', hold: false,
    common: { socketPath: DEFAULT_SOCKET, json: false, timeoutMs: DEFAULT_CALL_TIMEOUT_MS },
    request: { name: 'vm1', memoryBytes: 8 * GiB },
  } satisfies Command);
});

test('open: every option, global options before or after the command', () => {
  const c = parseCommand(['--socket', '/tmp/b.sock', 'open', '--name', 'vm-2', '--memory', '1.5GiB',
    '--target-pid', '4242', '--request-id', 'req-7', '--hold', '--json', '--timeout', '2.5']);
  assert.deepEqual(c, {
    kind: 'open', hold: true, targetPid: 4242,
    common: { socketPath: '/tmp/b.sock', json: true, timeoutMs: 2500 },
    request: { name: 'vm-2', memoryBytes: 1.5 * GiB, requestId: 'req-7' },
  } satisfies Command);
});

test('resize, release, list, status', () => {
  assert.deepEqual(parseCommand(['resize', LEASE, '--memory', '10G']),
    { kind: 'resize', lease: LEASE, memoryBytes: 10 * GiB, common: { socketPath: DEFAULT_SOCKET, json: false, timeoutMs: DEFAULT_CALL_TIMEOUT_MS } });
  assert.deepEqual(parseCommand(['release', LEASE, '--json']),
    { kind: 'release', lease: LEASE, common: { socketPath: DEFAULT_SOCKET, json: true, timeoutMs: DEFAULT_CALL_TIMEOUT_MS } });
  assert.equal(parseCommand(['list']).kind, 'list');
  assert.equal(parseCommand(['status', '--socket', '/x']).kind, 'status');
});

test('exec: program and arguments after -- are taken verbatim, options included', () => {
  const c = parseCommand(['exec', '--name', 'vm1', '--memory', '4G', '--keep-fd', '5', '--keep-fd', '7', '--',
    'qemu-system-x86_64', '--name', 'guest', '-object', 'iommufd,id=iommufd0,fd={iommufd}', '--']);
  assert.equal(c.kind, 'exec');
  if (c.kind !== 'exec') return;
  assert.equal(c.program, 'qemu-system-x86_64');
  assert.deepEqual(c.args, ['--name', 'guest', '-object', 'iommufd,id=iommufd0,fd={iommufd}', '--']);
  assert.equal(c.substitute, true);
  assert.deepEqual(c.keepFds, [5, 7]);
  assert.deepEqual(c.request, { name: 'vm1', memoryBytes: 4 * GiB });
});

test('exec: {iommufd} is required unless --no-substitute', () => {
  usageError(['exec', '--name', 'vm1', '--memory', '1G', '--', 'qemu', '-m', '1G'], /no argument contains \{iommufd\}/);
  const c = parseCommand(['exec', '--name', 'vm1', '--memory', '1G', '--no-substitute', '--', 'qemu', '-m', '1G']);
  assert.equal(c.kind === 'exec' && c.substitute, false);
});

test('exec: needs a program after --, and keep-fd must be above 2', () => {
  usageError(['exec', '--name', 'vm1', '--memory', '1G'], /needs the program after '--'/);
  usageError(['exec', '--name', 'vm1', '--memory', '1G', '--'], /needs the program after '--'/);
  usageError(['exec', '--name', 'vm1', '--memory', '1G', '--keep-fd', '2', '--', 'q', '{iommufd}'], /--keep-fd '2'/);
  usageError(['exec', '--name', 'vm1', '--memory', '1G', '--keep-fd', 'x', '--', 'q', '{iommufd}'], /--keep-fd 'x'/);
});

test('pass: qmp socket, fdname and an optional target pid', () => {
  const c = parseCommand(['pass', '--qmp', '/run/vm1.qmp', '--fdname', 'iommufd0', '--name', 'vm1', '--memory', '2G']);
  assert.deepEqual(c, {
    kind: 'pass', qmpSocket: '/run/vm1.qmp', fdname: 'iommufd0', devices: [],
    common: { socketPath: DEFAULT_SOCKET, json: false, timeoutMs: DEFAULT_CALL_TIMEOUT_MS },
    request: { name: 'vm1', memoryBytes: 2 * GiB },
  } satisfies Command);
  usageError(['pass', '--fdname', 'x', '--name', 'vm1', '--memory', '2G'], /needs --qmp/);
  usageError(['pass', '--qmp', '/q', '--fdname', '0fd', '--name', 'vm1', '--memory', '2G'], /must not start with a digit/);
});

test('exec --device: canonical, distinct, each with its {vfio:ADDR} token and every token with its --device', () => {
  const c = parseCommand(['exec', '--name', 'vm1', '--memory', '1G', '--device', '00:03.0', '--device', 'ABCD:81:1F.7', '--',
    'qemu', '-object', 'iommufd,id=i0,fd={iommufd}', '-device', 'vfio-pci,iommufd=i0,fd={vfio:0000:00:03.0}',
    '-device', 'vfio-pci,iommufd=i0,fd={vfio:abcd:81:1f.7}']);
  assert.deepEqual(c.kind === 'exec' ? c.devices : undefined, ['0000:00:03.0', 'abcd:81:1f.7']);
  const base = ['exec', '--name', 'vm1', '--memory', '1G'];
  usageError([...base, '--device', '0000:00:03.0', '--', 'qemu', 'fd={iommufd}'], /--device 0000:00:03\.0 appears in no argument: put \{vfio:0000:00:03\.0\}/);
  usageError([...base, '--', 'qemu', 'fd={iommufd}', 'fd={vfio:00:03.0}'], /\{vfio:00:03\.0\} names no --device given \(none was\)/);
  usageError([...base, '--device', '00:04.0', '--', 'qemu', 'fd={iommufd}', 'fd={vfio:00:04.0}', 'fd={vfio:../../x}'], /\{vfio:\.\.\/\.\.\/x\} names no --device/);
  usageError([...base, '--device', '0000:00:03.0', '--device', '00:03.0', '--', 'q', '{iommufd}{vfio:00:03.0}'], /--device 0000:00:03\.0 is given twice/);
  usageError([...base, '--device', '/dev/vfio/devices/vfio0', '--', 'q', '{iommufd}'], /--device '\/dev\/vfio\/devices\/vfio0' is not a PCI address/);
  usageError([...base, '--device', '00:20.0', '--', 'q', '{iommufd}'], /is not a PCI address/);
  const nine = Array.from({ length: 9 }, (_, i) => ['--device', `00:0${i}.0`]).flat();
  usageError([...base, ...nine, '--no-substitute', '--', 'q'], /at most 8 --device per lease, got 9/);
  const plain = parseCommand([...base, '--device', '00:03.0', '--no-substitute', '--', 'qemu']);
  assert.deepEqual(plain.kind === 'exec' ? [plain.devices, plain.substitute] : undefined, [['0000:00:03.0'], false]);
  usageError(['open', '--name', 'vm1', '--memory', '1G', '--device', '00:03.0'], /option --device does not apply to 'open'/);
});

test('pass --device: each passed under vfio-ADDR, which --fdname may not take', () => {
  const c = parseCommand(['pass', '--qmp', '/q', '--fdname', 'iommufd0', '--name', 'vm1', '--memory', '2G', '--device', '00:03.0']);
  assert.deepEqual(c.kind === 'pass' ? c.devices : undefined, ['0000:00:03.0']);
  usageError(['pass', '--qmp', '/q', '--fdname', 'vfio-0000:00:03.0', '--name', 'vm1', '--memory', '2G', '--device', '00:03.0'],
    /--fdname vfio-0000:00:03\.0 is the name the device 0000:00:03\.0 is passed under/);
});

test('sizes: decimal units, fractions of a byte, zero and junk are usage errors naming the option', () => {
  usageError(['open', '--name', 'vm1', '--memory', '8GB'], /--memory '8GB'.*ambiguous/);
  usageError(['open', '--name', 'vm1', '--memory', '0.3'], /--memory '0.3'.*whole number of bytes/);
  usageError(['open', '--name', 'vm1', '--memory', '0'], /at least one byte/);
  usageError(['open', '--name', 'vm1', '--memory', 'lots'], /--memory 'lots'/);
  usageError(['open', '--name', 'vm1'], /needs --memory/);
});

test('names, lease ids, pids and timeouts are checked', () => {
  usageError(['open', '--name', '-vm', '--memory', '1G'], /.+/);
  usageError(['open', '--name', 'vm 1', '--memory', '1G'], /--name 'vm 1' is not a valid name/);
  usageError(['open', '--memory', '1G'], /needs --name/);
  usageError(['resize', 'l-123', '--memory', '1G'], /'l-123' is not a lease id/);
  usageError(['release'], /takes LEASE, got none/);
  usageError(['release', LEASE, LEASE], /takes LEASE/);
  usageError(['open', '--name', 'vm1', '--memory', '1G', '--target-pid', '0'], /--target-pid '0'/);
  usageError(['open', '--name', 'vm1', '--memory', '1G', '--target-pid', '12ab'], /--target-pid '12ab'/);
  usageError(['list', '--timeout', '0'], /--timeout '0'/);
  usageError(['list', '--timeout', '-1'], /.+/);
  usageError(['list', '--request-id', ''], /does not apply to 'list'/);
});

test('options of another command, unknown options and unknown commands are refused', () => {
  usageError(['list', '--memory', '1G'], /option --memory does not apply to 'list'/);
  usageError(['release', LEASE, '--hold'], /option --hold does not apply to 'release'/);
  usageError(['open', '--name', 'vm1', '--memory', '1G', '--frobnicate'], /frobnicate/);
  usageError(['launch'], /unknown command 'launch'/);
  usageError(['list', '--', 'x'], /'--' only applies to 'exec'/);
});

test('help: no command, help, help TOPIC and --help on a command', () => {
  assert.deepEqual(parseCommand([]), { kind: 'help' });
  assert.deepEqual(parseCommand(['help']), { kind: 'help' });
  assert.deepEqual(parseCommand(['help', 'pass']), { kind: 'help', topic: 'pass' });
  assert.deepEqual(parseCommand(['exec', '--help']), { kind: 'help', topic: 'exec' });
  assert.deepEqual(parseCommand(['-h']), { kind: 'help' });
});

test('a usage error remembers the command it was about', () => {
  assert.throws(() => parseCommand(['resize', LEASE]), (e: unknown) => e instanceof UsageError && e.command === 'resize');
  assert.throws(() => parseCommand(['open', '--bogus']), (e: unknown) => e instanceof UsageError && e.command === 'open');
});
