// docs/PROTOCOL.md documents exactly the registries: every method, error and field, both
// directions; its limits are the code's; its JSON examples pass the real decoders.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { brokerErrorParameters, permissionDeniedRules, serviceErrorParameters } from '../../protocol/errors.ts';
import { Lease, brokerMethods, serviceMethods } from '../../protocol/methods.ts';
import { MAX_FDS_PER_FRAME, MAX_FRAME_BYTES, MAX_REPLY_FRAME_BYTES } from '../../protocol/framing.ts';
import { decodeCall } from '../../protocol/decode.ts';
import { decodeReply } from '../../protocol/reply.ts';
import { qualifiedMethodNames, type QualifiedMethod } from '../../protocol/method-table.ts';
import { formatSize } from '../../shared/sizes.ts';
import {
  DEFAULT_FRAME_TIMEOUT_SECONDS, DEFAULT_IDLE_TIMEOUT_SECONDS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID,
  DEFAULT_MAX_PENDING_CLOSES, DEFAULT_MAX_PENDING_CLOSES_PER_UID, DEFAULT_RESERVED_CONNECTIONS,
} from '../../daemon/flags.ts';

const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');

interface Entry { parameters: string[]; reply: string[]; rows: string[] }

/** `### name` subsections of a `## section`, with the field names of their tables. */
function entries(section: string): Map<string, Entry> {
  const out = new Map<string, Entry>();
  let inSection = false;
  let current: Entry | undefined;
  let marker: 'parameters' | 'reply' | undefined;
  for (const line of doc.split('\n')) {
    if (line.startsWith('## ')) { inSection = line === `## ${section}`; current = undefined; continue; }
    if (!inSection) continue;
    if (line.startsWith('### ')) {
      current = { parameters: [], reply: [], rows: [] };
      marker = undefined;
      out.set(line.slice(4).trim(), current);
      continue;
    }
    if (current === undefined) continue;
    if (line.startsWith('Parameters')) marker = 'parameters';
    if (line.startsWith('Reply')) marker = 'reply';
    const row = /^\| `([^`]+)` \|/.exec(line);
    if (row?.[1] !== undefined) {
      current.rows.push(row[1]);
      if (marker !== undefined) current[marker].push(row[1]);
    }
  }
  return out;
}

function keys(schema: z.ZodType): string[] {
  assert.ok(schema instanceof z.ZodObject);
  return Object.keys(schema.shape).sort();
}

/** Top-level rows must be exactly the schema's fields; dotted rows must name nested fields. */
function assertFields(what: string, rows: string[], schema: z.ZodType): void {
  assert.deepEqual(rows.filter((r) => !r.includes('.')).sort(), keys(schema), what);
  for (const row of rows.filter((r) => r.includes('.'))) {
    let node: z.ZodType = schema;
    for (const part of row.split('.')) {
      if (node instanceof z.ZodOptional) node = node.unwrap() as z.ZodType; // an optional object (e.g. Status.journal)
      assert.ok(node instanceof z.ZodObject, `${what}: ${row} is not nested in an object`);
      const next: unknown = node.shape[part];
      assert.ok(next instanceof z.ZodType, `${what}: ${row} does not exist`);
      node = next;
    }
  }
}

const allErrors: [string, z.ZodType][] = [
  ...Object.entries(brokerErrorParameters).map(([n, s]): [string, z.ZodType] => [`io.iommufd.Broker.${n}`, s]),
  ...Object.entries(serviceErrorParameters).map(([n, s]): [string, z.ZodType] => [`org.varlink.service.${n}`, s]),
];

test('every method is documented, and every documented method exists', () => {
  assert.deepEqual([...entries('Methods').keys()].sort(), [...qualifiedMethodNames].sort());
});

test('every documented method lists exactly its parameters and reply fields', () => {
  const specs: Record<string, { parameters: z.ZodType; reply: z.ZodType }> = {
    ...Object.fromEntries(Object.entries(brokerMethods).map(([m, s]) => [`io.iommufd.Broker.${m}`, s])),
    ...Object.fromEntries(Object.entries(serviceMethods).map(([m, s]) => [`org.varlink.service.${m}`, s])),
  };
  for (const [name, entry] of entries('Methods')) {
    const spec = specs[name];
    assert.ok(spec !== undefined, name);
    assertFields(`${name} parameters`, entry.parameters, spec.parameters);
    assertFields(`${name} reply`, entry.reply, spec.reply);
  }
});

test('every error is documented with exactly its parameters, and every documented error exists', () => {
  const documented = entries('Errors');
  assert.deepEqual([...documented.keys()].sort(), allErrors.map(([n]) => n).sort());
  for (const [name, schema] of allErrors) assertFields(name, documented.get(name)?.rows ?? [], schema);
});

test('PermissionDenied lists exactly the registry\'s rules, and the daemon names no other', () => {
  const row = doc.split('\n').find((l) => l.startsWith('| `rule` | string | `open-users`'));
  assert.ok(row !== undefined, 'the PermissionDenied rule row is missing');
  const documented = [...row.split('|')[3]?.matchAll(/`([a-z-]+)`/g) ?? []].map((m) => m[1]);
  assert.deepEqual(documented.sort(), [...permissionDeniedRules].sort());
  const core = ['lease-decisions.ts', 'open-decision.ts', 'device-decision.ts']
    .map((f) => readFileSync(new URL(`../../daemon/core/${f}`, import.meta.url), 'utf8')).join('\n');
  const named = [...core.matchAll(/rule: '([a-z-]+)'/g)].map((m) => m[1]);
  assert.deepEqual([...new Set(named)].sort(), [...permissionDeniedRules].sort());
});

test('the Lease type is documented with exactly its fields', () => {
  const types = entries('Types');
  assert.deepEqual([...types.keys()], ['Lease']);
  assertFields('Lease', types.get('Lease')?.rows ?? [], Lease);
});

test('the documented limits are the code\'s', () => {
  const row = (label: string): string => doc.split('\n').find((l) => l.startsWith(`| ${label} |`)) ?? '';
  assert.match(row('Request size'), new RegExp(`\\b${MAX_FRAME_BYTES} bytes \\(${formatSize(MAX_FRAME_BYTES)}\\)`));
  assert.match(row('fds per request message'), new RegExp(`\\| ${MAX_FDS_PER_FRAME} `));
  assert.match(row('Reply size'), new RegExp(formatSize(MAX_REPLY_FRAME_BYTES)));
  assert.match(row('Time to send one request'), new RegExp(`\\| ${DEFAULT_FRAME_TIMEOUT_SECONDS} s from its first byte`));
  const transport = doc.slice(doc.indexOf('## Transport'), doc.indexOf('## Framing'));
  assert.match(transport, new RegExp(`at most ${DEFAULT_MAX_CONNECTIONS} connections, ${DEFAULT_MAX_CONNECTIONS_PER_UID} per uid, and keeps the last ${DEFAULT_RESERVED_CONNECTIONS}`));
  assert.match(transport, new RegExp(`at most ${DEFAULT_MAX_CONNECTIONS - DEFAULT_RESERVED_CONNECTIONS},`));
  assert.match(transport, new RegExp(`silent for\\s+${DEFAULT_IDLE_TIMEOUT_SECONDS} s`));
  assert.match(transport, new RegExp(`While ${DEFAULT_MAX_PENDING_CLOSES_PER_UID} of one uid's\\s+fds`));
  assert.match(transport, new RegExp(`or ${DEFAULT_MAX_PENDING_CLOSES} of all uids'`));
  const withFds = Object.entries(brokerMethods).filter(([, s]) => s.maxFds > 0);
  assert.ok(Object.values(serviceMethods).every((s) => s.maxFds === 0));
  for (const [method, spec] of withFds) assert.match(doc, new RegExp(`\`${method}\`: ${spec.maxFds}, all others: 0`));
});

test('every JSON example is a valid call, a reply to the call before it, or the exact rejection of that call', () => {
  const section = doc.slice(doc.indexOf('\n## Examples'));
  const blocks = [...section.matchAll(/```json\n([\s\S]*?)\n```/g)].map((m) => m[1] ?? '');
  assert.ok(blocks.length >= 6, `found ${blocks.length} examples`);
  let lastCall: QualifiedMethod | undefined;
  let expectedRejection: unknown;
  let replies = 0;
  for (const block of blocks) {
    const value = JSON.parse(block) as Record<string, unknown>;
    if (expectedRejection !== undefined) {
      assert.deepEqual(value, expectedRejection, 'the example after a rejected call shows what the broker answers');
      expectedRejection = undefined;
      replies++;
      continue;
    }
    if ('method' in value) {
      const parameters = value.parameters as Record<string, unknown> | undefined;
      const fds = parameters !== undefined && 'targetPidFileDescriptor' in parameters ? [900] : [];
      const call = decodeCall({ bytes: Buffer.from(block), fds });
      if (call.kind === 'rejection') {
        assert.equal(call.fatal, false, block);
        expectedRejection = { error: call.error.name, parameters: call.error.parameters };
      } else {
        lastCall = call.method;
      }
      continue;
    }
    assert.ok(lastCall !== undefined, `a reply before any call: ${block}`);
    const fds = lastCall === 'io.iommufd.Broker.Open' && !('error' in value) ? [901] : [];
    const reply = decodeReply({ bytes: Buffer.from(block), fds }, lastCall);
    assert.notEqual(reply.kind, 'invalid', `${block}\n-> ${JSON.stringify(reply)}`);
    replies++;
  }
  assert.equal(expectedRejection, undefined, 'a rejected example call has no answer shown');
  assert.ok(replies >= 3);
});
