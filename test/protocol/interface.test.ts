// The served IDL says exactly what the zod registries enforce, both directions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import {
  BROKER_INTERFACE, SERVICE_INTERFACE, brokerErrorParameters, serviceErrorParameters,
} from '../../protocol/errors.ts';
import { Lease, brokerMethods, serviceMethods } from '../../protocol/methods.ts';
import {
  BROKER_INTERFACE_DESCRIPTION, SERVICE_INFO, SERVICE_INTERFACE_DESCRIPTION, interfaceDescription,
} from '../../protocol/interface.ts';
import { asObject, idlFields, idlMembers, member } from './zod-idl.ts';

const named = new Map<z.ZodType, string>([[Lease, 'Lease']]);

function rendered(
  interfaceName: string,
  types: Record<string, z.ZodType>,
  methods: Record<string, { parameters: z.ZodType; reply: z.ZodType }>,
  errors: Record<string, z.ZodType>,
): string[] {
  const out = [member(`interface ${interfaceName}`)];
  for (const [name, schema] of Object.entries(types)) {
    out.push(member(`type ${name} (${idlFields(asObject(schema, name), new Map())})`));
  }
  for (const [name, spec] of Object.entries(methods)) {
    const parameters = idlFields(asObject(spec.parameters, `${name} parameters`), named);
    const reply = idlFields(asObject(spec.reply, `${name} reply`), named);
    out.push(member(`method ${name}(${parameters}) -> (${reply})`));
  }
  for (const [name, schema] of Object.entries(errors)) {
    out.push(member(`error ${name} (${idlFields(asObject(schema, name), named)})`));
  }
  return out.sort();
}

test('io.iommufd.Broker IDL has exactly the registry methods, errors, types and fields', () => {
  const fromIdl = idlMembers(BROKER_INTERFACE_DESCRIPTION).sort();
  const fromZod = rendered(BROKER_INTERFACE, { Lease }, brokerMethods, brokerErrorParameters);
  assert.deepEqual(fromIdl, fromZod);
});

test('org.varlink.service IDL has exactly the registry methods and errors', () => {
  const fromIdl = idlMembers(SERVICE_INTERFACE_DESCRIPTION).sort();
  const fromZod = rendered(SERVICE_INTERFACE, {}, serviceMethods, serviceErrorParameters);
  assert.deepEqual(fromIdl, fromZod);
});

test('the comparison notices a field missing from the IDL', () => {
  const broken = BROKER_INTERFACE_DESCRIPTION.replace('  previousLimitBytes: int\n', '');
  assert.notEqual(broken, BROKER_INTERFACE_DESCRIPTION);
  assert.notDeepEqual(idlMembers(broken).sort(), rendered(BROKER_INTERFACE, { Lease }, brokerMethods, brokerErrorParameters));
});

test('every IDL element has a doc comment', () => {
  for (const text of [BROKER_INTERFACE_DESCRIPTION, SERVICE_INTERFACE_DESCRIPTION]) {
    const lines = text.split('\n');
    lines.forEach((line, i) => {
      if (/^(interface|type|method|error) /.test(line)) {
        assert.match(lines[i - 1] ?? '', /^# /, `no comment above: ${line}`);
      }
    });
  }
});

test('interfaceDescription serves both interfaces and nothing else', () => {
  assert.equal(interfaceDescription(BROKER_INTERFACE), BROKER_INTERFACE_DESCRIPTION);
  assert.equal(interfaceDescription(SERVICE_INTERFACE), SERVICE_INTERFACE_DESCRIPTION);
  assert.equal(interfaceDescription('io.iommufd'), undefined);
  assert.equal(interfaceDescription('toString'), undefined);
  assert.equal(interfaceDescription('__proto__'), undefined);
});

test('GetInfo answer matches its reply schema, lists both interfaces, and carries the package version', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  assert.equal(SERVICE_INFO.version, pkg.version);
  assert.deepEqual([...SERVICE_INFO.interfaces].sort(), [BROKER_INTERFACE, SERVICE_INTERFACE].sort());
  assert.equal(serviceMethods.GetInfo.reply.safeParse({ ...SERVICE_INFO }).success, true);
  for (const name of SERVICE_INFO.interfaces) assert.notEqual(interfaceDescription(name), undefined);
  assert.ok(Object.isFrozen(SERVICE_INFO));
});
