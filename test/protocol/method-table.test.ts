import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { brokerErrorNames, serviceErrorNames } from '../../protocol/errors.ts';
import { brokerMethods, serviceMethods } from '../../protocol/methods.ts';
import {
  callFdParameter, interfaceNames, lookupError, lookupMethod, qualifiedMethodNames, replyFdParameter,
} from '../../protocol/method-table.ts';

test('every registry method is found under its qualified name, and nothing else is', () => {
  assert.deepEqual([...qualifiedMethodNames].sort(), [
    ...Object.keys(brokerMethods).map((m) => `io.iommufd.Broker.${m}`),
    ...Object.keys(serviceMethods).map((m) => `org.varlink.service.${m}`),
  ].sort());
  for (const name of qualifiedMethodNames) {
    const found = lookupMethod(name);
    assert.equal(found.found, true, name);
  }
  assert.deepEqual(lookupMethod('io.iommufd.Broker.Nope'), { found: false, missing: 'method', interface: 'io.iommufd.Broker', method: 'Nope' });
  assert.deepEqual(lookupMethod('io.iommufd.Open'), { found: false, missing: 'interface', interface: 'io.iommufd' });
  for (const name of ['io.iommufd.Broker.toString', 'io.iommufd.Broker.hasOwnProperty', 'constructor.name', '__proto__.Open']) {
    assert.equal(lookupMethod(name).found, false, name);
  }
  assert.deepEqual([...interfaceNames].sort(), ['io.iommufd.Broker', 'org.varlink.service']);
});

test('every registry error is found, qualified by its own interface only', () => {
  for (const name of brokerErrorNames) {
    const found = lookupError(`io.iommufd.Broker.${name}`);
    assert.deepEqual(found.found && [found.kind, found.name], ['broker', name]);
    if (!serviceErrorNames.includes(name as never)) assert.equal(lookupError(`org.varlink.service.${name}`).found, false);
  }
  for (const name of serviceErrorNames) {
    const found = lookupError(`org.varlink.service.${name}`);
    assert.deepEqual(found.found && [found.kind, found.name], ['service', name]);
  }
  for (const name of ['io.iommufd.Broker.toString', 'NoSuchLease', '.NoSuchLease', 'io.iommufd.Broker', '']) {
    assert.equal(lookupError(name).found, false, name);
  }
});

test('a method takes fds iff it names an fd parameter, which is an optional int index in its schema', () => {
  for (const name of qualifiedMethodNames) {
    const found = lookupMethod(name);
    assert.ok(found.found);
    const parameter = callFdParameter[name];
    assert.equal(found.spec.maxFds > 0, parameter !== undefined, name);
    if (parameter === undefined) continue;
    const schema = found.spec.parameters;
    assert.ok(schema instanceof z.ZodObject);
    const field: unknown = schema.shape[parameter];
    assert.ok(field instanceof z.ZodOptional, `${name}.${parameter} is optional`);
    assert.equal((field as z.ZodOptional<z.ZodNumber>).unwrap().isInt, true);
  }
  for (const [name, parameter] of Object.entries(replyFdParameter)) {
    const found = lookupMethod(name);
    assert.ok(found.found && found.spec.reply instanceof z.ZodObject);
    assert.ok(Object.hasOwn(found.spec.reply.shape, parameter), `${name} reply has ${parameter}`);
  }
});

test('method names are qualified in one place: methods.ts exports schemas and limits, no name helpers', async () => {
  // qualifiedBrokerMethod/qualifiedServiceMethod duplicated method-table.ts and nothing called them (issue #9).
  const methods = await import('../../protocol/methods.ts');
  assert.deepEqual(Object.keys(methods).sort(), [
    'CREATED_AT_PATTERN', 'DEFAULT_LIST_LIMIT', 'LEASE_ID_PATTERN', 'LIST_CURSOR_PATTERN', 'Lease', 'MAX_BYTES',
    'MAX_LIST_LIMIT', 'MAX_NOT_RESIZABLE_LISTED', 'MAX_REQUEST_ID_LENGTH', 'NAME_PATTERN', 'Status', 'accountingModes', 'backendKinds', 'brokerMethods',
    'deviceKinds', 'serviceMethods',
  ].sort());
});
