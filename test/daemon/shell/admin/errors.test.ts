// Admin API failures: a status for every broker error (and the documented table agrees), the
// Varlink names in every body, and unexpected failures logged but never leaked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { BrokerError, brokerErrorNames } from '../../../../protocol/errors.ts';
import { SysError } from '../../../../native/sys.ts';
import { PolicyError } from '../../../../daemon/shell/config.ts';
import { AdminErrorBody, brokerFailure, HTTP_STATUS, notFound, toFailure } from '../../../../daemon/shell/admin/errors.ts';

function capture(): { log: pino.Logger; text: () => string } {
  const lines: string[] = [];
  return { log: pino({ level: 'debug' }, { write: (l: string) => { lines.push(l); } }), text: () => lines.join('') };
}

test('every broker error has an HTTP status, and the module\'s documented table says the same', () => {
  const source = readFileSync(new URL('../../../../daemon/shell/admin/errors.ts', import.meta.url), 'utf8');
  const table = source.slice(source.indexOf('Status codes'), source.indexOf('- Anything that is not a known refusal'));
  assert.ok(table.length > 0, 'the header has its status table');
  for (const name of brokerErrorNames) {
    const status = HTTP_STATUS[name];
    assert.ok(status >= 400 && status < 600, `${name}: ${status}`);
    const at = table.search(new RegExp(`\\b${name}\\b`));
    assert.ok(at >= 0, `${name} is in the documented table`);
    const documented = /\b([45]\d\d)\b/.exec(table.slice(at))?.[1];
    assert.equal(Number(documented), status, `${name}: documented ${documented}, code ${status}`);
  }
  assert.deepEqual(Object.keys(HTTP_STATUS).sort(), [...brokerErrorNames].sort());
});

test('a BrokerError becomes its qualified Varlink name, its parameters, and its status', () => {
  const f = brokerFailure(new BrokerError('NoSuchLease', { lease: 'l-0123456789abcdef' }));
  assert.deepEqual(f, { status: 404, body: { error: 'io.iommufd.Broker.NoSuchLease', parameters: { lease: 'l-0123456789abcdef' } }, outcome: 'NoSuchLease' });
  assert.equal(AdminErrorBody.safeParse(f.body).success, true);
  const k = toFailure(new BrokerError('KernelRefused', { operation: 'prlimit', errno: 'EPERM', reason: 'r' }), capture().log);
  assert.deepEqual([k.status, k.body.error, k.body.parameters['errno']], [502, 'io.iommufd.Broker.KernelRefused', 'EPERM']);
});

test('a rejected policy file is 422 PolicyRejected naming the file, key and reason', () => {
  const f = toFailure(new PolicyError('/etc/iommufd-broker/policy.toml', 'limits.budget', 'the unit GB is ambiguous'), capture().log);
  assert.deepEqual(f, {
    status: 422,
    body: { error: 'io.iommufd.Admin.PolicyRejected', parameters: { source: '/etc/iommufd-broker/policy.toml', key: 'limits.budget', reason: 'the unit GB is ambiguous' } },
    outcome: 'PolicyRejected',
  });
});

test('fastify\'s own 4xx refusals become InvalidParameter with their status', () => {
  const err = Object.assign(new Error('Unsupported Media Type: text/plain'), { statusCode: 415 });
  const f = toFailure(err, capture().log);
  assert.deepEqual(f, { status: 415, body: { error: 'org.varlink.service.InvalidParameter', parameters: { parameter: 'body', reason: 'Unsupported Media Type: text/plain' } }, outcome: 'InvalidParameter' });
});

test('anything else is 500 InternalError: the log has the details, the body only a safe reason', () => {
  const bug = capture();
  const f = toFailure(new TypeError('cannot read x of undefined at /secret/path'), bug.log);
  assert.deepEqual(f, { status: 500, body: { error: 'io.iommufd.Broker.InternalError', parameters: { reason: 'unexpected failure; the broker log has the details' } }, outcome: 'InternalError' });
  assert.match(bug.text(), /secret\/path/);
  const sys = toFailure(new SysError('prlimit', 1, 'pid 4242'), capture().log);
  assert.deepEqual(sys.body.parameters, { reason: 'prlimit failed: EPERM' });
  const weird = toFailure(Object.assign(new Error('x'), { statusCode: 502 }), capture().log);
  assert.equal(weird.status, 500, 'a 5xx from elsewhere is not passed through');
});

test('an unknown route is MethodNotFound naming method and path', () => {
  assert.deepEqual(notFound('GET', '/v2/x'), { status: 404, body: { error: 'org.varlink.service.MethodNotFound', parameters: { method: 'GET /v2/x' } }, outcome: 'MethodNotFound' });
});
