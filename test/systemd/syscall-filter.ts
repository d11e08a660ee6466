// Test support: what a unit's SystemCallFilter= lines allow, resolved the way systemd does it,
// with the group contents taken from `systemd-analyze syscall-filter` (so from the systemd
// version that will enforce them, not from a list copied here).
import { spawnSync } from 'node:child_process';

/** @group -> its direct members (system call names and nested @groups). */
export function syscallGroups(): Map<string, string[]> {
  const r = spawnSync('systemd-analyze', ['syscall-filter'], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0) throw new Error(`systemd-analyze syscall-filter failed: ${r.error?.message ?? r.stderr}`);
  const groups = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('@')) {
      current = [];
      groups.set(line.trim(), current);
    } else if (current !== undefined && /^\s+(@[a-z0-9-]+|[a-z0-9_]+)$/.test(line)) {
      current.push(line.trim());
    }
  }
  return groups;
}

/** Every system call name an entry ("@group" or a name) stands for, nested groups expanded. */
export function expand(groups: Map<string, string[]>, entry: string, seen = new Set<string>()): string[] {
  if (!entry.startsWith('@')) return [entry];
  if (seen.has(entry)) return [];
  seen.add(entry);
  const members = groups.get(entry);
  if (members === undefined) throw new Error(`unknown system call group ${entry}`);
  return members.flatMap((m) => expand(groups, m, seen));
}

/**
 * The allow-list that SystemCallFilter= lines make, applied in order as systemd does: the first
 * line must be an allow-list (no "~"); later plain lines add, "~" lines remove.
 */
export function allowedSyscalls(filterLines: readonly string[], groups: Map<string, string[]>): Set<string> {
  const allowed = new Set<string>();
  filterLines.forEach((line, i) => {
    const deny = line.startsWith('~');
    if (i === 0 && deny) throw new Error('the first SystemCallFilter= is a deny-list; this helper resolves allow-lists');
    for (const entry of line.replace(/^~/, '').split(/\s+/).filter((e) => e !== '')) {
      for (const name of expand(groups, entry)) {
        if (deny) allowed.delete(name);
        else allowed.add(name);
      }
    }
  });
  return allowed;
}
