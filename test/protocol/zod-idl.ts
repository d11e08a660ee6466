// Test helper: renders the zod registries as Varlink IDL members and reads the members of an
// IDL text, both as token strings, so that a test can compare them as sets.
//
// Invariants:
// - Both sides go through the same tokenizer, so only meaning is compared, never layout
//   or comments.
// - A zod construct with no IDL form throws: a schema the IDL cannot express must not pass.
import { z } from 'zod';

const TOKEN = /->|[(),:]|[A-Za-z0-9_.?[\]-]+/g;

/** Tokens of an IDL text with `#` comments removed, joined by single spaces. */
export function tokens(text: string): string[] {
  const withoutComments = text.split('\n').map((line) => line.replace(/#.*$/, '')).join('\n');
  const found = withoutComments.match(TOKEN) ?? [];
  const rest = withoutComments.replace(TOKEN, '').trim();
  if (rest !== '') throw new Error(`IDL has characters outside the token grammar: ${JSON.stringify(rest.slice(0, 40))}`);
  return found;
}

const KEYWORDS = new Set(['interface', 'type', 'method', 'error']);

/** The members of an IDL text ("interface x", "method A ( ... ) -> ( ... )", ...), one string each. */
export function idlMembers(text: string): string[] {
  const members: string[][] = [];
  let depth = 0;
  for (const token of tokens(text)) {
    if (depth === 0 && KEYWORDS.has(token)) members.push([]);
    const current = members[members.length - 1];
    if (current === undefined) throw new Error(`IDL starts with ${token}, not a keyword`);
    current.push(token);
    if (token === '(') depth++;
    if (token === ')') depth--;
    if (depth < 0) throw new Error('IDL has an unbalanced )');
  }
  if (depth !== 0) throw new Error('IDL has an unclosed (');
  return members.map((m) => m.join(' '));
}

/** The IDL type of a zod schema; `named` maps schemas that the IDL declares as types. */
export function idlType(schema: z.ZodType, named: ReadonlyMap<z.ZodType, string>): string {
  const name = named.get(schema);
  if (name !== undefined) return name;
  if (schema instanceof z.ZodOptional || schema instanceof z.ZodNullable) {
    const inner = idlType(schema.unwrap() as z.ZodType, named);
    return inner.startsWith('?') ? inner : `?${inner}`;
  }
  if (schema instanceof z.ZodString) return 'string';
  if (schema instanceof z.ZodNumber) return schema.isInt ? 'int' : 'float';
  if (schema instanceof z.ZodBoolean) return 'bool';
  if (schema instanceof z.ZodEnum) return `(${schema.options.join(', ')})`;
  if (schema instanceof z.ZodArray) return `[]${idlType(schema.element as z.ZodType, named)}`;
  if (schema instanceof z.ZodObject) return `(${idlFields(schema, named)})`;
  throw new Error(`no IDL form for a zod ${schema.def.type}`);
}

/** "a: string, b: ?int" for an object schema. */
export function idlFields(schema: z.ZodObject, named: ReadonlyMap<z.ZodType, string>): string {
  return Object.entries(schema.shape).map(([key, value]) => `${key}: ${idlType(value as z.ZodType, named)}`).join(', ');
}

/** An IDL member rendered from zod, tokenized like idlMembers' output. */
export function member(text: string): string {
  return tokens(text).join(' ');
}

/** The object schema, or a failure naming what it was. */
export function asObject(schema: z.ZodType, what: string): z.ZodObject {
  if (!(schema instanceof z.ZodObject)) throw new Error(`${what} is a zod ${schema.def.type}, not an object`);
  return schema;
}
