// Turning one frame's bytes into a JSON value, and a zod failure into "which field, and why".
// Shared by call decoding (daemon) and reply decoding (client). Pure.
//
// Invariants:
// - Bytes must be strict UTF-8 (no replacement characters, a BOM is kept and then fails JSON).
// - Nothing here throws: every failure comes back as a value with a human reason.
// - A reason never echoes more than a short excerpt of what the peer sent.
import type { z } from 'zod';

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export type JsonParse = { ok: true; value: unknown } | { ok: false; reason: string };

/** Strict UTF-8, then JSON.parse. */
export function parseJsonBytes(bytes: Uint8Array): JsonParse {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    return { ok: false, reason: 'the message is not valid UTF-8' };
  }
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (error) {
    const detail = error instanceof Error ? `: ${excerpt(error.message)}` : '';
    return { ok: false, reason: `the message is not valid JSON${detail}` };
  }
}

/** One bad field: its dotted path ("" for the object itself) and why it was refused. */
export interface FieldProblem {
  path: string;
  reason: string;
}

/**
 * The first problem zod found, as a field path and a reason. `input` is what was parsed (to tell
 * a missing field from a wrong one); `known` lists the accepted field names for unknown-field errors.
 */
export function firstProblem(error: z.ZodError, input: unknown, known: readonly string[]): FieldProblem {
  const issue = error.issues[0];
  if (issue === undefined) return { path: '', reason: 'rejected' };
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    const accepted = known.length === 0 ? 'none are accepted' : `accepted: ${known.join(', ')}`;
    return { path: excerpt(joinPath([...path, key])), reason: `unknown field (${accepted})` };
  }
  if (issue.code === 'invalid_type' && valueAt(input, path) === undefined) {
    return { path: joinPath(path), reason: `required field is missing (expected ${issue.expected})` };
  }
  return { path: joinPath(path), reason: excerpt(issue.message) };
}

/** "device.kind", "leases[0].id". */
function joinPath(path: readonly string[]): string {
  let out = '';
  for (const part of path) {
    if (/^\d+$/.test(part)) out += `[${part}]`;
    else out += out === '' ? part : `.${part}`;
  }
  return out;
}

function valueAt(input: unknown, path: readonly string[]): unknown {
  let current = input;
  for (const key of path) {
    if (typeof current !== 'object' || current === null || !Object.hasOwn(current, key)) return undefined;
    current = (current as Record<string, unknown>)[key];
  }
  return current;
}

const MAX_REASON = 200;

function excerpt(text: string): string {
  return text.length <= MAX_REASON ? text : `${text.slice(0, MAX_REASON)}...`;
}
