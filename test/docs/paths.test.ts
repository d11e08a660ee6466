// README.md's "## Layout" table and the project paths that the docs and the code's comments
// name: every path named exists, every file the table names is where it says, and every
// top-level folder (and each test world) has a row. A rename that leaves a stale mention
// behind fails here, not in a newcomer's search.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Build output and caches (.gitignore), which no checkout holds before a build. */
const GENERATED = readFileSync(`${ROOT}.gitignore`, 'utf8').split('\n')
  .filter((l) => l.endsWith('/')).map((l) => l.replace(/^\//, ''));
const SKIPPED_DIRS = new Set(['.git', ...GENERATED.map((g) => g.replace(/\/$/, ''))]);

function exists(path: string): boolean {
  try {
    statSync(`${ROOT}${path}`);
    return true;
  } catch {
    return false;
  }
}

/** Every file of the project (relative paths), build output and caches left out. */
function projectFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(`${ROOT}${dir}`, { withFileTypes: true })) {
      const path = `${dir}${e.name}`;
      if (e.isDirectory()) {
        if (!SKIPPED_DIRS.has(path)) walk(`${path}/`);
      } else if (e.isFile()) {
        out.push(path);
      }
    }
  };
  walk('');
  return out.sort();
}

const FILES = projectFiles();
const BASENAMES = new Set(FILES.map((f) => f.slice(f.lastIndexOf('/') + 1)));
const TOP_DIRS = [...new Set(FILES.filter((f) => f.includes('/')).map((f) => f.slice(0, f.indexOf('/'))))].sort();

/** The rows of README's Layout table: the first column's backticked paths, and the whole row. */
function layoutRows(): Array<{ paths: string[]; text: string }> {
  const readme = readFileSync(`${ROOT}README.md`, 'utf8');
  const section = /^## Layout\n([\s\S]*?)(?=^## )/m.exec(readme)?.[1];
  assert.ok(section !== undefined, 'README.md has a "## Layout" section');
  return section.split('\n').filter((l) => l.startsWith('| `')).map((text) => {
    const first = text.split('|')[1] ?? '';
    return { paths: [...first.matchAll(/`([^`]+)`/g)].map((m) => m[1] ?? ''), text };
  });
}

test('README Layout: every path in the first column exists', () => {
  const rows = layoutRows();
  assert.ok(rows.length > 0);
  const missing = rows.flatMap((r) => r.paths).filter((p) => !exists(p));
  assert.deepEqual(missing, []);
});

test('README Layout: every file a row names (`name.ts`) is under that row\'s folder', () => {
  const wrong: string[] = [];
  for (const row of layoutRows()) {
    const dirs = row.paths.filter((p) => p.endsWith('/'));
    const base = dirs.length > 0 ? dirs : row.paths.map((p) => p.slice(0, p.lastIndexOf('/') + 1));
    const second = row.text.split('|').slice(2).join('|');
    for (const m of second.matchAll(/`([\w.-]+\.(?:ts|c|cjs|mjs|md))`/g)) {
      const name = m[1] ?? '';
      if (!base.some((dir) => FILES.some((f) => f.startsWith(dir) && f.endsWith(`/${name}`)))) wrong.push(`${row.paths.join(', ')}: ${name}`);
    }
  }
  assert.deepEqual(wrong, []);
});

test('README Layout: every top-level folder and each test world has a row', () => {
  const rows = layoutRows();
  const covered = (dir: string): boolean => rows.some((r) => r.paths.some((p) => p === dir || p.startsWith(dir)));
  const uncovered = [
    ...TOP_DIRS.map((d) => `${d}/`),
    ...['test/lab/', 'test/hostlab/', 'test/hostile/', 'test/support/'],
  ].filter((d) => !covered(d));
  assert.deepEqual(uncovered, []);
});

/** Project paths as docs and comments write them: a top-level folder, then more path. */
const PATH_MENTION = new RegExp(
  `(?<![\\w/.@$~-])((?:${['\\.ci', 'bench', 'bin', 'cli', 'client', 'daemon', 'docs', 'examples', 'kernel', 'native', 'packaging',
    'protocol', 'scripts', 'shared', 'systemd', 'test'].join('|')})/[\\w./-]*)`, 'g');
/**
 * Mentions that are not paths of this project: QEMU's and the kernel's trees, programs inside
 * the lab VMs and build roots, and the end of a regular expression (`/.../s`).
 */
const FOREIGN = new Set([
  'docs/specs/acpi_mem_hotplug.rst', 'scripts/kconfig/merge_config.sh',
  'bin/bash', 'bin/busybox', 'bin/lab-client',
  'protocol/s',
]);
/** Fake trees that tests build on purpose (test/bin: a newer source beside a bundle). */
const FAKES = /^client\/deeper(\/|$)/;

/** The files whose mentions must hold: docs, sources, scripts and their tests; not data. */
function textFiles(): string[] {
  return FILES.filter((f) => !/\.(patch|txt|json|node)$/.test(f) && !f.includes('/fixtures/') && f !== 'package-lock.json');
}

test('every project path that the docs and the code name exists', () => {
  const stale: string[] = [];
  for (const file of textFiles()) {
    const text = readFileSync(`${ROOT}${file}`, 'utf8');
    for (const m of text.matchAll(PATH_MENTION)) {
      const after = text[(m.index ?? 0) + (m[1] ?? '').length] ?? '';
      // A glob or a template ("0*.patch", "<time>.json", "{a,b}") names a family, not one path.
      if (after === '*' || after === '<' || after === '{') continue;
      const path = (m[1] ?? '').replace(/[.]+$/, '');
      if (FOREIGN.has(path) || FAKES.test(path) || GENERATED.some((g) => path.startsWith(g))) continue;
      // A README may name files beside it (test/lab/README.md names its own client/ folder).
      const beside = `${file.slice(0, file.lastIndexOf('/') + 1)}${path}`;
      if (!exists(path) && !(file.includes('/') && exists(beside))) stale.push(`${file}: ${path}`);
    }
  }
  assert.deepEqual(stale, []);
});

test('every bare module name (`name.ts`) in a source comment is a file of the project', () => {
  const stale: string[] = [];
  const sources = FILES.filter((f) => /\.(ts|cjs|c|h)$/.test(f) && !f.endsWith('.test.ts'));
  for (const file of sources) {
    readFileSync(`${ROOT}${file}`, 'utf8').split('\n').forEach((line, i) => {
      const comment = /(?:^\s*(?:\/\/|\/?\*)|\s\/\/ )(.*)$/.exec(line)?.[1];
      if (comment === undefined) return;
      for (const m of comment.matchAll(/(?<![\w/.-])([\w-]+\.(?:ts|cjs))\b/g)) {
        if (!BASENAMES.has(m[1] ?? '')) stale.push(`${file}:${i + 1}: ${m[1]}`);
      }
    });
  }
  assert.deepEqual(stale, []);
});
