// Failures the client reports besides the broker's refusals: stable names, and advice for an
// unreachable broker that names the socket and what to check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BrokerClientError, unreachableAdvice, VarlinkServiceError } from '../../client/errors.ts';

test('each connect() failure gets advice naming the socket', () => {
  const s = '/run/iommufd-broker/broker.sock';
  assert.match(unreachableAdvice(s, 'ENOENT'), /no socket at \/run\/iommufd-broker\/broker.sock: is iommufd-broker running.*--socket/);
  assert.match(unreachableAdvice(s, 'ECONNREFUSED'), /nothing is accepting on .*broker.sock/);
  assert.match(unreachableAdvice(s, 'EACCES'), /not allowed to connect to .*broker.sock \(EACCES\).*group/);
  assert.match(unreachableAdvice(s, 'EAGAIN'), /backlog full/);
  assert.match(unreachableAdvice(s, 'ENAMETOOLONG'), /too long/);
  assert.match(unreachableAdvice(s, 'ECONNREFUSED', true), /exists but is not a socket \(ECONNREFUSED\)/);
  assert.equal(unreachableAdvice(s, 'EIO'), `cannot connect to ${s}: EIO`);
});

test('errors keep their stable name, socket and errno', () => {
  const cause = new Error('low level');
  const e = new BrokerClientError('Timeout', '/s', 'too slow', { errno: 'ETIMEDOUT', cause });
  assert.equal(e.name, 'BrokerClientError');
  assert.equal(e.errorName, 'Timeout');
  assert.equal(e.socketPath, '/s');
  assert.equal(e.errno, 'ETIMEDOUT');
  assert.equal(e.cause, cause);
  assert.equal(new BrokerClientError('ClientClosed', '/s', 'm').errno, undefined);
});

test('a service error keeps the qualified name and shows its parameters', () => {
  const e = new VarlinkServiceError('org.varlink.service.InvalidParameter', { parameter: 'memoryBytes', reason: 'too small', skip: undefined });
  assert.equal(e.errorName, 'InvalidParameter');
  assert.equal(e.message, 'org.varlink.service.InvalidParameter: parameter=memoryBytes, reason=too small');
  assert.equal(new VarlinkServiceError('org.varlink.service.PermissionDenied', {}).message, 'org.varlink.service.PermissionDenied');
});
