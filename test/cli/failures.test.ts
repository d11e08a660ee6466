// Exit codes are a contract (0 ok, 1 refused, 2 usage, 3 unreachable, 4 internal); every broker
// error is explained; --json failures carry a stable name and the parameters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../cli/args.ts';
import {
  BROKER_ERROR_EXPLANATIONS, EXIT_INTERNAL, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, exitCodeFor, failureJson, failureText,
} from '../../cli/failures.ts';
import { BrokerClientError, VarlinkServiceError, type ClientErrorName } from '../../client/errors.ts';
import { ProgramNotFound } from '../../cli/exec-program.ts';
import { HotplugError } from '../../client/memory-hotplug-error.ts';
import { SizingError } from '../../client/qmp-sizing.ts';
import { QmpError, type QmpErrorName } from '../../client/qmp.ts';
import { SysError } from '../../native/sys.ts';
import { BrokerError, brokerErrorNames } from '../../protocol/errors.ts';

const budget = new BrokerError('BudgetExceeded', { requestedBytes: 10, availableBytes: 5, budgetBytes: 20 });

test('the exit code of each kind of failure', () => {
  assert.equal(exitCodeFor(budget), EXIT_REFUSED);
  assert.equal(exitCodeFor(new VarlinkServiceError('org.varlink.service.InvalidParameter', { parameter: 'name' })), EXIT_REFUSED);
  assert.equal(exitCodeFor(new UsageError('bad')), EXIT_USAGE);
  assert.equal(exitCodeFor(new ProgramNotFound('qemu', 'not found')), EXIT_USAGE);
  const client: Record<ClientErrorName, number> = {
    BrokerUnreachable: EXIT_UNREACHABLE, ConnectionLost: EXIT_UNREACHABLE, Timeout: EXIT_UNREACHABLE,
    ProtocolViolation: EXIT_INTERNAL, ClientClosed: EXIT_INTERNAL,
  };
  for (const [name, code] of Object.entries(client)) {
    assert.equal(exitCodeFor(new BrokerClientError(name as ClientErrorName, '/s', 'm')), code, name);
  }
  const qmp: Record<QmpErrorName, number> = {
    QmpCommandFailed: EXIT_REFUSED, QmpUnreachable: EXIT_UNREACHABLE, QmpConnectionLost: EXIT_UNREACHABLE,
    QmpTimeout: EXIT_UNREACHABLE, QmpEventTimeout: EXIT_UNREACHABLE, QmpProtocolViolation: EXIT_INTERNAL,
  };
  for (const [name, code] of Object.entries(qmp)) {
    assert.equal(exitCodeFor(new QmpError(name as QmpErrorName, '/q', 'm')), code, name);
  }
  assert.equal(exitCodeFor(new SysError('close', 9)), EXIT_INTERNAL);
  assert.equal(exitCodeFor(new TypeError('bug')), EXIT_INTERNAL);
  assert.equal(exitCodeFor('a string'), EXIT_INTERNAL);
});

test('every broker error name has a non-empty explanation', () => {
  assert.deepEqual(Object.keys(BROKER_ERROR_EXPLANATIONS).sort(), [...brokerErrorNames].sort());
  for (const name of brokerErrorNames) assert.ok(BROKER_ERROR_EXPLANATIONS[name].length > 20, name);
});

test('a refusal prints the error name, its parameters and what it means', () => {
  const text = failureText(budget);
  assert.match(text, /^iommufdctl: the broker refused: BudgetExceeded: requestedBytes=10 B, availableBytes=5 B, budgetBytes=20 B\n/);
  assert.ok(text.includes(BROKER_ERROR_EXPLANATIONS.BudgetExceeded));
  assert.match(failureText(new VarlinkServiceError('org.varlink.service.MethodNotFound', { method: 'io.iommufd.Broker.X' })),
    /MethodNotFound: method=io.iommufd.Broker.X\n.*older version/s);
  assert.match(failureText(new TypeError('boom')), /^iommufdctl: internal error: boom\n$/);
});

test('--json failures: qualified names for the broker, stable names for the client', () => {
  assert.deepEqual(failureJson(budget), {
    error: 'io.iommufd.Broker.BudgetExceeded',
    parameters: { requestedBytes: 10, availableBytes: 5, budgetBytes: 20 },
    message: budget.message,
  });
  const unreachable = new BrokerClientError('BrokerUnreachable', '/run/x.sock', 'no socket', { errno: 'ENOENT' });
  assert.deepEqual(failureJson(unreachable), { error: 'BrokerUnreachable', parameters: { socket: '/run/x.sock', errno: 'ENOENT' }, message: 'no socket' });
  assert.deepEqual(failureJson(new QmpError('QmpCommandFailed', '/q', 'refused', 'GenericError')),
    { error: 'QmpCommandFailed', parameters: { socket: '/q', class: 'GenericError' }, message: 'refused' });
  assert.deepEqual(failureJson(new SysError('pidfd_open', 3)).parameters, { syscall: 'pidfd_open', errno: 'ESRCH' });
  assert.equal(failureJson(new UsageError('x')).error, 'UsageError');
});

test('sizes in a refusal are printed as everywhere else (binary units), --json keeps the bytes', () => {
  const big = new BrokerError('BudgetExceeded', { requestedBytes: 4 * 1024 ** 3 + 65_536 * 1024, availableBytes: 1024 ** 3, budgetBytes: 1_022_361_600 });
  assert.match(failureText(big), /requestedBytes=4160 MiB, availableBytes=1 GiB, budgetBytes=975 MiB\n/);
  assert.deepEqual(failureJson(big).parameters, big.parameters);
});

test('target-not-self says who may pass to whose QEMU', () => {
  const text = failureText(new BrokerError('PermissionDenied', { rule: 'target-not-self', reason: 'uid 1000 is not a manager' }));
  assert.match(text, /only a manager .* may open for another process, even a QEMU of your own uid: start QEMU with 'iommufdctl exec'/);
  assert.doesNotMatch(failureText(new BrokerError('PermissionDenied', { rule: 'open-users', reason: 'x' })), /even a QEMU of your own uid/);
});

test('a hotplug failure exits as its cause, names the step, what was undone and where the limit is', () => {
  const qemuRefused = new QmpError('QmpCommandFailed', '/q', 'QEMU refused device_add: no slot', 'GenericError');
  const e = new HotplugError('HotplugFailed', 'device-add', 'l-0123456789abcdef', qemuRefused.message,
    { limit: 'unchanged', undone: ['object-del dimm-0-mem'], undoFailures: ['resize: gone'], cause: qemuRefused });
  assert.equal(exitCodeFor(e), EXIT_REFUSED);
  assert.equal(exitCodeFor(new HotplugError('UnplugFailed', 'device-deleted', 'l-0123456789abcdef', 'x',
    { limit: 'unchanged', cause: new QmpError('QmpEventTimeout', '/q', 'late') })), EXIT_UNREACHABLE);
  assert.equal(exitCodeFor(new HotplugError('UnplugFailed', 'lookup', 'l-0123456789abcdef', 'no DIMM', { limit: 'unchanged' })), EXIT_REFUSED);
  assert.match(failureText(e), /^iommufdctl: HotplugFailed at step device-add .*no slot\n  undone: object-del dimm-0-mem\n  NOT undone \(finish by hand\): resize: gone\n  the lease's limit is where it was before\n$/);
  assert.match(failureText(new HotplugError('HotplugFailed', 'device-add', 'l-0123456789abcdef', 'x', { limit: 'raised' })), /LEFT RAISED/);
  assert.deepEqual(failureJson(e).parameters, {
    step: 'device-add', lease: 'l-0123456789abcdef', limit: 'unchanged', undone: ['object-del dimm-0-mem'], undoFailures: ['resize: gone'], cause: 'QmpCommandFailed',
  });
  assert.equal(failureJson(e).error, 'HotplugFailed');
  assert.equal(exitCodeFor(new SizingError('not understood')), EXIT_INTERNAL);
  assert.deepEqual(failureJson(new SizingError('not understood')), { error: 'SizingFailed', parameters: {}, message: 'not understood' });
});

test('QEMU\'s words in a failure are printed with control characters escaped: a guest that owns QEMU cannot forge lines', () => {
  // A QEMU error desc that would clear the line and print a false "where the limit is" line.
  const forged = '\u001b[2K\r  the lease\'s limit was lowered\nsecond line\u009b1A';
  const qemuRefused = new QmpError('QmpCommandFailed', '/q', `QEMU refused device_add: ${forged}`, 'GenericError');
  const e = new HotplugError('HotplugFailed', 'device-add', 'l-0123456789abcdef', qemuRefused.message,
    { limit: 'raised', undone: [], undoFailures: [`object-del dimm-0-mem: ${forged}`], cause: qemuRefused });
  for (const error of [qemuRefused, e, new SizingError(forged), new Error(forged)]) {
    const text = failureText(error);
    // eslint-disable-next-line no-control-regex
    assert.doesNotMatch(text.replace(/\n(?= |$)/g, ''), /[\u0000-\u001f\u007f-\u009f]/, `${error.name}: ${JSON.stringify(text)}`);
    assert.match(text, /\\x1b\[2K\\x0d {2}the lease's limit was lowered\\x0asecond line\\x9b1A/);
  }
  assert.match(failureText(e), /LEFT RAISED/);
});
