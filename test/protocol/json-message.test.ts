import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { firstProblem, parseJsonBytes } from '../../protocol/json-message.ts';

test('parseJsonBytes: strict UTF-8, then JSON', () => {
  assert.deepEqual(parseJsonBytes(Buffer.from('{"a":"é"}')), { ok: true, value: { a: 'é' } });
  assert.deepEqual(parseJsonBytes(Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22])), { ok: false, reason: 'the message is not valid UTF-8' });
  assert.deepEqual(parseJsonBytes(Buffer.from([0x22, 0xc0, 0xaf, 0x22])), { ok: false, reason: 'the message is not valid UTF-8' });
  const bom = parseJsonBytes(Buffer.from('\ufeff{}'));
  assert.equal(bom.ok, false);
  const bad = parseJsonBytes(Buffer.from(`{"a": ${'x'.repeat(5000)}`));
  assert.equal(bad.ok, false);
  if (!bad.ok) assert.ok(bad.reason.length < 300, 'the reason is bounded');
});

test('firstProblem: path, missing versus wrong, unknown fields with the accepted list', () => {
  const schema = z.object({ a: z.number(), b: z.object({ c: z.array(z.string()) }).strict() }).strict();
  const check = (input: unknown): ReturnType<typeof firstProblem> => {
    const r = schema.safeParse(input);
    assert.equal(r.success, false);
    return r.success ? { path: '-', reason: '-' } : firstProblem(r.error, input, ['a', 'b']);
  };
  assert.deepEqual(check({ b: { c: [] } }), { path: 'a', reason: 'required field is missing (expected number)' });
  assert.match(check({ a: 'x', b: { c: [] } }).reason, /expected number, received string/);
  assert.deepEqual(check({ a: 1, b: { c: ['ok', 5] } }).path, 'b.c[1]');
  assert.deepEqual(check({ a: 1, b: { c: [] }, zz: 1 }), { path: 'zz', reason: 'unknown field (accepted: a, b)' });
  assert.equal(check({ a: 1, b: { c: [], d: 1 } }).path, 'b.d');
  assert.equal(check({ a: 1, [`k${'y'.repeat(1000)}`]: 1, b: { c: [] } }).path.length <= 203, true);
});
