// Test support: the project's own TypeScript sources, for tests that check a fact is written
// in one place (a path, a class, a unit table) or that an import rule holds.
//
// Invariants:
// - Reads files only (synchronously, under the repository root); owns no fd beyond readFileSync's.
// - Paths come back relative to the repository root, sorted, so assertion diffs are stable.
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The source folders (not tests): everything the daemon, the client and their tools are built from. */
export const SOURCE_DIRS: readonly string[] = ['daemon', 'cli', 'client', 'protocol', 'native', 'shared', 'bench', 'scripts'];

/** Every .ts file under `dirs`, with its text. */
export function sourceFiles(dirs: readonly string[] = SOURCE_DIRS): Array<{ path: string; text: string }> {
  const files: Array<{ path: string; text: string }> = [];
  for (const dir of dirs) {
    for (const entry of readdirSync(`${ROOT}${dir}`, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
      const full = `${entry.parentPath}/${entry.name}`;
      files.push({ path: full.slice(ROOT.length), text: readFileSync(full, 'utf8') });
    }
  }
  return files.sort((a, b) => a.path.localeCompare(b.path));
}

/** The files under `dirs` whose text matches `pattern`. */
export function filesMatching(pattern: RegExp, dirs?: readonly string[]): string[] {
  return sourceFiles(dirs).filter((f) => pattern.test(f.text)).map((f) => f.path);
}
