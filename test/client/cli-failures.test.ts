// Exit codes are a contract (0 ok, 1 refused, 2 usage, 3 unreachable, 4 internal); every broker
// error is explained; --json failures carry a stable name and the parameters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../client/cli-args.ts';
import {
  BROKER_ERROR_EXPLANATIONS, EXIT_INTERNAL, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, exitCodeFor, failureJson, failureText,
} from '../../client/cli-failures.ts';
import { BrokerClientError, VarlinkServiceError, type ClientErrorName } from '../../client/client-errors.ts';
import { ProgramNotFound } from '../../client/exec-program.ts';
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
  assert.match(text, /^iommufdctl: the broker refused: BudgetExceeded: requestedBytes=10, availableBytes=5, budgetBytes=20\n/);
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
