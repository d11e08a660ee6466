// Test support: reads systemd unit files (and the two one-line-per-entry formats beside them)
// just well enough to compare what they say with each other and with the daemon.
// Sections map to key -> every value given (in order); "\" continuation lines are joined.
import { readFileSync } from 'node:fs';

export type Unit = Map<string, Map<string, string[]>>;

export function readUnit(path: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  let pending = '';
  for (const raw of readFileSync(path, 'utf8').split('\n')) {
    const line = pending + raw.trim();
    pending = '';
    if (line.endsWith('\\')) {
      pending = `${line.slice(0, -1)} `;
      continue;
    }
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header?.[1] !== undefined) {
      section = new Map();
      unit.set(header[1], section);
      continue;
    }
    const eq = line.indexOf('=');
    if (section === undefined || eq < 0) throw new Error(`${path}: cannot read line ${JSON.stringify(raw)}`);
    const key = line.slice(0, eq).trim();
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1).trim().replace(/\s+/g, ' ')]);
  }
  return unit;
}

/** The single value of section.key; throws if absent or given more than once. */
export function one(unit: Unit, section: string, key: string): string {
  const values = unit.get(section)?.get(key) ?? [];
  if (values.length !== 1 || values[0] === undefined) throw new Error(`[${section}] ${key}= has ${values.length} values, expected 1`);
  return values[0];
}

/** Every value of section.key, split on whitespace (for list-valued settings). */
export function all(unit: Unit, section: string, key: string): string[] {
  return (unit.get(section)?.get(key) ?? []).flatMap((v) => v.split(' ')).filter((v) => v !== '');
}

/** Lines of a sysusers.d / tmpfiles.d file, comments dropped, split into fields (quotes kept together). */
export function readTable(path: string): string[][] {
  return readFileSync(path, 'utf8').split('\n')
    .filter((l) => l.trim() !== '' && !l.trim().startsWith('#'))
    .map((l) => (l.match(/"[^"]*"|\S+/g) ?? []).map((f) => f.replace(/^"(.*)"$/, '$1')));
}
